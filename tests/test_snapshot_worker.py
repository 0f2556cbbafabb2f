"""Background snapshots in a child process (``snapshot_worker``): where they run, what the
child is told and how, and what a failure in the child looks like."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from helpers import ForwardingStore, integrity, remove_db, replicator, rows

import bottomless
from bottomless.backends.counting import CountingStore
from bottomless.backends.file import FilePageStore
from bottomless.backends.registry import backend_registry, open_store
from bottomless.engine import snapshot_worker
from bottomless.engine.child_process import SpawnError
from bottomless.engine.snapshot_worker import SnapshotJob, build_in_child, can_use_child
from bottomless.errors import SnapshotProcessError
from bottomless.ops import catalog
from bottomless.ops.snapshots import snapshot_seqs

MakeSettings = Callable[..., bottomless.Settings]


def _no_compaction_here(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("compact ran in the committing process")


def _commit(db: Any, count: int) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB)")
    for _ in range(count):
        db.execute("INSERT INTO t(v) VALUES(randomblob(2000))")


@pytest.mark.parametrize("backend_name", ["file", pytest.param("s3", marks=pytest.mark.s3)])
def test_background_snapshots_are_built_in_a_child_process(
    tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch,
    backend_name: str,
) -> None:
    # compaction in this process fails, so a snapshot that appears was built elsewhere
    monkeypatch.setattr(snapshot_worker, "compact", _no_compaction_here)
    settings = make_settings(backend_name, snapshot_interval_commits=10)
    path = str(tmp_path / "child.db")
    db = bottomless.connect(path, settings)
    _commit(db, 10)
    replicator(path).wait_snapshot(60)
    status = bottomless.status(db)
    store = replicator(path).store
    assert snapshot_seqs(store, "child.db", status["generation"])[-1] == 10
    assert status["last_error"] is None
    # the child's uploads count in this process's figures: every object of the generation
    objects = store.list_keys(f"child.db/generations/{status['generation']}/")
    assert any("/parts/" in key for key in objects)
    assert status["objects_written"] == len(objects)
    expected = db.execute("SELECT * FROM t ORDER BY id").fetchall()
    db.close()
    remove_db(path)
    result = bottomless.restore(path, settings, db_name="child.db")
    assert integrity(path) == "ok" and rows(path, "SELECT * FROM t ORDER BY id") == expected
    assert result.objects <= 3  # the child's snapshot (manifest, part) and the last commit


def test_the_thread_worker_builds_in_this_process(
    tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshot_worker, "compact", _no_compaction_here)
    settings = make_settings("file", snapshot_interval_commits=10, snapshot_worker="thread")
    path = str(tmp_path / "thread.db")
    db = bottomless.connect(path, settings)
    _commit(db, 10)
    replicator(path).wait_snapshot(60)
    assert "compact ran in the committing process" in bottomless.status(db)["last_error"]
    _commit(db, 1)  # a commit does not make a failed snapshot's error go away
    assert "compact ran in the committing process" in bottomless.status(db)["last_error"]
    db.close()


def test_only_stores_another_process_can_open_go_to_a_child(
    make_settings: MakeSettings, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    file_store = open_store(make_settings("file"))
    assert can_use_child(file_store)
    assert not can_use_child(open_store(make_settings("memory")))  # objects in this process
    assert can_use_child(CountingStore(file_store))  # the writer's own counting wrapper
    assert not can_use_child(ForwardingStore(file_store))  # a wrapper exists only here

    class LocalFiles(FilePageStore):
        backend = "localfiles"

    monkeypatch.setattr(snapshot_worker.sys, "executable", "/usr/sbin/uwsgi")
    assert not can_use_child(file_store)  # an embedded interpreter cannot start itself
    monkeypatch.undo()

    backend_registry.register("localfiles", LocalFiles)  # an object, not importable text
    try:
        assert not can_use_child(LocalFiles(str(tmp_path / "objects")))
    finally:
        backend_registry.unregister("localfiles")


class _SpiedSpawn:
    """Starts snapshot children as the worker does, remembering their arguments, environment,
    pid and input; ``script`` runs instead of the snapshot child."""

    seen: ClassVar[list[dict[str, Any]]] = []
    script: ClassVar[str | None] = None

    def __init__(self, real: Callable[..., Any], real_converse: Callable[..., Any]) -> None:
        self._real, self._real_converse = real, real_converse

    def spawn(self, argv: list[str]) -> Any:
        if self.script is not None:
            argv = [argv[0], "-c", self.script, *argv[-1:]]
        child = self._real(argv)
        self.seen.append({"args": argv, "env": dict(os.environ), "pid": child.pid,
                          "input": b""})
        return child

    def converse(self, child: Any, request: bytes) -> Any:
        self.seen[-1]["input"] += request
        return self._real_converse(child, request)


@pytest.fixture
def spied_spawn(monkeypatch: pytest.MonkeyPatch) -> type[_SpiedSpawn]:
    """Every child the snapshot worker starts, as _SpiedSpawn records it."""
    monkeypatch.setattr(_SpiedSpawn, "seen", [])
    monkeypatch.setattr(_SpiedSpawn, "script", None)
    spy = _SpiedSpawn(snapshot_worker._spawn, snapshot_worker._converse)
    monkeypatch.setattr(snapshot_worker, "_spawn", spy.spawn)
    monkeypatch.setattr(snapshot_worker, "_converse", spy.converse)
    return _SpiedSpawn


def test_settings_reach_the_child_through_a_pipe_only(
    make_settings: MakeSettings, spied_spawn: type[_SpiedSpawn]
) -> None:
    secret = "sk-never-in-argv-0123456789"
    settings = make_settings("file", secret_access_key=secret, access_key_id="AKIDEXAMPLE")
    job = SnapshotJob("absent.db", "no-such-generation", 5, "w", parallelism=1)
    with pytest.raises(SnapshotProcessError):
        build_in_child(job, settings, open_store(settings))
    [seen] = spied_spawn.seen
    assert secret.encode() in seen["input"]  # the child needs it
    assert not any(secret in arg for arg in seen["args"])
    assert not any(secret in value for value in seen["env"].values())


def test_a_failed_snapshot_in_the_child_says_why(make_settings: MakeSettings) -> None:
    settings = make_settings("file")
    job = SnapshotJob("absent.db", "no-such-generation", 5, "w", parallelism=1)
    with pytest.raises(SnapshotProcessError) as failure:
        build_in_child(job, settings, open_store(settings))
    # the child's own message, not a dead child's
    assert "no-such-generation has no snapshot at or before 5" in str(failure.value)
    assert failure.value.kind == "RestoreError" and failure.value.returncode is None


@pytest.mark.parametrize(
    ("script", "words", "status"),
    [("import sys; print('chatter'); sys.stderr.write('out of luck\\n'); sys.exit(3)",
      "status 3 without an answer: out of luck", 3),
     ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
      "status -9 without an answer: no message", -9)],
)
def test_a_child_that_dies_is_reported_with_its_last_words(
    make_settings: MakeSettings, spied_spawn: type[_SpiedSpawn], script: str, words: str,
    status: int,
) -> None:
    spied_spawn.script = script
    settings = make_settings("file")
    job = SnapshotJob("absent.db", "no-such-generation", 5, "w", parallelism=1)
    with pytest.raises(SnapshotProcessError,
                       match=f"the snapshot process exited with {words}") as failure:
        build_in_child(job, settings, open_store(settings))
    assert failure.value.returncode == status


def test_the_childs_requests_count_in_the_writers_figures(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    settings = make_settings("file", snapshot_interval_commits=10)
    path = str(tmp_path / "counted.db")
    db = bottomless.connect(path, settings)
    _commit(db, 5)
    requests_before = dict(replicator(path).counted_store.counts()[0])
    _commit(db, 5)
    replicator(path).wait_snapshot(60)
    requests = replicator(path).counted_store.counts()[0]
    # 5 commit PUTs here, plus the child's reads of the log and its snapshot uploads
    assert requests["put"] - requests_before["put"] >= 5 + 2
    assert requests.get("get", 0) + requests.get("get_range", 0) > requests_before.get("get", 0)
    db.close()


def test_a_snapshot_child_killed_mid_upload_loses_nothing(
    tmp_path: Any, make_settings: MakeSettings, spied_spawn: type[_SpiedSpawn]
) -> None:
    settings = make_settings("file", snapshot_interval_commits=0, snapshot_interval_mb=4,
                             snapshot_part_mb=1, parallelism=1)
    path = str(tmp_path / "killed.db")
    db = bottomless.connect(path, settings)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    store = replicator(path).store
    generation = bottomless.status(db)["generation"]
    parts = f"killed.db/generations/{generation}/parts/"
    with db:  # 6 MiB in one commit: the snapshot is due as it is recorded
        db.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1500)"
                   " INSERT INTO t(v) SELECT randomblob(4000) FROM n")
    deadline = time.monotonic() + 30
    while not store.list_keys(parts) and time.monotonic() < deadline:
        time.sleep(0.001)  # until the child has stored a part
    [child] = spied_spawn.seen
    os.kill(child["pid"], signal.SIGKILL)
    replicator(path).wait_snapshot(60)
    if bottomless.status(db)["last_error"] is None:  # it was faster than the kill
        pytest.skip("the snapshot child finished before it could be killed")
    assert "snapshot process exited with status -9" in bottomless.status(db)["last_error"]
    seq_killed = bottomless.status(db)["last_replicated_commit"]
    assert seq_killed not in snapshot_seqs(store, "killed.db", generation)
    # commits go on, and the next snapshot is whole
    with db:
        db.execute("UPDATE t SET v = randomblob(4000) WHERE id <= 1100")
    replicator(path).wait_snapshot(60)
    assert snapshot_seqs(store, "killed.db", generation)[-1] == seq_killed + 1
    expected = db.execute("SELECT * FROM t ORDER BY id").fetchall()
    db.close()
    report = catalog.verify(open_store(settings), "killed.db")
    assert report.integrity == "ok" and report.problems == [], report
    remove_db(path)
    bottomless.restore(path, settings, db_name="killed.db")
    assert rows(path, "SELECT * FROM t ORDER BY id") == expected


def test_a_backend_registered_as_text_at_run_time_reaches_the_child(
    tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mystores.py").write_text(
        "from bottomless.backends.file import FilePageStore\n\n\n"
        "class MyFiles(FilePageStore):\n    backend = 'myfiles'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # importable here, so in the child too
    monkeypatch.delitem(sys.modules, "mystores", raising=False)  # forgotten afterwards
    monkeypatch.setattr(snapshot_worker, "compact", _no_compaction_here)
    bottomless.register_backend("myfiles", "mystores:MyFiles")
    try:
        settings = bottomless.Settings(backend="myfiles", bucket=str(tmp_path / "objects"),
                                       snapshot_interval_commits=10)
        path = str(tmp_path / "mine.db")
        db = bottomless.connect(path, settings)
        _commit(db, 10)
        replicator(path).wait_snapshot(60)
        status = bottomless.status(db)
        assert status["last_error"] is None
        assert snapshot_seqs(replicator(path).store, "mine.db", status["generation"])[-1] == 10
        db.close()
    finally:
        backend_registry.unregister("myfiles")


def test_relative_paths_mean_what_they_meant_when_the_store_was_opened(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(home)
    monkeypatch.setattr(snapshot_worker, "compact", _no_compaction_here)  # in the child only
    settings = bottomless.Settings(backend="file", bucket="objects", snapshot_interval_commits=10)
    db = bottomless.connect(str(home / "rel.db"), settings)
    monkeypatch.chdir(elsewhere)  # the application moves on; its store stays where it was
    _commit(db, 10)
    replicator(str(home / "rel.db")).wait_snapshot(60)
    status = bottomless.status(db)
    db.close()
    assert status["last_error"] is None
    assert (home / "objects" / "rel.db" / "generations" / status["generation"] / "snapshots"
            / f"{10:016d}").exists()
    assert not (elsewhere / "objects").exists()


def test_the_childs_log_records_are_logged_by_the_writer(
    tmp_path: Any, make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bottomless")
    settings = make_settings("file", snapshot_interval_commits=10)
    path = str(tmp_path / "logged.db")
    db = bottomless.connect(path, settings)
    _commit(db, 10)
    replicator(path).wait_snapshot(60)
    db.close()
    [record] = [r for r in caplog.records if "at commit 10" in r.getMessage()
                and "parts uploaded" in r.getMessage()]
    assert record.name == "bottomless.ops.snapshots" and record.levelno == logging.INFO
    assert getattr(record, "db_name", None) == "logged.db"


PARENT = """
import sys, time
import bottomless

settings = bottomless.Settings(
    backend="file", bucket=sys.argv[2], snapshot_interval_commits=0, snapshot_interval_mb=4,
    snapshot_part_mb=1, parallelism=1, lease_ttl=0)
db = bottomless.connect(sys.argv[1], settings)
db.execute("CREATE TABLE t(v)")
with db:
    db.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 12000)"
               " INSERT INTO t(v) SELECT randomblob(4000) FROM n")  # 48 MiB: a long snapshot
print("committed", flush=True)
time.sleep(60)
"""


def _children(parent: int) -> list[int]:
    """Live snapshot children of process ``parent``, from /proc."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if (int(fields[1]) == parent and fields[0] != "Z"
                and b"bottomless.engine.snapshot_worker" in cmdline):
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the processes through /proc")
def test_a_snapshot_child_exits_when_its_writer_dies(tmp_path: Any) -> None:
    objects = tmp_path / "objects"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "orphan.db"), str(objects)],
        stdout=subprocess.PIPE,
    )
    try:
        assert parent.stdout is not None and parent.stdout.readline() == b"committed\n"
        deadline = time.monotonic() + 10
        while not (children := _children(parent.pid)) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert children, "no snapshot child started"
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 5
    while any(map(_alive, children)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(_alive, children)), "the snapshot child outlived its writer"
    # it stopped there: the snapshot of the 48 MiB commit (commit 2) was never finished
    assert not list(objects.glob(f"orphan.db/generations/*/snapshots/{2:016d}"))


#: a stand-in child: chatter on stdout and stderr, then a valid answer of ~1 MiB (16 pipes'
#: worth), with or without its newline (END)
LONG_ANSWER = """
import json, os, sys
print("chatter from a library" * 1000)
sys.stderr.write("warnings galore " * 10000)
answer = {"objects": 3, "bytes": 30, "requests": {"put": 3}, "failures": {},
          "bytes_read": 0, "log": [["bottomless.test", 20, "x" * 1000]] * 1000}
with os.fdopen(int(sys.argv[-1]), "w") as out:
    out.write(json.dumps(answer) + END)
"""


@pytest.mark.parametrize("end", ["", "\n"])
def test_a_long_answer_and_stdout_chatter_do_not_spoil_the_report(
    make_settings: MakeSettings, spied_spawn: type[_SpiedSpawn], end: str
) -> None:
    spied_spawn.script = LONG_ANSWER.replace("END", repr(end))
    settings = make_settings("file")
    job = SnapshotJob("absent.db", "g", 5, "w", parallelism=1)
    reports: list[Any] = []
    worker = threading.Thread(
        target=lambda: reports.append(build_in_child(job, settings, open_store(settings))),
        daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "build_in_child hung on a long answer"
    assert reports and reports[0].objects == 3 and reports[0].requests == {"put": 3}


def test_a_child_that_cannot_start_hands_snapshots_to_a_thread(
    tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    starts: list[list[str]] = []

    def cannot_start(args: list[str]) -> Any:
        starts.append(args)
        raise SpawnError(errno.E2BIG, "Argument list too long")

    monkeypatch.setattr(snapshot_worker, "_spawn", cannot_start)
    settings = make_settings("file", snapshot_interval_commits=10)
    path = str(tmp_path / "fallback.db")
    db = bottomless.connect(path, settings)
    _commit(db, 10)
    replicator(path).wait_snapshot(60)
    _commit(db, 10)
    replicator(path).wait_snapshot(60)
    status = bottomless.status(db)
    seqs = snapshot_seqs(replicator(path).store, "fallback.db", status["generation"])
    db.close()
    assert seqs[-2:] == [10, 20] and status["last_error"] is None  # both built, in a thread
    assert len(starts) == 1  # the second did not try a child again
    assert "built in a thread from now on" in caplog.text


def _fork_a_bystander(lifetime: float, bystanders: list[int]) -> None:
    """Fork this process, as a worker pool or a forking server would: the copy holds every
    descriptor open here at that moment, and lives ``lifetime`` seconds."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the copy only waits
        time.sleep(lifetime)
        os._exit(0)
    bystanders.append(pid)


def _failing_job_among_bystanders(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch, *, fork_before: bool
) -> tuple[SnapshotProcessError, float, int]:
    """Build a snapshot that fails in the child, with copies of this process forked around
    the child's start (before it, if ``fork_before``, and after it), each living 30 s and
    holding every descriptor open at that moment: the failure, the seconds it took, and how
    many copies were forked."""
    bystanders: list[int] = []
    spawn = snapshot_worker._spawn

    def fork_around_the_start(argv: list[str]) -> Any:
        if fork_before:
            _fork_a_bystander(30, bystanders)
        child = spawn(argv)
        _fork_a_bystander(30, bystanders)
        return child

    monkeypatch.setattr(snapshot_worker, "_spawn", fork_around_the_start)
    settings = make_settings("file")
    job = SnapshotJob("absent.db", "no-such-generation", 5, "w", parallelism=1)
    started = time.monotonic()
    try:
        with pytest.raises(SnapshotProcessError) as failure:
            build_in_child(job, settings, open_store(settings))
        return failure.value, time.monotonic() - started, len(bystanders)
    finally:
        for pid in bystanders:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_a_process_forked_meanwhile_does_not_hold_up_the_snapshot(
    make_settings: MakeSettings, spied_spawn: type[_SpiedSpawn], monkeypatch: pytest.MonkeyPatch
) -> None:
    # forks land where they hurt most: once every pipe exists but the child does not, and once
    # the child has started but has not been sent its job
    failure, took, forked = _failing_job_among_bystanders(make_settings, monkeypatch,
                                                          fork_before=True)
    assert forked == 2
    # the child read its job and answered: its own message, long before the copies exit
    assert "no-such-generation has no snapshot at or before 5" in str(failure)
    assert took < 15


def test_the_child_is_not_started_through_subprocess_popen(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Popen waits for the end of a pipe that reports a failed exec: a process forked while it
    # runs (another thread's worker pool) holds that pipe, and the start, for its whole life
    def no_popen(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("subprocess.Popen started the snapshot child")

    monkeypatch.setattr(subprocess, "Popen", no_popen)
    settings = make_settings("file")
    job = SnapshotJob("absent.db", "no-such-generation", 5, "w", parallelism=1)
    with pytest.raises(SnapshotProcessError, match="no-such-generation has no snapshot"):
        build_in_child(job, settings, open_store(settings))


def test_a_child_that_cannot_load_bottomless_is_a_failure_to_set_up(
    make_settings: MakeSettings, spied_spawn: type[_SpiedSpawn]
) -> None:
    spied_spawn.script = snapshot_worker._BOOTSTRAP.replace(
        "bottomless.engine.snapshot_worker", "bottomless_gone.engine.snapshot_worker")
    settings = make_settings("file")
    job = SnapshotJob("absent.db", "g", 5, "w", parallelism=1)
    with pytest.raises(SnapshotProcessError, match="cannot load bottomless: ModuleNotFound"
                       ) as failure:
        build_in_child(job, settings, open_store(settings))
    assert failure.value.at_start  # so the writer builds its snapshots in a thread instead


def test_the_child_finds_the_parents_bottomless_even_off_the_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = os.path.dirname(os.path.dirname(os.path.abspath(bottomless.__file__)))
    monkeypatch.setattr(sys, "path", [p for p in sys.path if os.path.abspath(p or ".") != home])
    assert snapshot_worker._child_path()[-1] == home


@pytest.mark.parametrize("removed", ["before opening", "after opening"])
def test_a_removed_working_directory_stops_neither_opening_nor_snapshots(
    tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, removed: str,
) -> None:
    release = tmp_path / "release"  # a deploy swaps the release directory away
    release.mkdir()
    monkeypatch.chdir(release)
    monkeypatch.setattr(sys, "path", ["", *sys.path])  # as under python -c, or a REPL
    monkeypatch.setattr(snapshot_worker, "compact", _no_compaction_here)  # in the child only
    if removed == "before opening":
        release.rmdir()
    settings = make_settings("file", snapshot_interval_commits=10)
    path = str(tmp_path / "cwdless.db")
    db = bottomless.connect(path, settings)
    if removed == "after opening":
        release.rmdir()
    _commit(db, 10)
    replicator(path).wait_snapshot(60)
    status = bottomless.status(db)
    seqs = snapshot_seqs(replicator(path).store, "cwdless.db", status["generation"])
    db.close()
    assert status["last_error"] is None and seqs[-1] == 10
    assert "built in a thread from now on" not in caplog.text


FLAKY_STORES = """
import os
from bottomless.backends.file import FilePageStore
from bottomless.errors import StoreError


class Flaky(FilePageStore):
    backend = "flaky"

    def __init__(self, root):
        marker = root + ".down"
        if os.path.exists(marker):  # unreachable, once
            os.unlink(marker)
            raise StoreError("HEAD bucket failed: 503 SlowDown")
        super().__init__(root)
"""


def test_a_store_that_fails_once_in_the_child_fails_one_snapshot_only(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "flakystores.py").write_text(FLAKY_STORES)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flakystores", raising=False)
    monkeypatch.setattr(snapshot_worker, "compact", _no_compaction_here)
    bottomless.register_backend("flaky", "flakystores:Flaky")
    try:
        objects = tmp_path / "objects"
        settings = bottomless.Settings(backend="flaky", bucket=str(objects),
                                       snapshot_interval_commits=10, lease_ttl=0)
        path = str(tmp_path / "flaky.db")
        db = bottomless.connect(path, settings)
        (tmp_path / "objects.down").touch()  # the store is down while the first child opens
        _commit(db, 10)
        replicator(path).wait_snapshot(60)
        first_error = bottomless.status(db)["last_error"]
        _commit(db, 10)
        replicator(path).wait_snapshot(60)
        status = bottomless.status(db)
        seqs = snapshot_seqs(replicator(path).store, "flaky.db", status["generation"])
        db.close()
    finally:
        backend_registry.unregister("flaky")
    assert "503 SlowDown" in (first_error or "")
    assert seqs[-1] == 20  # built by the next child: compaction here would have raised
    assert "built in a thread from now on" not in caplog.text


def test_the_child_is_in_a_session_of_its_own(
    make_settings: MakeSettings, spied_spawn: type[_SpiedSpawn], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a Ctrl-C at the terminal goes to the foreground process group: not to the snapshot; and
    # with no terminal of its own, the child cannot stop on reading one
    sessions: list[tuple[int, int]] = []
    spawn = snapshot_worker._spawn

    def start_and_look(argv: list[str]) -> Any:
        child = spawn(argv)
        sessions.append((os.getpgid(child.pid), os.getsid(child.pid)))
        return child

    monkeypatch.setattr(snapshot_worker, "_spawn", start_and_look)
    settings = make_settings("file")
    with pytest.raises(SnapshotProcessError):
        build_in_child(SnapshotJob("absent.db", "g", 5, "w", parallelism=1), settings,
                       open_store(settings))
    [seen] = spied_spawn.seen
    assert sessions == [(seen["pid"], seen["pid"])] and seen["pid"] != os.getpgrp()
    assert {"-s", "-P"} <= set(seen["args"])


def test_descriptors_above_1023_do_not_stop_the_child(
    make_settings: MakeSettings,
) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"cannot open 1,100 descriptors here (hard limit {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    busy = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # a busy server's sockets
    try:
        settings = make_settings("file")
        job = SnapshotJob("absent.db", "no-such-generation", 5, "w", parallelism=1)
        with pytest.raises(SnapshotProcessError, match="no-such-generation has no snapshot"):
            build_in_child(job, settings, open_store(settings))
    finally:
        for fd in busy:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


#: a stand-in for the snapshot child, after the bootstrap's first lines: it answers the list of
#: its open descriptors as its error
FDS_CHILD = snapshot_worker._BOOTSTRAP.replace(
    "from bottomless.engine.snapshot_worker import main",
    "main = lambda: os.write(3, (json.dumps({'kind': 'Fds', 'error': json.dumps(sorted(map("
    "int, os.listdir('/proc/self/fd'))))}) + chr(10)).encode()) and 0")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="lists descriptors in /proc")
def test_the_child_keeps_no_descriptor_of_the_application(
    make_settings: MakeSettings, spied_spawn: type[_SpiedSpawn]
) -> None:
    # a listening port or a pipe somebody waits on, left inheritable by the application
    leaked = os.dup2(os.open(os.devnull, os.O_RDONLY), 200, inheritable=True)
    spied_spawn.script = FDS_CHILD
    try:
        settings = make_settings("file")
        with pytest.raises(SnapshotProcessError) as failure:
            build_in_child(SnapshotJob("absent.db", "g", 5, "w", parallelism=1), settings,
                           open_store(settings))
    finally:
        os.close(leaked)
    assert failure.value.kind == "Fds"
    fds = json.loads(str(failure.value))
    assert fds[:4] == [0, 1, 2, 3] and len(fds) <= 5  # and the listing's own descriptor


def test_a_job_longer_than_a_pipe_holds_reaches_the_child_despite_a_fork(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a long sys.path (zipapps, Bazel), and a copy of this process holding the child's stdin
    path = snapshot_worker._child_path()
    monkeypatch.setattr(snapshot_worker, "_child_path",
                        lambda: path + [f"/no/such/dir/{i:06d}" + "x" * 80 for i in range(3000)])
    failure, took, _ = _failing_job_among_bystanders(make_settings, monkeypatch,
                                                     fork_before=False)
    assert "no-such-generation has no snapshot at or before 5" in str(failure)
    assert took < 15


def test_children_that_die_without_a_word_send_snapshots_to_a_thread_after_three(
    tmp_path: Any, make_settings: MakeSettings, spied_spawn: type[_SpiedSpawn],
    caplog: pytest.LogCaptureFixture,
) -> None:
    spied_spawn.script = "import sys; sys.exit(1)"  # as a Python that cannot start here
    settings = make_settings("file", snapshot_interval_commits=5)
    path = str(tmp_path / "silent.db")
    db = bottomless.connect(path, settings)
    for _ in range(3):
        _commit(db, 5)
        replicator(path).wait_snapshot(60)
    status = bottomless.status(db)
    seqs = snapshot_seqs(replicator(path).store, "silent.db", status["generation"])
    db.close()
    assert len(spied_spawn.seen) == 3
    assert 5 not in seqs and 10 not in seqs and seqs[-1] == 15  # the third, in a thread
    assert caplog.text.count("built in a thread from now on") == 1


def test_a_child_collected_by_the_application_is_reported_as_such(
    make_settings: MakeSettings, spied_spawn: type[_SpiedSpawn]
) -> None:
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children reap themselves
    try:
        settings = make_settings("file")
        job = SnapshotJob("absent.db", "no-such-generation", 5, "w", parallelism=1)
        with pytest.raises(SnapshotProcessError, match="no-such-generation has no snapshot"):
            build_in_child(job, settings, open_store(settings))  # its answer still counts
        spied_spawn.script = "import sys; sys.exit(1)"
        with pytest.raises(SnapshotProcessError) as failure:
            build_in_child(job, settings, open_store(settings))
    finally:
        signal.signal(signal.SIGCHLD, previous)
    # its status is unknown here: neither a success (0) nor a reason to give up on children
    assert "its status collected by another part of this process" in str(failure.value)
    assert failure.value.returncode is None and not failure.value.silent
    assert not failure.value.at_start


@pytest.mark.parametrize(("error", "at_start"), [(errno.EAGAIN, False), (errno.EMFILE, False),
                                                 (errno.ENOENT, True), (errno.EACCES, True)])
def test_only_lasting_start_errors_send_snapshots_to_a_thread(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch, error: int, at_start: bool
) -> None:
    def fails(argv: list[str]) -> Any:
        raise SpawnError(error, os.strerror(error))

    monkeypatch.setattr(snapshot_worker, "_spawn", fails)
    settings = make_settings("file")
    with pytest.raises(SnapshotProcessError, match="cannot start the snapshot process") as failure:
        build_in_child(SnapshotJob("absent.db", "g", 5, "w", parallelism=1), settings,
                       open_store(settings))
    assert failure.value.at_start is at_start


SIGPIPE_APP = """
import signal, sys, time
from bottomless.engine import snapshot_worker
from bottomless.engine.child_process import ChildProcess
from bottomless.errors import SnapshotProcessError
import bottomless

signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as some applications do

def spawn(argv):
    child = ChildProcess.start([argv[0], "-c", "pass", argv[-1]])
    time.sleep(1)  # gone before its job is sent
    return child

snapshot_worker._spawn = spawn
settings = bottomless.Settings(backend="file", bucket=sys.argv[1])
job = snapshot_worker.SnapshotJob("absent.db", "g", 5, "w", parallelism=1)
try:
    snapshot_worker.build_in_child(job, settings, bottomless.backends.registry.open_store(settings))
except SnapshotProcessError as e:
    print("survived:", e)
"""


def test_a_child_gone_before_its_job_does_not_kill_an_application_without_sigpipe_handling(
    tmp_path: Any,
) -> None:
    app = subprocess.run([sys.executable, "-c", SIGPIPE_APP, str(tmp_path / "objects")],
                         capture_output=True, text=True, timeout=60)
    assert app.returncode == 0, app.stderr
    assert "survived: the snapshot process exited with status 0 without an answer" in app.stdout


def test_losing_sight_of_the_child_is_a_failed_snapshot(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import selectors

    def no_selector() -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(selectors, "DefaultSelector", no_selector)
    settings = make_settings("file")
    with pytest.raises(SnapshotProcessError, match="lost touch with the snapshot process"
                       ) as failure:
        build_in_child(SnapshotJob("absent.db", "g", 5, "w", parallelism=1), settings,
                       open_store(settings))
    assert not failure.value.at_start and not failure.value.silent  # the next one tries again

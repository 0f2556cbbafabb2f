"""Crash tests aimed at the moments that are not a plain commit.

Kills land in checkpoints and in background snapshot uploads (crash_loop with a writer that
checkpoints or snapshots every few transactions, killed as it starts one), in the initial upload
of an existing database (many parts, killed after increasing delays), at exact moments of an
upload (a child that kills itself just before or after a given PUT), and in ``bottomless gc``
running beside a live writer (plus a deterministic gc stopped after each of its deletions).
After every kill the replica is restored and checked, and the local file must reopen without a
conflict.

Kill counts here: the default run does 48 (20 heavy + up to 6 in the initial upload + 11 at
exact points + 11 around gc); ``-m slow`` adds 182 (12 + 104 heavy, 8 + 16 initial upload,
42 gc), 20 of them in the ``-m slow -k ci_slice`` slice (S3).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import apsw
import pytest
from crash_writer import write_transaction
from helpers import integrity, replicator, rows
from test_crash import (  # noqa: F401 - crash_totals is an autouse fixture
    HERE,
    LAG_SLACK,
    check_restored,
    child_env,
    crash_loop,
    crash_totals,
    finish_cleanly,
    kill_marks,
    new_tally,
    print_tally,
    wait_for_line,
)

import bottomless
from bottomless import format as fmt
from bottomless.backends.base import PageStore
from bottomless.errors import ReplicaNotFoundError
from bottomless.ops import catalog, retention
from bottomless.ops.targets import complete_generations, generations

MakeSettings = Callable[..., bottomless.Settings]
WRITER = os.path.join(HERE, "crash_writer.py")
#: a verify problem that a kill may legitimately leave behind (gc removes it later)
ACCEPTABLE = "incomplete generation"

# ---------------------------------------------------------------- checkpoints and snapshots

#: crash_loop options of the two heavy variants
HEAVY: dict[str, dict[str, Any]] = {
    "checkpoint": {"checkpoint_every": 10, "kill_at": "checkpoint "},
    "snapshot": {"snapshot_every": 3, "kill_at": "snapshot ", "kill_within": 0.05},
}


def heavy_loop(tmp_path: Any, settings: bottomless.Settings, heavy: str, kills: int,
               seed: int) -> None:
    """crash_loop in WAL mode with kills aimed at checkpoints or at background snapshots."""
    options = dict(HEAVY[heavy])
    if settings.backend == "s3" and "kill_within" in options:
        options["kill_within"] *= 6  # a snapshot reads for longer before its first PUT
    tally = crash_loop(tmp_path, settings, "wal", kills=kills, seed=seed,
                       label=f"wal, {heavy}-heavy", **options)
    assert tally["kills"] == kills and tally["lost"] == 0


@pytest.mark.parametrize("durability", ["sync", "async"])
@pytest.mark.parametrize("heavy", ["checkpoint", "snapshot"])
def test_crash_heavy(tmp_path: Any, make_settings: MakeSettings, heavy: str,
                     durability: str) -> None:
    settings = make_settings("file", durability=durability, max_lag=0.5, snapshot_part_mb=1)
    heavy_loop(tmp_path, settings, heavy, kills=5, seed=len(heavy) * 31 + len(durability))


@pytest.mark.slow
@pytest.mark.parametrize("heavy", ["checkpoint", "snapshot"])
def test_crash_heavy_s3_ci_slice(tmp_path: Any, make_settings: MakeSettings, heavy: str) -> None:
    settings = make_settings("s3", snapshot_part_mb=1)
    heavy_loop(tmp_path, settings, heavy, kills=6, seed=5)


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["sync", "async"])
@pytest.mark.parametrize("backend_name", ["file", "s3"])
@pytest.mark.parametrize("heavy", ["checkpoint", "snapshot"])
def test_crash_heavy_soak(tmp_path: Any, make_settings: MakeSettings, heavy: str,
                          backend_name: str, durability: str) -> None:
    settings = make_settings(backend_name, durability=durability, max_lag=1.0,
                             snapshot_part_mb=1)
    heavy_loop(tmp_path, settings, heavy, kills=13, seed=17)


# ---------------------------------------------------------------- the initial upload


def build_local(path: str, megabytes: int) -> int:
    """Write a crash_writer-shaped database of about ``megabytes`` MiB with plain SQLite.

    Returns its last transaction number. The pads are random, so compression cannot shrink
    the upload.
    """
    db = apsw.Connection(path)
    try:
        db.execute("CREATE TABLE t(txn INTEGER, j INTEGER, pad BLOB)")
        db.execute("CREATE TABLE meta(k TEXT PRIMARY KEY, v INTEGER)")
        txn = 0
        with db:
            while True:
                txn += 1
                write_transaction(db, txn)
                if txn % 50 == 0:
                    pages = db.execute("PRAGMA page_count").fetchone()[0]
                    size = db.execute("PRAGMA page_size").fetchone()[0]
                    if pages * size >= megabytes * 1024 * 1024:
                        return txn
    finally:
        db.close()


def digest(path: str) -> str:
    """SHA-256 of a file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def open_only(path: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """A fresh child opens ``path`` through bottomless, commits nothing and closes it."""
    return subprocess.run([sys.executable, WRITER, path, "delete", "0"], capture_output=True,
                          env=env, timeout=300)


def upload_seconds(tmp_path: Any, path: str, settings: bottomless.Settings) -> float:
    """How long a child takes to open a copy of ``path`` (its initial upload), in seconds."""
    os.makedirs(tmp_path / "calibration")
    copy = str(tmp_path / "calibration" / os.path.basename(path))
    shutil.copyfile(path, copy)
    bucket = f"{settings.bucket}-calibration" if settings.backend == "file" else settings.bucket
    env = child_env(settings, LIBSQL_BOTTOMLESS_BUCKET=bucket,
                    LIBSQL_BOTTOMLESS_DB_NAME="calibration.db")
    done = open_only(copy, env)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    stamps = dict(line.split()[:2] for line in done.stdout.decode().splitlines())
    return float(stamps["open"]) - float(stamps["start"])


def upload_crash_loop(tmp_path: Any, settings: bottomless.Settings, *, megabytes: int,
                      kills: int, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kill children that open a big local database while its initial upload runs.

    A first child, on a copy, times the upload; then ``kills`` children are killed: the
    first as soon as its upload has begun, the others at increasing moments spread over that
    time. After each kill the bucket holds either nothing
    restorable or exactly the local file, and the next child must not meet a conflict.
    """
    rng = random.Random(seed)
    path = str(tmp_path / "big.db")
    last = build_local(path, megabytes)
    local = digest(path)
    env = child_env(settings)
    upload = upload_seconds(tmp_path, path, settings)
    store = bottomless.open_store(settings)
    tally = new_tally()
    tally["empty"] = tally["opened"] = 0
    marks: set[str] = set()
    try:
        for round_ in range(kills):
            child = subprocess.Popen([sys.executable, WRITER, path, "delete", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            assert child.stdout is not None
            started = child.stdout.readline()  # imports are done, the open begins
            if round_ == 0:  # aimed, however fast the machine is now: once the upload began
                deadline = time.monotonic() + 120
                while (not kill_marks(store, "big.db") - marks and child.poll() is None
                       and time.monotonic() < deadline):
                    time.sleep(0.005)
            else:  # spread over the time the upload took on a copy
                time.sleep(upload * (round_ + rng.uniform(0.1, 0.9)) / kills)
            child.send_signal(signal.SIGKILL)
            out, err = child.communicate(timeout=60)
            opened = b"\nopen " in started + out
            tally["opened"] += opened
            assert child.returncode == -signal.SIGKILL or (child.returncode == 0 and opened), (
                f"round {round_}: the open failed (exit {child.returncode}):\n"
                f"{err.decode()[-3000:]}"
            )
            tally["kills"] += child.returncode == -signal.SIGKILL
            now_marks = kill_marks(store, "big.db")
            if not opened and now_marks - marks:
                tally["generation"] = tally.get("generation", 0) + 1
            marks = now_marks
            target = str(tmp_path / f"restored-{round_}.db")
            try:
                bottomless.restore(target, settings, db_name="big.db")
            except ReplicaNotFoundError:
                assert not tally["opened"], "an open finished, yet nothing is restorable"
                assert tally["restores"] == 0, "a complete upload became unrestorable"
                tally["empty"] += 1
            else:
                tally["restores"] += 1
                assert digest(target) == local, f"round {round_}: restored != the local file"
                os.unlink(target)
        again = open_only(path, env)  # a fresh child opens the file to the end: no conflict
        assert again.returncode == 0, again.stderr.decode()[-3000:]
        assert digest(path) == local, "opening changed the local file"
        target = str(tmp_path / "restored-final.db")
        bottomless.restore(target, settings, db_name="big.db")
        tally["restores"] += 1
        assert digest(target) == local, "restored != the local file"
        os.unlink(target)

        report = catalog.verify(store, "big.db")
        assert report.integrity == "ok", report
        assert [p for p in report.problems if ACCEPTABLE not in p] == [], report.problems
        monkeypatch.setattr(retention, "GRACE_SECONDS", 0)  # the interrupted uploads are recent
        retention.collect_garbage(store, "big.db", older_than=dt.timedelta(0))
        # (SeaweedFS keeps listing a prefix once everything under it is deleted: count only
        # generations that still hold objects)
        remaining = [g for g in generations(store, "big.db")
                     if store.list_keys(f"{fmt.generations_prefix('big.db')}{g}/")]
        assert remaining == complete_generations(store, "big.db"), (
            "gc left incomplete generations behind"
        )
        report = catalog.verify(store, "big.db")
        assert report.ok, report.problems

        # the file goes on replicating after gc
        more = subprocess.run([sys.executable, WRITER, path, "delete", "3"], capture_output=True,
                              env=env, timeout=300)
        assert more.returncode == 0, more.stderr.decode()[-3000:]
        bottomless.restore(target, settings, db_name="big.db")
        tally["restores"] += 1
        assert check_restored(target, last + 3) == last + 3
        assert rows(target, "SELECT txn, j FROM t ORDER BY 1, 2") == rows(
            path, "SELECT txn, j FROM t ORDER BY 1, 2"
        )
    finally:
        store.close()
    print_tally(
        f"initial upload of {megabytes} MiB in {settings.snapshot_part_mb} MiB parts,"
        f" {settings.backend}", tally,
        f"; the upload takes {upload:.2f}s; {tally['empty']} restores found nothing yet",
    )
    assert tally["kills"] >= 1 and tally.get("generation", 0) >= 1 and tally["lost"] == 0


def test_kill_during_initial_upload(tmp_path: Any, make_settings: MakeSettings,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings("file", snapshot_part_mb=1)
    upload_crash_loop(tmp_path, settings, megabytes=24, kills=6, seed=1,
                      monkeypatch=monkeypatch)


@pytest.mark.slow
def test_kill_during_initial_upload_s3_ci_slice(tmp_path: Any, make_settings: MakeSettings,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings("s3", snapshot_part_mb=1)
    upload_crash_loop(tmp_path, settings, megabytes=32, kills=8, seed=2,
                      monkeypatch=monkeypatch)


@pytest.mark.slow
def test_kill_during_initial_upload_soak(tmp_path: Any, make_settings: MakeSettings,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings("file", snapshot_part_mb=1, parallelism=2)
    upload_crash_loop(tmp_path, settings, megabytes=40, kills=16, seed=3,
                      monkeypatch=monkeypatch)


# ---------------------------------------------------------------- exact points

#: a crash_writer that SIGKILLs itself just before or just after the Nth store PUT whose key
#: matches a pattern: ``-c KILL_CHILD PATTERN before|after N DB_PATH MODE [COUNT]``
KILL_CHILD = """
import os
import re
import signal
import sys
import threading

from bottomless.backends.file import FilePageStore

pattern, when, nth = re.compile(sys.argv[1]), sys.argv[2], int(sys.argv[3])
hits = []
lock = threading.Lock()
put = FilePageStore.put_if_absent


def put_if_absent(self, key, data):
    with lock:
        if pattern.search(key):
            hits.append(key)
        now = len(hits) == nth and hits[-1] == key
    if now and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    put(self, key, data)
    if now and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)


FilePageStore.put_if_absent = put_if_absent
sys.argv = ["crash_writer.py", *sys.argv[4:]]
import crash_writer

crash_writer.main()
"""


@dataclass(frozen=True)
class KillPoint:
    """Kill just ``when`` the ``nth`` PUT of a key matching ``pattern``."""

    pattern: str
    when: str
    nth: int
    initial: bool  # the initial upload of an existing local file (else: a fresh writer's)
    restorable: bool  # whether the bucket must hold a restorable replica afterwards


SNAPSHOT_0 = r"/snapshots/0{16}$"
LATER_SNAPSHOT = r"/snapshots/(?!0{16}$)"
POINTS = {
    "initial upload, some parts stored": KillPoint(r"/parts/0{16}-", "after", 3, True, False),
    "initial upload, manifest next": KillPoint(SNAPSHOT_0, "before", 1, True, False),
    "initial upload stored, state file not written": KillPoint(SNAPSHOT_0, "after", 1, True,
                                                               True),
    "commit about to be stored": KillPoint(r"/commits/", "before", 10, False, True),
    "commit stored, not committed locally": KillPoint(r"/commits/", "after", 10, False, True),
    "snapshot parts stored, manifest next": KillPoint(LATER_SNAPSHOT, "before", 2, False, True),
    "snapshot stored": KillPoint(LATER_SNAPSHOT, "after", 2, False, True),
}


#: every point in both durability modes, except the initial upload, which does not depend on it
POINT_CASES = [
    pytest.param(name, durability, id=f"{name.replace(' ', '-').replace(',', '')}-{durability}")
    for name, kill in POINTS.items()
    for durability in (("sync",) if kill.initial else ("sync", "async"))
]


@pytest.mark.parametrize(("point", "durability"), POINT_CASES)
def test_kill_at_point(tmp_path: Any, make_settings: MakeSettings, point: str,
                       durability: str) -> None:
    """One kill at an exact moment of an upload; then restore, reopen, and check."""
    kill = POINTS[point]
    big = kill.initial
    settings = make_settings("file", durability=durability, max_lag=0.5, snapshot_part_mb=1)
    path = str(tmp_path / "crash.db")
    mode = "delete" if big else "wal"
    last = build_local(path, 4) if big else 0
    local = digest(path) if big else ""
    # the kill is aimed at a PUT of the writer's own process, so its snapshots are built there
    # (a snapshot child killed mid-upload: tests/test_snapshot_worker.py)
    env = child_env(settings, LIBSQL_BOTTOMLESS_SNAPSHOT_INTERVAL_COMMITS="5",
                    LIBSQL_BOTTOMLESS_SNAPSHOT_WORKER="thread")
    child = subprocess.run(
        [sys.executable, "-c", KILL_CHILD, kill.pattern, kill.when, str(kill.nth), path, mode],
        capture_output=True, env=env, timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, (
        f"the child was not killed at {point!r} (exit {child.returncode}):\n"
        f"{child.stderr.decode()[-3000:]}"
    )
    tally = new_tally()
    tally["kills"] += 1
    done = [(int(n), float(at)) for _, n, at in
            (line.split() for line in child.stdout.decode().splitlines()
             if line.startswith("done"))]
    target = str(tmp_path / "restored.db")
    try:
        bottomless.restore(target, settings, db_name="crash.db")
    except ReplicaNotFoundError:
        assert not kill.restorable, f"nothing restorable after a kill at {point!r}"
    else:
        assert kill.restorable, f"a replica after a kill at {point!r}, before it was complete"
        tally["restores"] += 1
        if big:
            assert digest(target) == local, "restored != the local file"
        else:
            acknowledged = done[-1][0] if done else 0
            required = acknowledged if durability == "sync" else max(
                [0] + [n for n, at in done
                       if at <= done[-1][1] - settings.max_lag - LAG_SLACK]
            )
            check_restored(target, required, acknowledged + 1)
        os.unlink(target)
    # the same local file opens again without a conflict, and goes on replicating
    again = subprocess.run([sys.executable, WRITER, path, mode, "3"], capture_output=True,
                           env=env, timeout=120)
    assert again.returncode == 0, again.stderr.decode()[-3000:]
    top = rows(path, "SELECT v FROM meta WHERE k='last'")[0][0]
    assert top >= max([last, *(n for n, _ in done)]) + 3
    bottomless.restore(target, settings, db_name="crash.db")
    tally["restores"] += 1
    assert check_restored(target, top, top) == top
    assert rows(target, "SELECT txn, j FROM t ORDER BY 1, 2") == rows(
        path, "SELECT txn, j FROM t ORDER BY 1, 2"
    )
    store = bottomless.open_store(settings)
    try:
        report = catalog.verify(store, "crash.db")
    finally:
        store.close()
    assert report.integrity == "ok", report
    assert [p for p in report.problems if ACCEPTABLE not in p] == [], report.problems
    print_tally(f"killed at {point!r}, {durability}", tally, f"; then {top} commits")


# ---------------------------------------------------------------- gc

#: a child that runs ``bottomless gc ARGS...`` over and over in one process, a moment apart,
#: printing ``gc <n>`` as a run starts, ``del <key>`` before each deletion and ``gc-done <n>``
#: after it, so the parent can aim its kills at the deletions and tell where they landed
GC_CHILD = """
import random
import sys
import time

import bottomless.api as api
import bottomless.cli as cli

opened = api.open_store


def open_store(settings, **options):
    store = opened(settings, **options)
    delete = store.delete

    def announced_delete(key):
        print("del", key, flush=True)
        delete(key)

    store.delete = announced_delete
    return store


api.open_store = open_store
print("ready", flush=True)
for n in range(10**9):
    print(f"gc {n}", flush=True)
    cli.cli.main(args=["gc", *sys.argv[1:]], standalone_mode=False)
    print(f"gc-done {n}", flush=True)
    time.sleep(random.uniform(0.1, 0.4))
"""


def read_text(path: str) -> str:
    """A file's text, as far as it has been written."""
    with open(path, errors="replace") as handle:
        return handle.read()


def last_done(log: str) -> int:
    """The last transaction a writer logging to ``log`` acknowledged (0 if none)."""
    complete = read_text(log).split("\n")[:-1]  # the last line may still be being written
    done = [line.split()[1] for line in complete if line.startswith("done ")]
    return int(done[-1]) if done else 0


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def check_listed_points(tmp_path: Any, settings: bottomless.Settings, store: PageStore,
                        rng: random.Random, sample: int, newest: Callable[[], int]) -> int:
    """Restore a sample of the commits ``ls`` lists for the newest generation; check each.

    The listed span runs from the oldest snapshot to the last commit. Each restore must be a
    consistent database holding at most ``newest()`` transactions, and later commits never hold
    fewer transactions. Returns how many restores were done.
    """
    gens = [g for g in catalog.describe_generations(store, "crash.db") if g.complete]
    newest_gen = gens[-1]
    first = newest_gen.snapshots[0]
    last = max(newest_gen.last_commit or 0, newest_gen.snapshots[-1])
    picks = sorted({first, last, *(rng.randint(first, last) for _ in range(sample - 2))})
    restored: list[tuple[int, int]] = []
    for seq in picks:
        target = str(tmp_path / f"point-{seq}.db")
        try:
            bottomless.restore(target, settings, db_name="crash.db",
                               generation=newest_gen.generation, commit=seq)
        except bottomless.BottomlessError as e:
            raise AssertionError(
                f"commit {seq} of {newest_gen.generation} is listed (snapshots"
                f" {newest_gen.snapshots[:3]}…, commits {newest_gen.first_commit}.."
                f"{newest_gen.last_commit}) but cannot be restored: {e!r}"
            ) from e
        restored.append((seq, check_restored(target, 0, newest())))
        os.unlink(target)
    for (a, top_a), (b, top_b) in itertools.pairwise(restored):
        assert 0 <= top_b - top_a <= b - a, f"commits {a}, {b} hold transactions {top_a}, {top_b}"
    return len(picks)


def check_verify(store: PageStore) -> None:
    """``bottomless verify``: nothing wrong but what a kill may legitimately leave behind."""
    report = catalog.verify(store, "crash.db")
    assert report.integrity == "ok", report
    assert [p for p in report.problems if ACCEPTABLE not in p] == [], report.problems


def kill_gc(child: subprocess.Popen[bytes], rng: random.Random, aim: bool) -> list[str]:
    """Kill the gc child at a random moment, or (``aim``) a moment into a run's deletions.

    Returns its output lines.
    """
    assert child.stdout is not None
    seen = b""
    while b"ready" not in seen:  # imports done
        chunk = os.read(child.stdout.fileno(), 1 << 16)
        assert chunk, f"the gc child failed: {child.communicate()[1].decode()[-3000:]}"
        seen += chunk
    time.sleep(rng.uniform(0.0, 0.8))
    if aim:
        seen += wait_for_line(child, "del ", rng, 0.004)
    child.send_signal(signal.SIGKILL)
    out, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, (
        f"gc exited with {child.returncode}:\n{err.decode()[-3000:]}"
    )
    return (seen + out).decode().splitlines()


def gc_crash_loop(tmp_path: Any, settings: bottomless.Settings, mode: str, kills: int,
                  seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL ``bottomless gc --older-than 1s`` at random moments beside a committing writer.

    Every other kill is aimed at a run's deletions. After each, the newest state must restore
    with every acknowledged commit, verify must find nothing wrong, and a sample of the
    commits ``ls`` lists must restore.
    """
    rng = random.Random(seed)
    path = str(tmp_path / "crash.db")
    writer_env = child_env(settings, CRASH_CHECKPOINT_EVERY="5", CRASH_PAUSE="0.02",
                           LIBSQL_BOTTOMLESS_SNAPSHOT_INTERVAL_COMMITS="10")
    gc_env = child_env(settings)
    store = bottomless.open_store(settings)
    tally = new_tally()
    tally["gc runs"] = tally["points"] = tally["deleted"] = 0
    log, errors = str(tmp_path / "writer.log"), str(tmp_path / "writer.err")
    with open(log, "wb") as out, open(errors, "wb") as err:
        writer = subprocess.Popen([sys.executable, WRITER, path, mode], stdout=out, stderr=err,
                                  env=writer_env)
    try:
        wait_for(lambda: last_done(log) >= 40 or writer.poll() is not None, "the writer")
        for round_ in range(kills):
            child = subprocess.Popen(
                [sys.executable, "-c", GC_CHILD, "crash.db", "--older-than", "1s"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=gc_env, bufsize=0,
            )
            lines = kill_gc(child, rng, aim=round_ % 2 == 1)
            assert writer.poll() is None, "the writer stopped: " + read_text(errors)[-3000:]
            tally["kills"] += 1
            tally["gc runs"] += sum(line.startswith("gc-done") for line in lines)
            tally["deleted"] += sum(line.startswith("del ") for line in lines)
            if lines and lines[-1].startswith("del "):
                tally["gc"] = tally.get("gc", 0) + 1
            acknowledged = last_done(log)
            target = str(tmp_path / f"restored-{round_}.db")
            bottomless.restore(target, settings, db_name="crash.db")
            tally["restores"] += 1
            check_restored(target, acknowledged, last_done(log) + 1)
            os.unlink(target)
            check_verify(store)
            tally["points"] += check_listed_points(tmp_path, settings, store, rng, 4,
                                                   lambda: last_done(log) + 1)
        # kill the writer too, then reopen its file: no conflict, nothing lost
        writer.send_signal(signal.SIGKILL)
        writer.wait(60)
        tally["kills"] += 1
        top = finish_cleanly(tmp_path, settings, path, mode, writer_env, last_done(log), tally)
        check_verify(store)
        # a gc that runs to the end leaves nothing for verify to complain about, twice over
        monkeypatch.setattr(retention, "GRACE_SECONDS", 0)
        for _ in range(2):
            retention.collect_garbage(store, "crash.db", older_than=dt.timedelta(seconds=1))
            report = catalog.verify(store, "crash.db")
            assert report.ok, report.problems
        tally["points"] += check_listed_points(tmp_path, settings, store, rng, 6, lambda: top)
    finally:
        if writer.poll() is None:
            writer.send_signal(signal.SIGKILL)
            writer.wait(60)
        store.close()
    print_tally(
        f"gc beside a {mode} writer, {settings.backend}", tally,
        f"; {tally['gc runs']} gc runs finished, {tally['deleted']} objects deleted,"
        f" {tally['points']} listed commits restored, {top} commits",
    )
    assert integrity(path) == "ok" and tally["lost"] == 0


def test_kill_during_gc(tmp_path: Any, make_settings: MakeSettings,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings("file", snapshot_part_mb=1)
    gc_crash_loop(tmp_path, settings, "wal", kills=10, seed=4, monkeypatch=monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_kill_during_gc_soak(tmp_path: Any, make_settings: MakeSettings, mode: str,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings("file", snapshot_part_mb=1)
    gc_crash_loop(tmp_path, settings, mode, kills=20, seed=9, monkeypatch=monkeypatch)


class GcKilledError(Exception):
    """Stands for the end of a gc process that was killed."""


def test_gc_interrupted_after_any_deletion(tmp_path: Any, make_settings: MakeSettings) -> None:
    """A gc stopped after any number of its deletions leaves every listed commit restorable.

    The deterministic companion of test_kill_during_gc: one bucket, copied afresh for each
    stopping point, and a gc (at one fixed ``now``) that stops after the first N deletions,
    which is what a SIGKILL between two deletions leaves behind.
    """
    settings = make_settings("file", snapshot_part_mb=1, snapshot_interval_commits=5)
    path = str(tmp_path / "crash.db")
    db = bottomless.connect(path, settings)
    db.execute("PRAGMA journal_mode=wal")
    db.execute("CREATE TABLE t(txn INTEGER, j INTEGER, pad BLOB)")
    db.execute("CREATE TABLE meta(k TEXT PRIMARY KEY, v INTEGER)")
    for txn in range(1, 41):
        with db:
            write_transaction(db, txn)
        replicator(path).wait_snapshot()
    db.close()
    now = time.time() + 1.5
    pristine = f"{settings.bucket}-pristine"
    shutil.copytree(settings.bucket, pristine)
    store = bottomless.open_store(settings)
    planned = retention.collect_garbage(store, "crash.db", older_than=dt.timedelta(seconds=1),
                                       dry_run=True, now=now).deleted
    store.close()
    assert len(planned) > 10, planned
    rng = random.Random(6)
    tally = new_tally()
    tally["points"] = tally["stopped"] = 0
    for stop in sorted({*range(0, len(planned) + 1, max(1, len(planned) // 12)),
                        len(planned) - 1}):
        shutil.rmtree(settings.bucket)
        shutil.copytree(pristine, settings.bucket)
        store = bottomless.open_store(settings)
        delete, deleted = store.delete, []

        def delete_until_stopped(key: str) -> None:
            if len(deleted) == stop:  # noqa: B023 - called within this iteration
                raise GcKilledError
            deleted.append(key)  # noqa: B023
            delete(key)  # noqa: B023

        store.delete = delete_until_stopped  # type: ignore[method-assign]
        with contextlib.suppress(GcKilledError):
            retention.collect_garbage(store, "crash.db", older_than=dt.timedelta(seconds=1),
                                      now=now)
        tally["stopped"] += 1
        try:
            report = catalog.verify(store, "crash.db")
            problems = [p for p in report.problems if ACCEPTABLE not in p]
            assert report.integrity == "ok" and problems == [], (
                f"gc stopped after {stop} of {len(planned)} deletions (the last:"
                f" {deleted[-1:]}): {problems}"
            )
            target = str(tmp_path / "newest.db")
            bottomless.restore(target, settings, db_name="crash.db", overwrite=True)
            tally["restores"] += 1
            check_restored(target, 40, 40)
            tally["points"] += check_listed_points(tmp_path, settings, store, rng, 4,
                                                   lambda: 40)
        finally:
            store.close()
    print_tally("gc stopped after any deletion, file", tally,
                f"; no real kills: {tally['stopped']} gc runs stopped between two of their"
                f" {len(planned)} deletions, {tally['points']} listed commits restored")

"""Operating replicas with the real ``bottomless`` CLI in a subprocess, on the file and S3 backends.

Point-in-time restore (by commit and by timestamp), listing, verification of a corrupted
replica, garbage collection within retention, and the interactive shell.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import apsw
import pytest
from helpers import integrity, remove_db, replicator, rows

import bottomless
from bottomless.ops import retention
from bottomless.testing.seaweed import SeaweedServer

MakeSettings = Callable[..., bottomless.Settings]
History = dict[int, list[Any]]

CLI_BACKENDS = ["file", "s3"]


@pytest.fixture(params=CLI_BACKENDS)
def cli_backend(request: pytest.FixtureRequest) -> str:
    """The backends a separate CLI process can reach (memory is per-process)."""
    name: str = request.param
    if name == "s3":
        request.node.add_marker(pytest.mark.s3)
    return name


def cli_env(settings: bottomless.Settings) -> dict[str, str]:
    """The ``LIBSQL_BOTTOMLESS_*`` variables that point a CLI process at ``settings``' store."""
    env = {
        "LIBSQL_BOTTOMLESS_BACKEND": settings.backend,
        "LIBSQL_BOTTOMLESS_BUCKET": settings.bucket,
    }
    if settings.backend == "s3":
        assert settings.access_key_id is not None and settings.secret_access_key is not None
        env.update({
            "LIBSQL_BOTTOMLESS_ENDPOINT": settings.endpoint,
            "LIBSQL_BOTTOMLESS_ACCESS_KEY_ID": settings.access_key_id.get_secret_value(),
            "LIBSQL_BOTTOMLESS_SECRET_ACCESS_KEY": settings.secret_access_key.get_secret_value(),
            "LIBSQL_BOTTOMLESS_REGION": settings.region or "us-east-1",
        })
    return env


def _child_env(settings: bottomless.Settings) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("LIBSQL_BOTTOMLESS_", "AWS_"))
    }
    env.update(cli_env(settings))
    return env


def run_cli(
    settings: bottomless.Settings, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m bottomless ARGS`` against the store of ``settings``."""
    return subprocess.run(
        [sys.executable, "-m", "bottomless", *args], input=stdin, capture_output=True,
        text=True, env=_child_env(settings), timeout=120,
    )


def run_cli_many(
    settings: bottomless.Settings, commands: list[list[str]]
) -> list[subprocess.CompletedProcess[str]]:
    """Run several independent CLI commands at once (they only read the store)."""
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "bottomless", *args], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=_child_env(settings),
        )
        for args in commands
    ]
    results = []
    for args, child in zip(commands, children, strict=True):
        stdout, stderr = child.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(args, child.returncode, stdout, stderr))
    return results


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """Assert a CLI run succeeded and return its stdout."""
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def fails(result: subprocess.CompletedProcess[str]) -> str:
    """Assert a CLI run failed cleanly (exit 1, no traceback) and return stdout + stderr."""
    assert result.returncode == 1, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout + result.stderr


def cli_json(settings: bottomless.Settings, *args: str) -> Any:
    """Run a ``--json`` command that must succeed and parse its output."""
    return json.loads(ok(run_cli(settings, *args, "--json")))


def restore_to(
    settings: bottomless.Settings, tmp_path: Any, db_name: str, *target: str
) -> tuple[str, str]:
    """``bottomless restore`` into a new file; return its path and the CLI's stdout."""
    out = str(tmp_path / f"restored-{os.urandom(4).hex()}.db")
    stdout = ok(run_cli(settings, "restore", db_name, "-o", out, *target))
    return out, stdout


def check_commits(
    settings: bottomless.Settings, tmp_path: Any, db_name: str, history: History,
    seqs: list[int | None], generation: str = "",
) -> None:
    """Restore each commit of ``seqs`` (None: the newest), in parallel: each must be intact,
    land on that commit and hold the rows recorded for it."""
    newest = max(history)
    outs = [str(tmp_path / f"commit-{seq}-{os.urandom(4).hex()}.db") for seq in seqs]
    results = run_cli_many(settings, [
        ["restore", db_name, "-o", out, *([] if seq is None else ["--commit", str(seq)])]
        for seq, out in zip(seqs, outs, strict=True)
    ])
    for seq, out, result in zip(seqs, outs, results, strict=True):
        expected = newest if seq is None else seq
        assert f"generation {generation}" in ok(result) and f" commit {expected} " in result.stdout
        assert integrity(out) == "ok", f"commit {seq}"
        assert rows(out) == history[expected], f"commit {seq}"


def key_of(db_name: str, generation: str, kind: str, seq: int) -> str:
    """An object key as docs/format.md spells it (kind: commits or snapshots)."""
    return f"{db_name}/generations/{generation}/{kind}/{seq:016d}"


class RawBucket:
    """The store seen without bottomless: plain files, or plain S3 requests."""

    def __init__(self, settings: bottomless.Settings, server: SeaweedServer | None) -> None:
        self.settings, self.server = settings, server

    def objects(self) -> dict[str, bytes]:
        """Every object in the bucket, key to content."""
        found: dict[str, bytes] = {}
        if self.server is None:
            root = os.path.abspath(self.settings.bucket)
            for directory, _, files in os.walk(root):
                for name in files:
                    if name.startswith(".tmp-"):
                        continue
                    path = os.path.join(directory, name)
                    with open(path, "rb") as handle:
                        found[os.path.relpath(path, root).replace(os.sep, "/")] = handle.read()
            return found
        client: Any = self.server.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.settings.bucket):
            for item in page.get("Contents", []):
                body = client.get_object(Bucket=self.settings.bucket, Key=item["Key"])["Body"]
                found[item["Key"]] = body.read()
        return found

    def overwrite(self, key: str, data: bytes) -> None:
        """Replace one object's content behind bottomless' back."""
        if self.server is None:
            path = os.path.join(self.settings.bucket, *key.split("/"))
            assert os.path.exists(path), path
            with open(path, "r+b") as handle:
                handle.write(data)
                handle.truncate()
            return
        client: Any = self.server.client()
        client.put_object(Bucket=self.settings.bucket, Key=key, Body=data)


def raw_bucket(request: pytest.FixtureRequest, settings: bottomless.Settings) -> RawBucket:
    """A RawBucket for ``settings`` (starting SeaweedFS only for s3)."""
    server = request.getfixturevalue("seaweed") if settings.backend == "s3" else None
    return RawBucket(settings, server)


def open_db(tmp_path: Any, settings: bottomless.Settings, name: str) -> tuple[str, Any]:
    """A new replicated database with an empty table ``t`` (commit 1)."""
    path = str(tmp_path / name)
    db = bottomless.connect(path, settings)
    db.execute("CREATE TABLE t(x)")
    replicator(path).wait_snapshot(60)
    return path, db


def commit_values(db: Any, path: str, values: range | list[int], history: History) -> None:
    """One single-row commit per value; record each commit's number and the table after it."""
    for value in values:
        before = bottomless.status(db)["last_replicated_commit"]
        db.execute("INSERT INTO t VALUES(?)", (value,))
        seq = bottomless.status(db)["last_replicated_commit"]
        assert seq == before + 1, "one INSERT must be exactly one replicated commit"
        history[seq] = db.execute("SELECT * FROM t ORDER BY 1").fetchall()
        replicator(path).wait_snapshot(60)  # the snapshot it may have started is in the bucket


def snapshots_in(objects: dict[str, bytes]) -> list[int]:
    """The snapshot numbers among raw object keys."""
    return sorted(int(k.rsplit("/", 1)[1]) for k in objects if "/snapshots/" in k)


def generation_of(settings: bottomless.Settings, db_name: str) -> dict[str, Any]:
    """The only generation of ``db_name``, as ``ls DB --json`` shows it."""
    gens = cli_json(settings, "ls", db_name)
    assert len(gens) == 1, gens
    info: dict[str, Any] = gens[0]
    return info


def commit_times(settings: bottomless.Settings, db_name: str, generation: str) -> dict[int, float]:
    """Commit number to creation time (epoch seconds), from ``ls DB --generation G --json``."""
    listed = cli_json(settings, "ls", db_name, "--generation", generation)
    return {c["seq"]: dt.datetime.fromisoformat(c["time"]).timestamp() for c in listed}


# ------------------------------------------------------------------ point-in-time restore


def test_restore_to_a_middle_commit(
    tmp_path: Any, cli_backend: str, make_settings: MakeSettings
) -> None:
    settings = make_settings(cli_backend, snapshot_interval_commits=4)
    path, db = open_db(tmp_path, settings, "pitr.db")
    history: History = {1: []}
    commit_values(db, path, range(100, 114), history)  # commits 2..15
    generation = bottomless.status(db)["generation"]
    db.close()
    assert sorted(history) == list(range(1, 16))
    assert generation_of(settings, "pitr.db")["snapshots"] == [0, 4, 8, 12]
    # between two snapshots, exactly on one, and after the newest one
    check_commits(settings, tmp_path, "pitr.db", history, [6, 8, 13, None], generation)


def test_restore_by_timestamp_and_out_of_range_targets(
    tmp_path: Any, cli_backend: str, make_settings: MakeSettings
) -> None:
    settings = make_settings(cli_backend, snapshot_interval_commits=3)
    path, db = open_db(tmp_path, settings, "when.db")
    history: History = {1: []}
    commit_values(db, path, [1, 2, 3, 4], history)  # commits 2..5
    time.sleep(0.05)
    between = dt.datetime.now(dt.UTC)
    time.sleep(0.05)
    commit_values(db, path, [5, 6, 7], history)  # commits 6..8
    db.close()
    for text in (between.isoformat(), between.strftime("%Y-%m-%dT%H:%M:%S.%fZ")):
        out, stdout = restore_to(settings, tmp_path, "when.db", "--timestamp", text)
        assert " commit 5 " in stdout, stdout
        assert integrity(out) == "ok" and rows(out) == history[5]

    too_early = str(tmp_path / "early.db")
    message = fails(run_cli(settings, "restore", "when.db", "-o", too_early,
                            "--timestamp", "2001-01-01T00:00:00Z"))
    assert "earliest restorable point" in message
    assert not os.path.exists(too_early)

    too_far = str(tmp_path / "far.db")
    message = fails(run_cli(settings, "restore", "when.db", "-o", too_far, "--commit", "9999"))
    assert "commit 9999" in message and "restorable commits are 0..8" in message
    assert not os.path.exists(too_far)


def test_restore_refuses_to_overwrite_without_force(
    tmp_path: Any, cli_backend: str, make_settings: MakeSettings
) -> None:
    settings = make_settings(cli_backend)
    _, db = open_db(tmp_path, settings, "keep.db")
    db.execute("INSERT INTO t VALUES('replicated')")
    db.close()
    out = tmp_path / "existing.db"
    other = apsw.Connection(str(out))
    other.execute("CREATE TABLE precious(y); INSERT INTO precious VALUES('mine')")
    other.close()
    before = out.read_bytes()
    message = fails(run_cli(settings, "restore", "keep.db", "-o", str(out)))
    assert "--force" in message
    assert out.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == sorted(
        n for n in os.listdir(tmp_path) if "bottomless-restore" not in n
    ), "a failed restore left a temporary file behind"
    ok(run_cli(settings, "restore", "keep.db", "-o", str(out), "--force"))
    assert integrity(str(out)) == "ok" and rows(str(out)) == [("replicated",)]


# ------------------------------------------------------------------ listing


def test_ls_json_at_every_level(
    tmp_path: Any, cli_backend: str, make_settings: MakeSettings
) -> None:
    settings = make_settings(cli_backend, snapshot_interval_commits=4)
    path, db = open_db(tmp_path, settings, "app.db")
    history: History = {1: []}
    commit_values(db, path, range(5), history)  # commits 2..6
    generation = bottomless.status(db)["generation"]
    db.close()
    _, other = open_db(tmp_path, settings, "other.db")
    other.close()

    assert sorted(d["db_name"] for d in cli_json(settings, "ls")) == ["app.db", "other.db"]

    info = generation_of(settings, "app.db")
    assert info["generation"] == generation and info["complete"] is True
    assert info["commits"] == 6 and (info["first_commit"], info["last_commit"]) == (1, 6)
    assert info["snapshots"] == [0, 4] and info["snapshot_bytes"] > 0
    assert info["started"] is not None and info["last_commit_time"] >= info["first_commit_time"]

    commits = cli_json(settings, "ls", "app.db", "--generation", generation)
    assert [c["seq"] for c in commits] == [1, 2, 3, 4, 5, 6]
    times = [dt.datetime.fromisoformat(c["time"]) for c in commits]
    assert times == sorted(times)
    assert all(c["pages"] >= 1 and c["bytes"] > 0 and c["db_pages"] >= 1 for c in commits)
    assert commits[-1]["time"] == info["last_commit_time"]


# ------------------------------------------------------------------ verify


def test_verify_names_a_corrupted_commit(
    request: pytest.FixtureRequest, tmp_path: Any, cli_backend: str,
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(cli_backend, snapshot_interval_commits=4)
    path, db = open_db(tmp_path, settings, "check.db")
    history: History = {1: []}
    commit_values(db, path, range(6), history)  # commits 2..7
    generation = bottomless.status(db)["generation"]
    db.close()

    healthy = run_cli(settings, "verify", "check.db")
    stdout = ok(healthy)
    assert stdout.strip().splitlines()[-1] == "OK"
    assert f"restore of generation {generation} commit 7 took" in stdout
    assert "(RTO); integrity_check: ok" in stdout

    # commit 2 lies before the newest snapshot: a restore of the newest state does not read
    # it, only a full verification notices
    raw = raw_bucket(request, settings)
    objects = raw.objects()
    key = key_of("check.db", generation, "commits", 2)
    assert key in objects and "/commits/" in key
    damaged = bytearray(objects[key])
    damaged[len(damaged) // 2] ^= 0xFF
    raw.overwrite(key, bytes(damaged))
    assert raw.objects()[key] == bytes(damaged)

    broken = run_cli(settings, "verify", "check.db")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert key in broken.stdout and "FAILED" in broken.stdout
    as_json = run_cli(settings, "verify", "check.db", "--json")
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["ok"] is False
    assert any(key in problem for problem in report["problems"]), report["problems"]


# ------------------------------------------------------------------ gc


def test_gc_keeps_every_point_inside_retention(
    request: pytest.FixtureRequest, tmp_path: Any, cli_backend: str,
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(cli_backend, snapshot_interval_commits=4)
    path, db = open_db(tmp_path, settings, "old.db")
    history: History = {1: []}
    commit_values(db, path, range(9), history)  # commits 2..10, snapshots 4 and 8
    time.sleep(1.0)  # a pause between commits 10 and 11 for the window to start in
    commit_values(db, path, range(100, 107), history)  # commits 11..17, snapshots 12 and 16
    generation = bottomless.status(db)["generation"]
    db.close()
    raw = raw_bucket(request, settings)
    times = commit_times(settings, "old.db", generation)
    assert sorted(times) == list(range(1, 18))

    before = raw.objects()
    assert snapshots_in(before) == [0, 4, 8, 12, 16]
    # with the newest commit outside a 1 s window, gc would snapshot it and drop the rest
    time.sleep(max(0.0, times[17] + 1.2 - time.time()))
    dry = cli_json(settings, "gc", "old.db", "--older-than", "1s", "--dry-run")
    assert raw.objects() == before, "a dry run changed the bucket"
    assert dry["dry_run"] is True and dry["deleted"] and dry["snapshot_built"] == 17
    assert set(dry["deleted"]) <= set(before)
    assert key_of("old.db", generation, "commits", 1) in dry["deleted"]
    assert key_of("old.db", generation, "snapshots", 16) in dry["deleted"]

    # the window starts inside the pause, 0.2 s after commit 10: gc runs in-process as at
    # that moment (a gc process, timed to start it there, has to fit in the pause, which a
    # loaded machine does not promise)
    store = bottomless.open_store(settings)
    try:
        report = retention.collect_garbage(store, "old.db", older_than=dt.timedelta(seconds=60),
                                           now=times[10] + 0.2 + 60)
    finally:
        store.close()
    assert report.dry_run is False and report.kept_generations == [generation]
    # no snapshot stood at the window's start (commit 10): gc built one there
    assert report.snapshot_built == 10
    after = raw.objects()
    assert len(after) < len(before) and report.deleted
    assert not set(report.deleted) & set(after)
    built = key_of("old.db", generation, "snapshots", 10)
    assert {k for k in set(after) - set(before) if "/parts/" not in k} == {built}
    assert snapshots_in(after) == [10, 12, 16]

    # the state at the window's start (commit 10) and every commit inside it
    check_commits(settings, tmp_path, "old.db", history, [*range(10, 18), None], generation)
    assert ok(run_cli(settings, "verify", "old.db")).strip().splitlines()[-1] == "OK"

    # --keep 1 with a short retention: the newest snapshot (16) stays restorable
    kept = cli_json(settings, "gc", "old.db", "--older-than", "1s", "--keep", "1")
    assert kept["deleted"]
    assert snapshots_in(raw.objects()) == [16]
    check_commits(settings, tmp_path, "old.db", history, [16, 17, None], generation)
    gone = fails(run_cli(settings, "restore", "old.db", "-o", str(tmp_path / "gone.db"),
                         "--commit", "15"))
    assert "restorable commits are 16..17" in gone


def test_restore_by_timestamp_after_gc(
    tmp_path: Any, cli_backend: str, make_settings: MakeSettings
) -> None:
    settings = make_settings(cli_backend, snapshot_interval_commits=4)
    path, db = open_db(tmp_path, settings, "ts.db")
    history: History = {1: []}
    commit_values(db, path, range(5), history)  # commits 2..6, snapshot 4
    db.close()
    time.sleep(1.1)
    report = cli_json(settings, "gc", "ts.db", "--older-than", "1s")
    assert report["deleted"]
    now = dt.datetime.now(dt.UTC).isoformat()
    out, stdout = restore_to(settings, tmp_path, "ts.db", "--timestamp", now)
    assert " commit 6 " in stdout and rows(out) == history[6]


def test_gc_older_than_zero_is_the_shortest_retention(
    tmp_path: Any, cli_backend: str, make_settings: MakeSettings
) -> None:
    settings = make_settings(cli_backend, snapshot_interval_commits=4)
    path, db = open_db(tmp_path, settings, "zero.db")
    history: History = {1: []}
    commit_values(db, path, range(5), history)  # commits 2..6, snapshot 4
    generation = bottomless.status(db)["generation"]
    db.close()
    report = cli_json(settings, "gc", "zero.db", "--older-than", "0s", "--dry-run")
    assert key_of("zero.db", generation, "commits", 1) in report["deleted"]


# ------------------------------------------------------------------ shell


def test_shell_commits_are_replicated(
    tmp_path: Any, cli_backend: str, make_settings: MakeSettings
) -> None:
    settings = make_settings(cli_backend)
    path, db = open_db(tmp_path, settings, "sh.db")
    db.execute("INSERT INTO t VALUES(1)")
    db.close()
    session = run_cli(settings, "shell", path,
                      stdin="insert into t values(42);\nselect count(*) from t;\n.exit\n")
    assert "2" in ok(session).split()
    out, _ = restore_to(settings, tmp_path, "sh.db")
    assert integrity(out) == "ok" and rows(out) == [(1,), (42,)]
    # a missing local file is restored before the shell opens it
    remove_db(path)
    again = run_cli(settings, "shell", path, stdin="select x from t order by x;\n.exit\n")
    assert ok(again).split() == ["1", "42"]
    assert rows(path) == [(1,), (42,)]


def test_shell_runs_the_sqlite3_shell_arguments_after_a_double_dash(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    settings = make_settings("file")
    path, db = open_db(tmp_path, settings, "args.db")
    db.close()
    session = run_cli(settings, "shell", path, "--", "-csv", "insert into t values(7)",
                      "select x, x * 2 as twice from t", "-header")  # options anywhere
    assert ok(session).split() == ["x,twice", "7,14"]  # run in turn, no interactive loop
    out, _ = restore_to(settings, tmp_path, "args.db")
    assert rows(out) == [(7,)]
    failed = run_cli(settings, "shell", path, "--", "select nope from t", "select 1")
    assert failed.returncode == 1 and "no such column: nope" in failed.stderr
    assert "Traceback" not in failed.stderr and failed.stdout.strip() == ""  # stops there
    init = tmp_path / "init.sql"
    init.write_text("select nope;\n")  # as sqlite3: said, and the run goes on
    with_init = run_cli(settings, "shell", path, "--", "-init", str(init), "select 5")
    assert with_init.returncode == 0 and with_init.stdout.split() == ["5"]
    assert "no such column: nope" in with_init.stderr and "Traceback" not in with_init.stderr
    bailing = run_cli(settings, "shell", path, "--", "-bail", "select nope from t", "select 1")
    assert bailing.returncode == 1 and "no such column: nope" in bailing.stderr
    assert "Traceback" not in bailing.stderr and bailing.stdout.strip() == ""
    unknown = run_cli(settings, "shell", path, "--", "-nosuchoption")
    assert unknown.returncode == 1
    assert unknown.stderr.strip().splitlines() == ["Error: Unrecognized argument 'nosuchoption'"]


def test_shell_on_a_file_it_cannot_open_says_so_in_one_line(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    settings = make_settings("file")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(10_000))
    for path, reason in ((str(garbage), "file is not a database"),
                         (str(tmp_path / "missing" / "x.db"), "unable to open database file")):
        session = run_cli(settings, "shell", path, stdin="select 1;\n")
        assert session.returncode == 1
        lines = session.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: cannot open {path}: {reason}")


def test_verify_reports_a_commit_deleted_while_it_runs(tmp_path: Any,
                                                       make_settings: MakeSettings) -> None:
    """A commit listed and then deleted (a gc at the same time) is reported, not a crash."""
    from helpers import ForwardingStore

    from bottomless.backends.registry import open_store
    from bottomless.errors import ObjectNotFoundError
    from bottomless.ops.catalog import verify

    settings = make_settings("file", snapshot_interval_commits=0)
    path, db = open_db(tmp_path, settings, "race.db")
    commit_values(db, path, range(4), {1: []})
    generation = bottomless.status(db)["generation"]
    db.close()
    gone = key_of("race.db", generation, "commits", 3)

    class Racing(ForwardingStore):
        def get(self, key: str) -> bytes:
            if key == gone:
                raise ObjectNotFoundError(f"{key} not found")
            return self.inner.get(key)

    store = open_store(settings)
    try:
        report = verify(Racing(store), "race.db")
    finally:
        store.close()
    assert any(gone in problem and "missing" in problem for problem in report.problems), (
        report.problems)


def test_ls_never_cuts_ids(tmp_path: Any, make_settings: MakeSettings) -> None:
    """In a pipe ``ls`` prints whole lines; on a narrow terminal ids still come out whole."""
    import io

    from rich.console import Console

    from bottomless.cli import _table

    settings = make_settings("file")
    path, db = open_db(tmp_path, settings, "ids.db")
    commit_values(db, path, range(2), {1: []})
    generation = bottomless.status(db)["generation"]
    db.close()
    piped = run_cli(settings, "ls", "ids.db")
    assert piped.returncode == 0, piped.stderr
    assert generation in piped.stdout.split()
    listed = run_cli(settings, "ls", "ids.db", "--generation", generation)
    assert "\t" in listed.stdout and "…" not in listed.stdout

    screen = io.StringIO()
    rows = [{"generation": generation, "started": "2026-12-06T20:00:00",
             "note": "a long column that may wrap as much as it likes " * 2}]
    _table("generations", rows, Console(file=screen, width=40, force_terminal=False))
    text = screen.getvalue()
    assert generation in text and "…" not in text, text

"""Failover: a read replica is promoted to writer with nothing acknowledged lost, and the old
writer, if it comes back, is fenced.

The writer is a real child process (tests/failover_writer.py) in sync mode with a short lease;
it is SIGKILLed, or SIGSTOPped past its lease and then continued.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import apsw
import pytest
from helpers import replicator, wait_for
from test_crash import child_env

import bottomless

HERE = os.path.dirname(os.path.abspath(__file__))
MakeSettings = Callable[..., bottomless.Settings]
TTL = 2.0


def start_writer(path: str, settings: bottomless.Settings,
                 **extra: str) -> subprocess.Popen[bytes]:
    child = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "failover_writer.py"), path],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(settings, **extra),
        bufsize=0,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line.startswith(b"open"), child.stderr.read() if child.stderr else line
    return child


def acknowledged(lines: list[str]) -> int:
    done = [int(line.split()[1]) for line in lines if line.startswith("done ")]
    return max(done, default=0)


def read_lines(child: subprocess.Popen[bytes], until: float) -> list[str]:
    """What the child printed until it printed ``done`` lines up to ``until`` seconds from now."""
    assert child.stdout is not None
    os.set_blocking(child.stdout.fileno(), False)
    found: list[str] = []
    end = time.monotonic() + until
    while time.monotonic() < end:
        chunk = child.stdout.read()
        if chunk:
            found.extend(chunk.decode().splitlines())
        time.sleep(0.05)
    return found


def check_bank(path: str) -> int:
    db = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        total = db.execute("SELECT sum(balance) FROM accounts").fetchall()[0][0]
        assert total == 1000
        (n,) = db.execute("SELECT n FROM counter").fetchall()[0]
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return int(n)
    finally:
        db.close()


@pytest.fixture(params=["file", "s3"])
def failover_settings(request: pytest.FixtureRequest, make_settings: MakeSettings
                      ) -> bottomless.Settings:
    if request.param == "s3":
        request.node.add_marker(pytest.mark.s3)
    return make_settings(request.param, db_name="bank", lease_ttl=TTL)


def writer_and_replica(
    tmp_path: Any, settings: bottomless.Settings
) -> tuple[subprocess.Popen[bytes], bottomless.Replica]:
    """A running writer process and a (not yet started) replica of its database."""
    writer = start_writer(str(tmp_path / "writer.db"), settings)
    return writer, bottomless.Replica(str(tmp_path / "replica.db"), settings, poll_interval=0.1)


def test_a_killed_writer_is_replaced_by_its_promoted_replica_with_nothing_lost(
    tmp_path: Any, failover_settings: bottomless.Settings
) -> None:
    settings = failover_settings
    writer, replica = writer_and_replica(tmp_path, settings)
    try:
        lines = read_lines(writer, 1.5)
        replica.start()
        lines += read_lines(writer, 1.0)
    finally:
        writer.send_signal(signal.SIGKILL)
        out, _ = writer.communicate(timeout=30)
    lines += out.decode().splitlines()
    promised = acknowledged(lines)
    assert promised > 5, lines[-5:]
    started = time.monotonic()
    promotion = replica.promote(timeout=TTL + 30)
    took = time.monotonic() - started
    assert promotion.seq >= promised and took < TTL + 30
    assert check_bank(replica.path) >= promised  # every acknowledged transfer is there

    db = bottomless.connect(replica.path, settings)  # the same lineage, at the next commit
    try:
        assert bottomless.status(db)["generation"] == promotion.generation
        db.execute("UPDATE counter SET n = n + 1")
        assert bottomless.status(db)["last_replicated_commit"] == promotion.seq + 1
    finally:
        db.close()
    copy = str(tmp_path / "copy.db")
    bottomless.restore(copy, settings)
    assert check_bank(copy) == check_bank(replica.path)


def test_a_paused_writer_that_wakes_after_promotion_is_refused(
    tmp_path: Any, failover_settings: bottomless.Settings
) -> None:
    settings = failover_settings
    writer, replica = writer_and_replica(tmp_path, settings)
    try:
        replica.start()
        lines = read_lines(writer, 1.0)
        writer.send_signal(signal.SIGSTOP)
        promotion = replica.promote(timeout=TTL + 30)
        db = bottomless.connect(replica.path, settings)
        db.execute("UPDATE counter SET n = n + 1000")  # the new writer's first commit
        db.close()
        writer.send_signal(signal.SIGCONT)
        out, _ = writer.communicate(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.communicate()
    lines += out.decode().splitlines()
    refused = [line for line in lines if line.startswith("refused")]
    assert writer.returncode == 3 and refused, lines[-5:]
    # refused by its lost lease, or, if it was paused between its lease check and its upload,
    # by the position the new writer's commit already holds (create-only)
    fenced_by = ("lease", "written by another writer")
    assert any(reason in refused[0] for reason in fenced_by), refused
    assert "refused" in refused[0].split(" ", 2)[2], refused
    assert acknowledged(lines) <= promotion.seq  # nothing acknowledged after the promotion
    copy = str(tmp_path / "copy.db")
    bottomless.restore(copy, settings)
    assert check_bank(copy) == check_bank(replica.path)


def test_promotion_needs_a_lease(tmp_path: Any, make_settings: MakeSettings) -> None:
    settings = make_settings("file", lease_ttl=0)
    db = bottomless.connect(str(tmp_path / "w.db"), settings)
    db.execute("CREATE TABLE t(x)")
    db.close()
    replica = bottomless.Replica(str(tmp_path / "r.db"), settings, db_name="w.db")
    with pytest.raises(bottomless.ConfigError, match="lease_ttl"):
        replica.promote()


def test_a_replica_promotes_after_gc_folded_the_last_commits_into_a_snapshot(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    """gc deletes the commits a snapshot it builds stands for, the newest one included: the
    bucket's newest point is then that snapshot, not a commit object."""
    import datetime as dt

    settings = make_settings("file", lease_ttl=2, db_name="w.db")
    db = bottomless.connect(str(tmp_path / "w.db"), settings)
    db.execute("CREATE TABLE t(x)")
    for i in range(3):
        db.execute("INSERT INTO t VALUES(?)", (i,))
    generation = bottomless.status(db)["generation"]
    db.close()
    report = bottomless.gc("w.db", settings, older_than=dt.timedelta(0))
    assert report.snapshot_built == 4 and report.deleted
    replica = bottomless.Replica(str(tmp_path / "r.db"), settings)
    promoted = replica.promote(timeout=20)
    assert promoted.seq == 5  # the snapshot's 4, then the promotion's fence
    db = bottomless.connect(str(tmp_path / "r.db"), settings)
    db.execute("INSERT INTO t VALUES(3)")
    assert db.execute("SELECT x FROM t ORDER BY x").fetchall() == [(0,), (1,), (2,), (3,)]
    assert bottomless.status(db)["generation"] == generation  # the lineage continues
    db.close()


def test_a_running_replica_behind_gc_promotes_without_waiting_for_its_next_check(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    """The follower looks for commits gc deleted only now and then; a promotion waiting for
    the bucket's newest point makes it look at once."""
    import datetime as dt

    settings = make_settings("file", lease_ttl=1)
    db = bottomless.connect(str(tmp_path / "w.db"), settings)
    db.execute("CREATE TABLE t(x)")
    replica = bottomless.Replica(str(tmp_path / "r.db"), settings, db_name="w.db",
                                 poll_interval=0.05, generation_check_interval=0.05)
    replica.start()
    replica.wait_for(bottomless.position(db), timeout=10)
    time.sleep(0.3)  # past its first checks, which include the one for deleted commits
    replica.generation_check_interval = 3600
    replica._feed.fetch = lambda generation, first: []  # type: ignore[union-attr]  # behind
    for i in range(3):
        db.execute("INSERT INTO t VALUES(?)", (i,))
    db.close()
    assert bottomless.gc("w.db", settings, older_than=dt.timedelta(0)).snapshot_built == 4
    assert replica.promote(timeout=10).seq == 5  # the snapshot's 4, then the fence


def test_a_replica_of_a_database_not_written_yet_promotes_onto_the_same_generation(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    settings = make_settings("file", lease_ttl=1, db_name="w.db")
    db = bottomless.connect(str(tmp_path / "w.db"), settings)
    db.execute("SELECT 1").fetchall()
    generation = bottomless.status(db)["generation"]
    db.close()
    replica = bottomless.Replica(str(tmp_path / "r.db"), settings)
    assert replica.promote(timeout=10).seq == 0
    db = bottomless.connect(str(tmp_path / "r.db"), settings)
    db.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
    assert bottomless.status(db)["generation"] == generation  # continued, not started anew
    db.close()


def test_a_failed_promotion_leaves_no_follower_behind(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    """The lease is still the live writer's: promotion fails, and the follower it started
    stops, so that the next attempt (here with force) is not refused as a second one."""
    settings = make_settings("file", lease_ttl=6)  # force follows the live writer for 3 s
    db = bottomless.connect(str(tmp_path / "w.db"), settings)
    db.execute("CREATE TABLE t(x)")
    path = str(tmp_path / "r.db")
    with pytest.raises(bottomless.ReplicaConflictError, match="lease"):
        bottomless.Replica(path, settings, db_name="w.db").promote(timeout=1)
    assert bottomless.Replica(path, settings, db_name="w.db").promote(force=True).seq == 2
    db.close()


def test_the_promote_command_takes_over_at_once_with_force(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    """`bottomless promote --force` takes the lease from a live writer (a human decided it is
    gone). That writer learns it at its next renewal (every third of the TTL) and its commits
    are refused from then on; the promoted file continues the history."""
    settings = make_settings("file", db_name="bank", lease_ttl=TTL)
    old = bottomless.connect(str(tmp_path / "old.db"), settings)
    old.execute("CREATE TABLE t(x)")
    old.execute("INSERT INTO t VALUES(1)")
    command = [sys.executable, "-m", "bottomless", "promote", "bank", str(tmp_path / "new.db"),
               "--force", "--timeout", "20"]
    done = subprocess.run(command, env=child_env(settings), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert '"seq": 3' in done.stdout  # the table, the row, then the promotion's fence
    # the old writer's next renewal finds the lease taken (however late its thread wakes)
    wait_for(lambda: replicator(str(tmp_path / "old.db")).lease.lost is not None, timeout=30)
    with pytest.raises(apsw.IOError):
        old.execute("INSERT INTO t VALUES(2)")
    assert "lost its lease" in str(bottomless.status(old)["last_error"])
    old.close()
    new = bottomless.connect(str(tmp_path / "new.db"), settings)
    new.execute("INSERT INTO t VALUES(3)")
    assert new.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (3,)]
    new.close()


def test_the_old_writer_is_fenced_by_the_promotions_own_commit(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    """Promotion puts a commit of its own (changing nothing) at the next position, so that
    the old writer stays fenced once the lease has expired again, before the promoted app
    commits anything: restarted on its old file, it is refused at open, and the promoted
    file opens and continues (without the fence, the old writer took over again)."""
    ttl = 1.0
    settings = make_settings("file", lease_ttl=ttl, db_name="w.db")
    old_path = str(tmp_path / "old.db")
    old = bottomless.connect(old_path, settings)
    old.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
    old.close()  # the lease is released: promotion takes it at once
    promotion = bottomless.Replica(str(tmp_path / "new.db"), settings).promote(timeout=20)
    assert promotion.seq == 3  # the table, the row, the fence
    time.sleep(ttl + 0.2)  # the new writer's lease expires before its app opens the file
    with pytest.raises(bottomless.ReplicaConflictError, match="another writer added commit 3"):
        bottomless.connect(old_path, settings)
    new = bottomless.connect(str(tmp_path / "new.db"), settings)
    new.execute("INSERT INTO t VALUES (2)")
    assert bottomless.status(new)["last_replicated_commit"] == 4
    new.close()
    copy = str(tmp_path / "copy.db")
    bottomless.restore(copy, settings)
    db = apsw.Connection(copy, flags=apsw.SQLITE_OPEN_READONLY)
    assert db.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,)]
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    db.close()


def test_a_forced_promotion_outlasts_a_busy_live_writer(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    """The writer keeps committing until its next renewal finds the lease taken: promotion
    catches up until then instead of giving up after a few rounds (which left no writer at
    all), and every commit the old writer's app saw succeed is in the promoted file."""
    settings = make_settings("file", db_name="bank", lease_ttl=6.0)
    writer = start_writer(str(tmp_path / "writer.db"), settings, FAILOVER_PAUSE="0")
    replica = bottomless.Replica(str(tmp_path / "replica.db"), settings, poll_interval=0.05)
    try:
        replica.start()
        lines = read_lines(writer, 0.5)
        promotion = replica.promote(force=True, timeout=30)
        out, _ = writer.communicate(timeout=60)  # refused once it learns, then it exits
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.communicate()
    lines += out.decode().splitlines()
    assert writer.returncode == 3, lines[-5:]
    assert acknowledged(lines) < promotion.seq  # the fence comes after all of them
    assert check_bank(replica.path) >= acknowledged(lines)
    db = bottomless.connect(replica.path, settings)
    db.execute("UPDATE counter SET n = n + 1")
    db.close()


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_the_fence_changes_nothing_in_the_restored_file(
    tmp_path: Any, make_settings: MakeSettings, journal_mode: str
) -> None:
    """Not even the journal mode in page 1, which the replica's file always says is WAL."""
    settings = make_settings("file", lease_ttl=2.0, db_name="w.db")
    db = bottomless.connect(str(tmp_path / "w.db"), settings)
    db.execute(f"PRAGMA journal_mode={journal_mode}")
    db.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
    db.close()
    promotion = bottomless.Replica(str(tmp_path / "new.db"), settings).promote(timeout=30)
    at_point, at_fence = str(tmp_path / "point.db"), str(tmp_path / "fence.db")
    bottomless.restore(at_point, settings, commit=promotion.seq - 1)
    bottomless.restore(at_fence, settings, commit=promotion.seq)
    with open(at_point, "rb") as point, open(at_fence, "rb") as fence:
        assert point.read() == fence.read()


def test_a_replica_whose_promotion_failed_can_promote_again(
    tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same Replica object, after a promotion that failed once its follower had stopped
    (its fence met the old writer's late commit): it starts the follower again."""
    import bottomless.replica.promote as promoting

    settings = make_settings("file", lease_ttl=2)
    db = bottomless.connect(str(tmp_path / "w.db"), settings)
    db.execute("CREATE TABLE t(x)")
    db.close()
    real = promoting._fence
    calls: list[int] = []

    def late_commit_first(*args: Any) -> tuple[int, str]:
        calls.append(1)
        if len(calls) == 1:
            raise bottomless.ReplicaConflictError("the old writer uploaded a commit: again")
        return real(*args)

    monkeypatch.setattr(promoting, "_fence", late_commit_first)
    replica = bottomless.Replica(str(tmp_path / "r.db"), settings, db_name="w.db")
    replica.start()
    with pytest.raises(bottomless.ReplicaConflictError, match="again"):
        replica.promote(timeout=10)
    replica.start()  # stopped by the promotion: it starts again (it said "already started")
    assert replica.promote(timeout=10).seq == 2

"""Asynchronous durability: COMMIT at local speed, bounded lag, flush on close and exit."""

from __future__ import annotations

import logging
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from helpers import (
    abandon,
    commits_are_refused_while_nothing_ships,
    integrity,
    plant_commit,
    remove_db,
    replicator,
    rows,
    stop_uploader,
)

import bottomless
from bottomless.ops.targets import commit_numbers, resolve_target

MakeSettings = Callable[..., bottomless.Settings]


def hold_upload_lock(rep: Any) -> Any:
    """Take the spool's upload lock (retrying while the uploader holds it)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lock = rep.spool.upload_lock()
        if lock.__enter__():
            return lock
        lock.__exit__(None, None, None)
        time.sleep(0.01)
    raise AssertionError("could not take the upload lock")


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_async_round_trip_and_wait_durable(tmp_path: Any, backend: str,
                                           make_settings: MakeSettings, mode: str) -> None:
    settings = make_settings(backend, durability="async", max_lag=2)
    path = str(tmp_path / "a.db")
    db = bottomless.connect(path, settings)
    db.execute(f"PRAGMA journal_mode={mode}")
    db.execute("CREATE TABLE t(x)")
    for i in range(300):
        db.execute("INSERT INTO t VALUES(?)", (i,))
    bottomless.wait_durable(db, timeout=30)
    status = bottomless.status(db)
    assert status["durability"] == "async" and status["pending_commits"] == 0
    # consecutive commits share objects: far fewer commit objects than transactions
    store = replicator(path).store
    assert len(commit_numbers(store, "a.db", status["generation"])) < 301
    copy = str(tmp_path / "copy.db")
    bottomless.restore(copy, settings, db_name="a.db")
    assert integrity(copy) == "ok" and rows(copy) == [(i,) for i in range(300)]
    db.close()


def test_wait_durable_really_waits(tmp_path: Any, make_settings: MakeSettings) -> None:
    settings = make_settings("file", durability="async", max_lag=30)
    path = str(tmp_path / "w.db")
    db = bottomless.connect(path, settings)
    db.execute("CREATE TABLE t(x)")
    rep = replicator(path)
    bottomless.wait_durable(db, timeout=30)
    stop_uploader(path)  # nobody uploads any more
    lock = hold_upload_lock(rep)  # wait_durable cannot drain either
    try:
        db.execute("INSERT INTO t VALUES(1)")
        assert bottomless.status(db)["pending_commits"] == 1
        started = time.monotonic()
        with pytest.raises(bottomless.DurabilityTimeoutError, match="1 commit"):
            bottomless.wait_durable(db, timeout=0.5)
        assert time.monotonic() - started >= 0.5
        assert resolve_target(rep.store, "w.db").seq == 1  # the insert is not in the bucket
    finally:
        lock.__exit__(None, None, None)
    bottomless.wait_durable(db, timeout=30)
    assert resolve_target(rep.store, "w.db").seq == 2
    db.close()


def test_close_flushes(tmp_path: Any, make_settings: MakeSettings) -> None:
    settings = make_settings("file", durability="async", max_lag=60)
    path = str(tmp_path / "c.db")
    db = bottomless.connect(path, settings)
    db.execute("CREATE TABLE t(x)")
    for i in range(50):
        db.execute("INSERT INTO t VALUES(?)", (i,))
    db.close()
    copy = str(tmp_path / "copy.db")
    bottomless.restore(copy, settings, db_name="c.db")
    assert len(rows(copy)) == 50


_EXITING = """
import sys, bottomless
settings = bottomless.Settings(backend="file", bucket=sys.argv[2], durability="async",
                               max_lag=60)
db = bottomless.connect(sys.argv[1], settings)
db.execute("CREATE TABLE t(x)")
for i in range(40):
    db.execute("INSERT INTO t VALUES(?)", (i,))
# no close: a clean interpreter exit must still flush
"""


def test_clean_exit_flushes(tmp_path: Any) -> None:
    bucket = str(tmp_path / "replicas")
    path = str(tmp_path / "exit.db")
    script = tmp_path / "exiting.py"
    script.write_text(_EXITING)
    result = subprocess.run([sys.executable, str(script), path, bucket], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    copy = str(tmp_path / "copy.db")
    bottomless.restore(copy, bottomless.Settings(backend="file", bucket=bucket), db_name="exit.db")
    assert len(rows(copy)) == 40


def spooled_then_abandoned(tmp_path: Any, make_settings: MakeSettings, name: str,
                           count: int) -> tuple[bottomless.Settings, str]:
    """An async database with rows ``0..count-1`` in ``t`` committed and spooled, never
    uploaded, left as a killed process leaves it."""
    settings = make_settings("file", durability="async", max_lag=60)
    path = str(tmp_path / name)
    db = bottomless.connect(path, settings)
    db.execute("CREATE TABLE t(x)")
    bottomless.wait_durable(db, 30)
    stop_uploader(path)
    for i in range(count):
        db.execute("INSERT INTO t VALUES(?)", (i,))
    assert bottomless.status(db)["pending_commits"] == count
    abandon(db, path)  # as if the process died here: the spool stays on disk
    assert os.path.exists(path + "-bottomless-queue")
    return settings, path


def test_spool_survives_a_crash_and_is_shipped_on_reopen(tmp_path: Any,
                                                         make_settings: MakeSettings) -> None:
    settings, path = spooled_then_abandoned(tmp_path, make_settings, "s.db", 25)
    torn = path + "-bottomless-queue.intent.4242.tmp"  # a process killed writing an intent
    with open(torn, "wb") as stream:
        stream.write(b"BTLI")
    db = bottomless.connect(path, settings)  # reopening ships the spool first
    assert not os.path.exists(torn)
    generation = bottomless.status(db)["generation"]
    db.close()
    copy = str(tmp_path / "copy.db")
    result = bottomless.restore(copy, settings, db_name="s.db")
    assert result.generation == generation, "the spool should continue the lineage"
    assert rows(copy) == [(i,) for i in range(25)]


@pytest.mark.parametrize("damage", ["record", "header", "magic"])
def test_a_damaged_spool_is_set_aside_and_the_local_file_replicated(
        tmp_path: Any, make_settings: MakeSettings, caplog: pytest.LogCaptureFixture,
        damage: str) -> None:
    """Entries are spooled once committed locally, so the local file holds what a damaged
    spool did: the open says what it found and goes on from the file, losing nothing."""
    settings, path = spooled_then_abandoned(tmp_path, make_settings, "d.db", 5)
    queue = path + "-bottomless-queue"
    with open(queue, "r+b") as stream:
        if damage == "record":  # a flipped byte in the first record's pages
            stream.seek(64 + 24 + 100)
            stream.write(b"\xff")
        elif damage == "header":  # the head names the middle of a record, as a torn
            stream.seek(8)        # compaction left it
            stream.write(struct.pack("<Q", 64 + 7))
        else:  # not a spool header at all
            stream.write(b"XXXX")
    caplog.set_level(logging.ERROR, logger="bottomless")
    db = bottomless.connect(path, settings)
    assert os.path.exists(queue + ".damaged")
    assert any("spool is set aside" in r.getMessage() for r in caplog.records)
    db.execute("INSERT INTO t VALUES(5)")
    bottomless.wait_durable(db, 30)
    db.close()
    copy = str(tmp_path / "copy.db")
    bottomless.restore(copy, settings, db_name="d.db")
    assert rows(copy) == [(i,) for i in range(6)]


def test_back_pressure_bounds_the_lag(tmp_path: Any, make_settings: MakeSettings) -> None:
    settings = make_settings("memory", durability="async", max_lag=0.3, timeout=1,
                             max_retries=0)
    path = str(tmp_path / "bp.db")
    db = bottomless.connect(path, settings)
    db.execute("CREATE TABLE t(x)")
    rep = replicator(path)
    lock = hold_upload_lock(rep)  # the uploader can't ship: the lag grows
    try:
        commits_are_refused_while_nothing_ships(db)
    finally:
        lock.__exit__(None, None, None)
    assert rep.spool.flags() == 0, "a refused commit left a mark: the next would resync"
    bottomless.wait_durable(db, 30)
    generation = bottomless.status(db)["generation"]
    db.execute("INSERT INTO t VALUES(2)")
    bottomless.wait_durable(db, 30)
    assert bottomless.status(db)["generation"] == generation
    db.close()
    remove_db(path)


_SYNC_WRITER = """
import sys, bottomless
db = bottomless.connect(sys.argv[1], bottomless.Settings(backend="file", bucket=sys.argv[2]))
print("open", flush=True)
sys.stdin.readline()
db.execute("UPDATE t SET x = x + 100 WHERE x = 1")
db.execute("INSERT INTO t VALUES(50)")
db.close()
print("committed", flush=True)
"""


def test_a_sync_process_ships_what_an_async_one_spooled_first(tmp_path: Any) -> None:
    """Processes may disagree on durability (an app in async mode, a script in sync mode):
    a sync commit must not overtake commits another process spooled before it."""
    bucket = str(tmp_path / "replicas")
    settings = bottomless.Settings(backend="file", bucket=bucket, durability="async",
                                   max_lag=60)
    path = str(tmp_path / "mixed.db")
    db = bottomless.connect(path, settings)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t(x)")
    bottomless.wait_durable(db, 30)
    script = tmp_path / "sync_writer.py"
    script.write_text(_SYNC_WRITER)
    child = subprocess.Popen([sys.executable, str(script), path, bucket], text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "open"
        stop_uploader(path)  # these three stay spooled here...
        for i in range(3):
            db.execute("INSERT INTO t VALUES(?)", (i,))
        child.stdin.write("go\n")  # ...when the sync process commits on top of them
        child.stdin.flush()
        assert child.stdout.readline().strip() == "committed"
    finally:
        child.kill()
        child.wait(30)
    assert bottomless.status(db)["pending_commits"] == 0, "the sync commit shipped them"
    local = db.execute("SELECT x FROM t ORDER BY x").fetchall()
    db.close()
    assert local == [(0,), (2,), (50,), (101,)]
    copy = str(tmp_path / "copy.db")
    bottomless.restore(copy, bottomless.Settings(backend="file", bucket=bucket),
                       db_name="mixed.db")
    assert integrity(copy) == "ok" and rows(copy, "SELECT x FROM t ORDER BY x") == local


_SYNC_WRITER_KILLED = """
import os, signal, sys, bottomless
from bottomless.engine.replicator import Replicator
upload = Replicator._replicate

def upload_then_die(self, txn, image):  # killed between its upload and its local commit
    upload(self, txn, image)
    os.kill(os.getpid(), signal.SIGKILL)

Replicator._replicate = upload_then_die
db = bottomless.connect(sys.argv[1], bottomless.Settings(backend="file", bucket=sys.argv[2]))
db.execute("INSERT INTO t VALUES(50)")
"""

_SYNC_WRITER_WAITING = """
import sys, bottomless
db = bottomless.connect(sys.argv[1], bottomless.Settings(backend="file", bucket=sys.argv[2]))
print("open", flush=True)
sys.stdin.readline()
db.execute("INSERT INTO t VALUES(60)")
db.close()
print("committed", flush=True)
"""


@pytest.mark.parametrize(("settler", "mode"), [
    ("uploader", "wal"), ("uploader", "delete"), ("reopen", "wal"), ("sync_open", "wal"),
    ("sync_commit", "wal"), ("sync_commit", "delete"),
])
def test_an_orphan_of_a_killed_sync_process_is_settled_not_a_conflict(
    tmp_path: Any, settler: str, mode: str
) -> None:
    """A sync process killed between its upload and its local commit leaves an orphan at the
    next position, where the async process's next upload goes. Whoever uploads next (the
    async uploader, the next open, a sync process opening, or the commit of one already open)
    starts a new generation from the local file instead of failing with
    ReplicaConflictError."""
    bucket = str(tmp_path / "replicas")
    settings = bottomless.Settings(backend="file", bucket=bucket, durability="async",
                                   max_lag=60)
    path = str(tmp_path / "mixed.db")
    db = bottomless.connect(path, settings)
    db.execute(f"PRAGMA journal_mode={mode}")
    db.execute("CREATE TABLE t(x)")
    for i in range(3):
        db.execute("INSERT INTO t VALUES(?)", (i,))
    generation = bottomless.status(db)["generation"]
    waiting = tmp_path / "waiting.py"
    waiting.write_text(_SYNC_WRITER_WAITING)
    sync_writer = None
    if settler == "sync_commit":  # open before the orphan appears
        sync_writer = subprocess.Popen([sys.executable, str(waiting), path, bucket], text=True,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert sync_writer.stdout is not None
        assert sync_writer.stdout.readline().strip() == "open"
    try:
        killed_script = tmp_path / "killed.py"
        killed_script.write_text(_SYNC_WRITER_KILLED)
        killed = subprocess.run([sys.executable, str(killed_script), path, bucket],
                                check=False, capture_output=True, text=True, timeout=120)
        assert killed.returncode == -9, killed.stderr
        if settler != "uploader":
            stop_uploader(path)  # the next commits stay spooled
        for i in range(3, 5):
            db.execute("INSERT INTO t VALUES(?)", (i,))
        expected = [(i,) for i in range(5)]
        if settler == "uploader":
            bottomless.wait_durable(db, 30)
        elif settler == "reopen":
            abandon(db, path)
            db = bottomless.connect(path, settings)
            bottomless.wait_durable(db, 30)
        else:
            if sync_writer is None:
                sync_writer = subprocess.Popen(
                    [sys.executable, str(waiting), path, bucket], text=True,
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                )
                assert sync_writer.stdout is not None
                assert sync_writer.stdout.readline().strip() == "open"
            assert sync_writer.stdin is not None and sync_writer.stdout is not None
            sync_writer.stdin.write("go\n")
            sync_writer.stdin.flush()
            assert sync_writer.stdout.readline().strip() == "committed"
            expected.append((60,))
    finally:
        if sync_writer is not None:
            sync_writer.kill()
            sync_writer.wait(30)
    assert bottomless.status(db)["pending_commits"] == 0
    local = db.execute("SELECT x FROM t ORDER BY x").fetchall()
    db.close()
    assert local == expected, "the killed process's row never committed locally"
    copy = str(tmp_path / "copy.db")
    restored = bottomless.restore(copy, bottomless.Settings(backend="file", bucket=bucket),
                                  db_name="mixed.db")
    assert restored.generation != generation, "the orphan's generation was left behind"
    # the new generation's snapshot holds every commit, the sync commit's too when that
    # commit met the orphan (it is not uploaded again); a sync process that settled it at
    # open uploads its commit after the snapshot
    assert restored.seq == (1 if settler == "sync_open" else 0)
    assert integrity(copy) == "ok" and rows(copy, "SELECT x FROM t ORDER BY x") == local


def test_an_object_of_this_writer_not_chained_to_its_position_stops_the_uploader(
    tmp_path: Any,
) -> None:
    """The async uploader settles only a true orphan (this writer's, chained to the recorded
    position, nothing after it); an object that merely carries this writer id is refused."""
    from bottomless.errors import ReplicaConflictError
    from bottomless.local.files import read_state

    settings = bottomless.Settings(backend="file", bucket=str(tmp_path / "replicas"),
                                   durability="async", max_lag=60)
    path = str(tmp_path / "a.db")
    db = bottomless.connect(path, settings)
    db.execute("CREATE TABLE t(x)")
    bottomless.wait_durable(db, 30)
    stop_uploader(path)
    db.execute("INSERT INTO t VALUES(1)")
    rep = replicator(path)
    state = read_state(path)
    assert state is not None
    plant_commit(path, state.seq + 1, prev=bytes(32))  # this writer's id, not chained
    with pytest.raises(ReplicaConflictError, match="another writer"):
        rep.drain_once()
    assert bottomless.status(db)["generation"] == state.generation
    assert bottomless.status(db)["pending_commits"] == 1, "the commit stays spooled"
    abandon(db, path)  # its spooled commit cannot be shipped: leave without flushing


def _rewrite_in_place_then_roll_back(db: Any, how: str) -> None:
    """A transaction that spills pages to the WAL and rewrites one of its frames in place (so
    SQLite would fix checksums at its commit), rolled back whole or to a savepoint."""
    db.execute("PRAGMA cache_size=5")
    db.execute("BEGIN")
    if how == "savepoint":
        db.execute("INSERT INTO t VALUES(2)")
        db.execute("SAVEPOINT s")
    for _ in range(400):
        db.execute("INSERT INTO t VALUES(randomblob(500))")
    db.execute("UPDATE t SET x = randomblob(500) WHERE typeof(x) = 'blob'")
    if how == "savepoint":
        db.execute("ROLLBACK TO s")
        db.execute("RELEASE s")
        db.execute("COMMIT")
        return
    db.execute("ROLLBACK")
    if how == "rollback":
        db.execute("INSERT INTO t VALUES(2)")


def _wal_with_one_row(tmp_path: Any, make_settings: MakeSettings,
                      name: str) -> tuple[bottomless.Settings, str, Any]:
    settings = make_settings("file", durability="async", max_lag=5)
    path = str(tmp_path / name)
    db = bottomless.connect(path, settings)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t(x)")
    db.execute("INSERT INTO t VALUES(1)")
    return settings, path, db


@pytest.mark.parametrize("how", ["rollback", "savepoint"])
def test_a_commit_after_a_rolled_back_rewrite_in_place_is_spooled(
        tmp_path: Any, make_settings: MakeSettings, how: str) -> None:
    """The rolled-back rewrite must not make the next commit wait for a checksum fix-up that
    never comes (it was never spooled, and no restore held it)."""
    settings, path, db = _wal_with_one_row(tmp_path, make_settings, "r.db")
    bottomless.wait_durable(db, 30)
    generation = bottomless.status(db)["generation"]
    _rewrite_in_place_then_roll_back(db, how)
    bottomless.wait_durable(db, 30)
    assert replicator(path).spool.flags() == 0
    db.close()
    copy = str(tmp_path / "copy.db")
    result = bottomless.restore(copy, settings, db_name="r.db")
    assert rows(copy) == [(1,), (2,)] and result.generation == generation


def test_a_commit_seen_only_at_its_end_goes_up_in_a_new_generation(
        tmp_path: Any, make_settings: MakeSettings) -> None:
    """Another connection commits between the rolled-back rewrite and this connection's next
    commit, so its capture cannot tell the rewrite was undone: the commit ends (COMMIT
    PHASETWO) still awaiting a fix-up. It cannot be spooled in order then, so a new
    generation from the local file holds it."""
    settings, path, db = _wal_with_one_row(tmp_path, make_settings, "two.db")
    other = bottomless.connect(path, settings)
    _rewrite_in_place_then_roll_back(db, "rollback-only")
    for i in range(300):  # past the frames the rolled-back transaction wrote
        other.execute("INSERT INTO t VALUES(?)", (1000 + i,))
    other.close()
    db.execute("INSERT INTO t VALUES(2)")  # the last commit: no later one finds its mark
    bottomless.wait_durable(db, 30)
    expected = rows(path)
    db.close()
    copy = str(tmp_path / "copy.db")
    bottomless.restore(copy, settings, db_name="two.db")
    assert rows(copy) == expected and (2,) in expected

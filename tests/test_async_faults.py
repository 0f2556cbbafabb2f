"""Async durability under faults: a full disk at the spool, a wall clock that steps back, a
lost lease, an upload that can never succeed, an uploader that cannot read its spool.

A commit must then fail (or be refused) cleanly and at once, or the uploader must keep going;
never may a commit be acknowledged that cannot be uploaded, nor the lag bound lapse.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import apsw
import pytest
from helpers import (
    abandon,
    commits_are_refused_while_nothing_ships,
    integrity,
    plant_commit,
    replicator,
    restored,
    rows,
    wait_for,
)

import bottomless
from bottomless import metrics
from bottomless.backends.registry import open_store
from bottomless.engine import spool as spool_module
from bottomless.engine.lease import WriterLease
from bottomless.engine.spool import Spool
from bottomless.errors import ReplicaConflictError
from bottomless.format import lease_key
from bottomless.local.files import read_state

MakeSettings = Callable[..., bottomless.Settings]


@contextlib.contextmanager
def wall_clock_ahead(monkeypatch: pytest.MonkeyPatch, seconds: float) -> Iterator[None]:
    """Entries spooled meanwhile are stamped ``seconds`` ahead: as if the wall clock stepped
    back by that much right after."""
    ahead = types.SimpleNamespace(time=lambda: time.time() + seconds,
                                  monotonic=time.monotonic, sleep=time.sleep)
    monkeypatch.setattr(spool_module, "time", ahead)
    try:
        yield
    finally:
        monkeypatch.setattr(spool_module, "time", time)


def open_async(tmp_path: Any, make_settings: MakeSettings, name: str,
               **overrides: Any) -> tuple[bottomless.Settings, str, apsw.Connection]:
    """An async database holding an empty table ``t``, everything uploaded."""
    settings = make_settings("file", durability="async", **overrides)
    path = str(tmp_path / name)
    db = bottomless.connect(path, settings)
    db.execute("CREATE TABLE t(x)")
    bottomless.wait_durable(db, 30)
    return settings, path, db


def plant_conflict(path: str, db: apsw.Connection) -> None:
    """Make the next upload of ``path`` meet an object of another lineage at its position,
    then spool a commit: the uploader fails, and retrying cannot help."""
    state = read_state(path)
    assert state is not None
    plant_commit(path, state.seq + 1, prev=bytes(32))  # not chained: not an orphan of ours
    db.execute("INSERT INTO t VALUES(1)")


# ---------------------------------------------------------------- a full disk


def test_a_full_disk_at_the_spool_fails_a_wal_commit_cleanly(
    tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The append happens at the commit point; when the disk has no room for it, the commit
    fails (SQLite rolls it back) instead of spooling a record the disk cannot hold."""
    monkeypatch.setattr(spool_module, "_PREALLOCATE", 0)  # every append allocates
    real_fallocate = os.posix_fallocate
    full = False

    def fallocate(fd: int, offset: int, length: int) -> None:
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fallocate(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    settings = make_settings("file", durability="async", max_lag=0.5)
    path = str(tmp_path / "full.db")
    db = bottomless.connect(path, settings)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t(x)")
    bottomless.wait_durable(db, 30)
    full = True
    with pytest.raises(apsw.IOError) as raised:
        db.execute("INSERT INTO t VALUES(1)")
    assert "No space left" in str(raised.value.__cause__)
    assert db.execute("SELECT x FROM t").fetchall() == [], "the commit was rolled back"
    assert bottomless.status(db)["pending_commits"] == 0
    full = False
    db.execute("INSERT INTO t VALUES(2)")
    bottomless.wait_durable(db, 30)
    db.close()
    copy = restored(tmp_path, settings, "full.db")
    assert integrity(copy) == "ok" and rows(copy) == [(2,)]


# ---------------------------------------------------------------- the wall clock steps back


def test_a_commit_stamped_in_the_future_still_ships_within_max_lag(
    tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, db = open_async(tmp_path, make_settings, "clock.db", max_lag=0.5)
    with wall_clock_ahead(monkeypatch, 3600):
        db.execute("INSERT INTO t VALUES(1)")
    db.execute("INSERT INTO t VALUES(2)")
    # no wait_durable: the uploader must see the commits on its own
    assert wait_for(lambda: bottomless.status(db)["pending_commits"] == 0, timeout=5) < 3
    db.close()


def test_status_counts_a_commit_stamped_in_the_future_as_max_lag_old(
    tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not as no lag at all, while it waits: its age is unknown, and due, as the uploader
    and back-pressure see it."""
    _, path, db = open_async(tmp_path, make_settings, "clocks.db", max_lag=30)
    replicator(path).shipper.halt()
    with wall_clock_ahead(monkeypatch, 3600):
        db.execute("INSERT INTO t VALUES(1)")
    status = bottomless.status(db)
    assert (status["pending_commits"], status["lag_seconds"]) == (1, 30)
    abandon(db, path)


def test_back_pressure_holds_with_a_commit_stamped_in_the_future(
    tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, path, db = open_async(tmp_path, make_settings, "clockbp.db", max_lag=0.3, timeout=1,
                             max_retries=0)
    with replicator(path).spool.upload_lock(wait=10) as mine:  # nothing ships
        assert mine
        with wall_clock_ahead(monkeypatch, 3600):
            db.execute("INSERT INTO t VALUES(1)")
        commits_are_refused_while_nothing_ships(db)
    bottomless.wait_durable(db, 30)
    db.close()


# ---------------------------------------------------------------- the lease is lost


def test_refused_async_commits_are_counted_and_logged_without_flooding(
    tmp_path: Any, make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    _, path, db = open_async(tmp_path, make_settings, "refused.db", max_lag=0.3, timeout=1,
                             max_retries=0)
    rep = replicator(path)
    caplog.set_level(logging.ERROR, logger="bottomless")
    with rep.spool.upload_lock(wait=10) as mine:  # nothing ships
        assert mine
        for _ in range(3):
            commits_are_refused_while_nothing_ships(db)
    assert rep.stats.errors == 3
    assert rep.stats.last_error is not None
    assert rep.stats.last_error.count("commit refused") == 1, "a refusal quoting the last one"
    refused = [r for r in caplog.records if "commit refused" in r.getMessage()]
    assert len(refused) == 1 and "behind" in refused[0].getMessage()
    bottomless.wait_durable(db, 30)
    db.close()


def test_an_upload_slower_than_max_lag_is_a_warning(
    tmp_path: Any, make_settings: MakeSettings, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store slower than ``max_lag`` breaks the bound without any error: it is said."""
    _, path, db = open_async(tmp_path, make_settings, "slow.db", max_lag=0.2)
    store = replicator(path).shipper.store
    put_once = store.put_once

    def slow_put_once(key: str, data: bytes) -> None:
        time.sleep(0.3)
        put_once(key, data)

    monkeypatch.setattr(store, "put_once", slow_put_once)
    caplog.set_level(logging.WARNING, logger="bottomless")
    for value in range(3):
        db.execute("INSERT INTO t VALUES(?)", (value,))
        bottomless.wait_durable(db, 30)
    slow = [r for r in caplog.records if "longer than max_lag" in r.getMessage()]
    assert len(slow) == 1, "one warning, not one an upload"
    db.close()


def test_a_refusal_for_a_full_spool_names_max_spool_mb(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    _, path, db = open_async(tmp_path, make_settings, "full.db", max_lag=0.5, timeout=1,
                             max_retries=0, max_spool_mb=1)
    with replicator(path).spool.upload_lock(wait=10) as mine:  # nothing ships
        assert mine
        db.execute("INSERT INTO t VALUES(randomblob(1500000))")  # over the bound at once
        time.sleep(0.05)  # the bound is checked at most every 10 ms
        with pytest.raises(apsw.IOError) as info:
            db.execute("INSERT INTO t VALUES(1)")
    message = str(info.value.__cause__)
    assert "MiB (max_spool_mb 1)" in message and "commit refused" in message, message
    bottomless.wait_durable(db, 30)
    db.close()


def test_a_writer_that_knows_it_lost_its_lease_refuses_async_commits_at_once(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    settings, path, db = open_async(tmp_path, make_settings, "lease.db", max_lag=5,
                                    lease_ttl=30)
    rep = replicator(path)
    other = WriterLease(open_store(settings), rep.db_name, "ff" * 16, 30)
    other.acquire(force=True)  # a failover decided by a human
    try:
        assert bottomless.status(db)["replicating"] is True
        rep.lease.renew()  # the renewal finds the lease taken: the loss is known
        status = bottomless.status(db)
        assert status["replicating"] is False and "took it over" in status["lease_lost"]
        assert metrics.snapshot()["writer"][rep.db_name]["writer_replicating"] == 0
        started = time.monotonic()
        with pytest.raises(apsw.IOError) as info:
            db.execute("INSERT INTO t VALUES(1)")
        assert time.monotonic() - started < 1
        cause = info.value.__cause__
        assert isinstance(cause, ReplicaConflictError)
        assert "lost its lease" in str(cause) and "commit refused" in str(cause)
        assert bottomless.status(db)["pending_commits"] == 0, "nothing spooled"
    finally:
        other.release()
    db.close()


# ---------------------------------------------------------------- uploads that cannot succeed


def test_an_upload_failure_retrying_cannot_fix_refuses_commits_at_once(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    """Once the spool reaches its bound, a commit is refused at once, not after waiting
    ``max_lag`` plus ``request_budget`` (here 5 s) for an upload that cannot succeed."""
    _, path, db = open_async(tmp_path, make_settings, "conflict.db", max_lag=0.3, timeout=5,
                             max_retries=0)
    rep = replicator(path)
    plant_conflict(path, db)
    wait_for(lambda: "another writer" in (rep.stats.last_error or ""), timeout=5)
    time.sleep(0.3)  # the spooled commit reaches the bound
    started = time.monotonic()
    with pytest.raises(apsw.IOError) as info:
        db.execute("INSERT INTO t VALUES(2)")
    assert time.monotonic() - started < 3  # the deadline it no longer waits out is 5 s
    cause = info.value.__cause__
    assert isinstance(cause, ReplicaConflictError)
    assert "another writer" in str(cause) and "commit refused" in str(cause)
    abandon(db, path)  # its spooled commit cannot be shipped: leave without flushing


def test_a_lease_that_cannot_be_confirmed_is_not_a_failure_for_good(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    """The store unreachable while the lease is due: its renewal fails, but the store may come
    back, so commits keep waiting for room (up to the deadline) instead of being refused at
    once; a lease known to be taken over is another matter."""
    _, path, db = open_async(tmp_path, make_settings, "lease.db")
    shipper = replicator(path).shipper
    unconfirmed = ReplicaConflictError("'lease.db': cannot confirm the lease; commit refused",
                                       db_name="lease.db", key=lease_key("lease.db"))
    assert not shipper.failures.is_permanent(unconfirmed)
    assert shipper.failures.is_permanent(ReplicaConflictError("another writer", db_name="lease.db",
                                                      key="lease.db/generations/x"))
    db.close()


def test_an_upload_failure_retrying_cannot_fix_is_logged_once_as_an_error(
    tmp_path: Any, make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    _, path, db = open_async(tmp_path, make_settings, "stuck.db", max_lag=0.2)
    rep = replicator(path)
    caplog.set_level(logging.WARNING, logger="bottomless")
    errors = rep.stats.errors
    plant_conflict(path, db)
    wait_for(lambda: rep.stats.errors >= errors + 4, timeout=5)  # several retries
    shipper = [r for r in caplog.records if r.name == "bottomless.engine.shipper"]
    assert [r.levelno for r in shipper] == [logging.ERROR]
    assert "another writer" in shipper[0].getMessage()
    assert "Retrying cannot fix this" in shipper[0].getMessage()
    abandon(db, path)


# ---------------------------------------------------------------- the uploader itself fails


def test_the_uploader_outlives_a_failure_to_read_its_spool(
    tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transient error where the uploader looks at the spool (here EMFILE) is recorded
    and retried; the thread must not die with it."""
    settings, path, db = open_async(tmp_path, make_settings, "emfile.db", max_lag=0.3)
    rep = replicator(path)
    real_head_number = Spool.head_number
    failing = True

    def head_number(self: Spool) -> int:
        if failing:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_head_number(self)

    monkeypatch.setattr(Spool, "head_number", head_number)
    wait_for(lambda: "Too many open files" in (rep.stats.last_error or ""), timeout=5)
    failing = False
    assert rep.shipper.uploader is not None and rep.shipper.uploader.is_alive()
    db.execute("INSERT INTO t VALUES(1)")
    # no wait_durable: the uploader ships it on its own
    wait_for(lambda: bottomless.status(db)["pending_commits"] == 0, timeout=5)
    assert rep.stats.last_error is None
    db.close()
    copy = restored(tmp_path, settings, "emfile.db")
    assert rows(copy) == [(1,)]


# ------------------------------------------------------------ a commit that cannot be spooled


def fail_appends(monkeypatch: pytest.MonkeyPatch, times: int = 1) -> None:
    """The next ``times`` spool appends fail as a full disk makes them fail."""
    real = Spool.append
    left = [times]

    def append(self: Spool, txn: Any, **kwargs: Any) -> int:
        if left[0] > 0:
            left[0] -= 1
            raise OSError(errno.ENOSPC, "No space left on device", self.path)
        return real(self, txn, **kwargs)

    monkeypatch.setattr(Spool, "append", append)


def two_tables(path: str, settings: bottomless.Settings, mode: str) -> Any:
    db = bottomless.connect(path, settings)
    db.setbusytimeout(10_000)  # the uploader takes SQLite's write lock to make a generation
    db.execute(f"PRAGMA journal_mode={mode}")
    db.execute("CREATE TABLE t(a)")
    db.execute("CREATE TABLE u(a)")
    bottomless.wait_durable(db, 30)
    return db


@pytest.mark.parametrize("mode", ["delete", "truncate", "persist"])
def test_a_commit_in_place_that_cannot_be_spooled_goes_up_in_a_new_generation(
    tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """In a rollback journal mode the commit point is in the database file, so a commit whose
    spooling fails is committed locally all the same. It stands, and a new generation made
    from the committed file at once holds it; before, it was silently never uploaded."""
    settings = make_settings("file", durability="async")
    path = str(tmp_path / "j.db")
    db = two_tables(path, settings, mode)
    generation = bottomless.status(db)["generation"]
    fail_appends(monkeypatch)
    db.execute("INSERT INTO t VALUES ('in place')")
    db.execute("INSERT INTO u VALUES ('later')")
    bottomless.wait_durable(db, 30)
    assert bottomless.status(db)["generation"] != generation
    db.close()
    copy = restored(tmp_path, settings, "j.db")
    assert integrity(copy) == "ok"
    assert rows(copy, "SELECT a FROM t") == [("in place",)] == rows(path, "SELECT a FROM t")
    assert rows(copy, "SELECT a FROM u") == [("later",)]


def test_a_wal_commit_that_cannot_be_spooled_fails_and_the_next_one_resyncs(
    tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings("file", durability="async")
    path = str(tmp_path / "w.db")
    db = two_tables(path, settings, "wal")
    fail_appends(monkeypatch)
    with pytest.raises(apsw.IOError) as raised:
        db.execute("INSERT INTO t VALUES ('failed')")
    assert "could not be spooled" in str(raised.value.__cause__)
    assert db.execute("SELECT a FROM t").fetchall() == []
    db.execute("INSERT INTO u VALUES ('later')")
    bottomless.wait_durable(db, 30)
    db.close()
    copy = restored(tmp_path, settings, "w.db")
    assert rows(copy, "SELECT a FROM t") == [] and rows(copy, "SELECT a FROM u") == [("later",)]


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_a_commit_left_unspooled_by_a_process_that_ended_is_resynced_at_open(
    tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """The process ends before anything made the new generation that a commit it could not
    spool calls for (a rollback journal mode: the commit stands; WAL: it failed, but recovery
    after a crash may bring it back). The spool's mark makes the next open start it."""
    settings = make_settings("file", durability="async")
    path = str(tmp_path / "e.db")
    db = two_tables(path, settings, mode)
    rep = replicator(path)
    rep.shipper.halt()  # as if the process were killed before its uploader's next turn
    fail_appends(monkeypatch)
    if mode == "delete":
        db.execute("INSERT INTO t VALUES ('unspooled')")  # committed in place: it stands
        assert rows(path, "SELECT a FROM t") == [("unspooled",)]
    else:
        with pytest.raises(apsw.IOError):
            db.execute("INSERT INTO t VALUES ('failed')")
    assert rep.spool.resync_needed()
    abandon(db, path)
    db = bottomless.connect(path, settings)
    assert not replicator(path).spool.resync_needed()
    db.execute("INSERT INTO u VALUES ('after')")
    bottomless.wait_durable(db, 30)
    local = db.execute("SELECT a FROM t").fetchall(), db.execute("SELECT a FROM u").fetchall()
    db.close()
    copy = restored(tmp_path, settings, "e.db")
    assert (rows(copy, "SELECT a FROM t"), rows(copy, "SELECT a FROM u")) == local
    assert local[1][-1] == ("after",)


def test_a_commit_neither_spooled_nor_marked_reports_an_error_but_is_not_lost(
    tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rollback journal commit that cannot be spooled, whose mark cannot be written and
    whose new generation cannot be made at once either: it stands, the commit reports an I/O
    error saying so, and this process makes that generation before it ships the next one."""
    settings = make_settings("file", durability="async")
    path = str(tmp_path / "n.db")
    db = two_tables(path, settings, "delete")
    rep = replicator(path)
    fail_appends(monkeypatch)
    real_mark = Spool.mark_resync

    def mark(self: Spool, needed: bool = True) -> None:
        if needed:
            raise OSError(errno.EIO, "Input/output error", self.path)
        real_mark(self, needed)

    monkeypatch.setattr(Spool, "mark_resync", mark)
    real_resync = rep.shipper.resync_from_local
    monkeypatch.setattr(rep.shipper, "resync_from_local",
                        lambda writer: (_ for _ in ()).throw(OSError(errno.EIO, "I/O")))
    with pytest.raises(apsw.IOError) as raised:
        db.execute("INSERT INTO t VALUES ('stands')")
    assert "local file only" in str(raised.value.__cause__)
    monkeypatch.setattr(rep.shipper, "resync_from_local", real_resync)
    db.execute("INSERT INTO u VALUES ('next')")
    bottomless.wait_durable(db, 30)
    db.close()
    copy = restored(tmp_path, settings, "n.db")
    assert rows(copy, "SELECT a FROM t") == [("stands",)] == rows(path, "SELECT a FROM t")
    assert rows(copy, "SELECT a FROM u") == [("next",)]


@pytest.mark.parametrize("fails", [False, True], ids=["commits", "fails-while-fixing"])
def test_a_wal_commit_that_fixes_its_checksums_can_make_the_new_generation(
    tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch, fails: bool
) -> None:
    """The commit that makes the new generation a failed spooling calls for rewrites WAL frames
    in place, so its commit point comes only after SQLite fixes their checksums. If it gets
    there, the generation holds it; if SQLite fails first, the generation is never recorded
    and the next commit makes another one, without the failed transaction."""
    from bottomless.engine.replicator import Replicator
    from bottomless.sqlite import vfs

    settings = make_settings("file", durability="async")
    path = str(tmp_path / "f.db")
    db = two_tables(path, settings, "wal")
    generation = bottomless.status(db)["generation"]
    replicator(path).shipper.halt()  # the commits make the generation themselves
    fail_appends(monkeypatch)
    with pytest.raises(apsw.IOError):
        db.execute("INSERT INTO t VALUES ('failed')")
    assert replicator(path).spool.resync_needed()
    written: list[bool] = []
    real_written = Replicator.commit_written

    def commit_written(self: Replicator, *, fixup_follows: bool) -> None:
        written.append(fixup_follows)
        real_written(self, fixup_follows=fixup_follows)

    def read_failing_while_fixing(self: Any, amount: int, offset: int) -> bytes:
        if self.awaiting_fixup:
            raise apsw.IOError("the WAL cannot be read back")
        return bytes(apsw.VFSFile.xRead(self, amount, offset))

    monkeypatch.setattr(Replicator, "commit_written", commit_written)
    if fails:
        monkeypatch.setattr(vfs.WalFile, "xRead", read_failing_while_fixing, raising=False)
    db.execute("PRAGMA cache_size=2")  # spills: pages written again are rewritten in place
    with contextlib.ExitStack() as failing:
        if fails:
            failing.enter_context(pytest.raises(apsw.Error))
        with db:
            db.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
                       " WHERE i < 1000) INSERT INTO u SELECT randomblob(300) FROM n")
            for j in range(5):
                db.execute("UPDATE u SET a = randomblob(300) WHERE rowid % 7 = ?", (j,))
    monkeypatch.undo()
    assert written == [True], "the commit did not wait for its checksums"
    # recorded only at its commit point
    assert (bottomless.status(db)["generation"] == generation) is fails
    assert replicator(path).spool.resync_needed() is fails
    if fails:
        db.execute("BEGIN IMMEDIATE; COMMIT")
        db.execute("INSERT INTO t VALUES ('after')")
        assert bottomless.status(db)["generation"] != generation
        assert not replicator(path).spool.resync_needed()
    local = rows(path, "SELECT a FROM t"), rows(path, "SELECT count(*) FROM u")
    assert local == (([("after",)], [(0,)]) if fails else ([], [(1000,)]))
    copy = restored(tmp_path, settings, "f.db")
    assert integrity(copy) == "ok"
    assert (rows(copy, "SELECT a FROM t"), rows(copy, "SELECT count(*) FROM u")) == local
    abandon(db, path)


_OTHER_WRITER = """
import json, sys, bottomless
db = bottomless.connect(sys.argv[1], bottomless.Settings(**json.loads(sys.argv[2])))
db.setbusytimeout(20000)
print("ready", flush=True)
sys.stdin.readline()
db.execute("INSERT INTO u VALUES ('other process')")
bottomless.wait_durable(db, 30)
db.close()
print("done", flush=True)
"""


def test_another_process_never_ships_on_top_of_a_commit_left_unspooled(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Process A's commit stands in the local file but not in its spool (a rollback journal
    mode), and A's uploader is stopped; process B, open already, commits. B's uploader finds
    the spool's mark and starts the new generation from the local file instead of shipping
    B's commit on top of the gap."""
    values = {"backend": "file", "bucket": str(tmp_path / "bucket"), "durability": "async"}
    settings = bottomless.Settings(**values)  # type: ignore[arg-type]
    path = str(tmp_path / "g.db")
    db = two_tables(path, settings, "delete")
    other = subprocess.Popen(
        [sys.executable, "-c", _OTHER_WRITER, path, json.dumps(values)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("LIBSQL_BOTTOMLESS_")},
    )
    try:
        assert other.stdout is not None and other.stdin is not None
        assert other.stdout.readline().strip() == "ready"
        replicator(path).shipper.halt()
        fail_appends(monkeypatch)
        db.execute("INSERT INTO t VALUES ('A, in place')")
        other.stdin.write("\n")
        other.stdin.flush()
        done = other.stdout.readline().strip()
        assert done == "done", other.stderr.read()[-3000:] if other.stderr else ""
    finally:
        other.kill()
        other.wait(30)
    db.close()
    copy = restored(tmp_path, settings, "g.db")
    assert rows(copy, "SELECT a FROM t") == [("A, in place",)]
    assert rows(copy, "SELECT a FROM u") == [("other process",)]


def test_a_lone_commit_left_unspooled_is_in_the_bucket_once_durable(
    tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing else spooled and nothing committed after it: wait_durable still waits for the
    new generation that holds the commit, instead of finding the spool empty."""
    settings = make_settings("file", durability="async")
    path = str(tmp_path / "l.db")
    db = two_tables(path, settings, "delete")
    fail_appends(monkeypatch)
    db.execute("INSERT INTO t VALUES ('lone')")
    bottomless.wait_durable(db, 30)
    assert bottomless.status(db)["pending_commits"] == 0
    assert rows(restored(tmp_path, settings, "l.db"), "SELECT a FROM t") == [("lone",)]
    db.close()


def test_the_next_commit_makes_the_new_generation_itself(
    tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a commit left unspooled, the next commit does not wait for the uploader (which
    needs SQLite's write lock, held by that very commit): it makes the new generation itself,
    holding both commits. The uploader is stopped here to show it."""
    settings = make_settings("file", durability="async")
    path = str(tmp_path / "n.db")
    db = two_tables(path, settings, "delete")
    generation = bottomless.status(db)["generation"]
    replicator(path).shipper.halt()
    fail_appends(monkeypatch)
    db.execute("INSERT INTO t VALUES ('unspooled')")
    db.execute("INSERT INTO u VALUES ('next')")
    status = bottomless.status(db)
    assert status["generation"] != generation and status["pending_commits"] == 0
    assert not replicator(path).spool.resync_needed()
    copy = restored(tmp_path, settings, "n.db")
    assert rows(copy, "SELECT a FROM t") == [("unspooled",)]
    assert rows(copy, "SELECT a FROM u") == [("next",)]
    abandon(db, path)


def test_an_open_that_finds_another_writer_since_the_gap_is_a_conflict(
    tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process left a commit unspooled and ended; another machine then restored the
    database and wrote to it. The next open of the old file must not replace that newer
    history with a generation from its own file: it is a conflict, as without the mark."""
    settings = make_settings("file", durability="async", lease_ttl=0)
    path = left_unspooled(tmp_path, settings, monkeypatch)
    other_path = str(tmp_path / "elsewhere.db")
    other = bottomless.connect(other_path, settings.model_copy(update={"db_name": "a.db"}))
    other.execute("INSERT INTO u VALUES ('after the failover')")
    other.close()
    with pytest.raises(ReplicaConflictError, match="another writer"):
        bottomless.connect(path, settings)
    copy = restored(tmp_path, settings, "a.db")
    assert rows(copy, "SELECT a FROM u") == [("after the failover",)]


def test_the_uploader_makes_the_new_generation_on_its_own(
    tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No later commit, no wait_durable, no close: the uploader alone puts a commit left
    unspooled in the bucket, within about max_lag."""
    settings = make_settings("file", durability="async", max_lag=0.5)
    path = str(tmp_path / "u.db")
    db = two_tables(path, settings, "delete")
    generation = bottomless.status(db)["generation"]
    fail_appends(monkeypatch)
    db.execute("INSERT INTO t VALUES ('alone')")
    wait_for(lambda: bottomless.status(db)["generation"] != generation, timeout=20)
    assert not replicator(path).spool.resync_needed()
    assert rows(restored(tmp_path, settings, "u.db"), "SELECT a FROM t") == [("alone",)]
    db.close()


def left_unspooled(tmp_path: Any, settings: bottomless.Settings,
                   monkeypatch: pytest.MonkeyPatch) -> str:
    """A database whose last process left a commit in the local file but not the spool (its
    mark set), then died."""
    path = str(tmp_path / "a.db")
    db = two_tables(path, settings, "delete")
    replicator(path).shipper.halt()
    fail_appends(monkeypatch)
    db.execute("INSERT INTO t VALUES ('unspooled')")
    abandon(db, path)
    return path


def test_a_paused_open_leaves_the_other_writers_history_alone(
    tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opened with initial_replication=skip after another writer took over, the old file
    replicates nothing: waiting for durability must not make a generation from it."""
    settings = make_settings("file", durability="async", lease_ttl=0)
    path = left_unspooled(tmp_path, settings, monkeypatch)
    other = bottomless.connect(str(tmp_path / "elsewhere.db"),
                               settings.model_copy(update={"db_name": "a.db"}))
    other.execute("INSERT INTO u VALUES ('after the failover')")
    other.close()
    db = bottomless.connect(path, settings.model_copy(update={"initial_replication": "skip"}))
    bottomless.wait_durable(db, 5)
    db.close()
    copy = restored(tmp_path, settings, "a.db")
    assert rows(copy, "SELECT a FROM u") == [("after the failover",)]
    assert rows(copy, "SELECT a FROM t") == []


def test_an_open_after_gc_built_the_newest_snapshot_still_resyncs(
    tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gc builds snapshots under writer ids of its own and deletes the commits before them:
    the newest generation then ends where this file's state does, and is still ours."""
    settings = make_settings("file", durability="async", lease_ttl=0)
    path = left_unspooled(tmp_path, settings, monkeypatch)
    bottomless.gc("a.db", settings, older_than="0s")
    db = bottomless.connect(path, settings)
    bottomless.wait_durable(db, 30)
    db.close()
    assert rows(restored(tmp_path, settings, "a.db"), "SELECT a FROM t") == [("unspooled",)]


class _KilledError(BaseException):
    """Stands for the process being killed at that point."""


def test_a_fork_killed_before_the_spool_was_emptied_replays_nothing(
    tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The uploader meets an orphan of this writer and starts a new generation from the local
    file, which holds every spooled commit; the process dies after recording it, before the
    spool is emptied. The next open must not ship those commits again on top of the new
    generation's snapshot: replayed one by one, the first would make a point that never
    existed (``x`` back at 2 while ``u`` already holds the row of the commit after it)."""
    from bottomless.engine import shipper as shipper_module

    settings = make_settings("file", durability="async")
    path = str(tmp_path / "k.db")
    db = two_tables(path, settings, "wal")
    db.execute("INSERT INTO t VALUES (0)")
    bottomless.wait_durable(db, 30)
    rep = replicator(path)
    rep.shipper.halt()
    state = read_state(path)
    assert state is not None
    plant_commit(path, state.seq + 1, prev=state.digest_bytes)  # an orphan of this writer
    for statement in ("UPDATE t SET a = 1", "UPDATE t SET a = 2",
                      "UPDATE t SET a = 3; INSERT INTO u VALUES ('c')"):
        db.execute(statement)
    existed = {(1, ()), (2, ()), (3, ("c",))}
    monkeypatch.setattr(shipper_module, "GROUP_BYTES", 1)  # one commit per object
    real_remove = Spool.remove_through

    def killed(self: Spool, number: int) -> None:
        if read_state(path).generation != state.generation:  # type: ignore[union-attr]
            raise _KilledError
        real_remove(self, number)

    monkeypatch.setattr(Spool, "remove_through", killed)
    with pytest.raises(_KilledError):
        rep.shipper.drain_once()
    forked = read_state(path)
    assert forked is not None and forked.generation != state.generation
    monkeypatch.setattr(Spool, "remove_through", real_remove)
    abandon(db, path)

    db = bottomless.connect(path, settings)
    bottomless.wait_durable(db, 30)
    db.close()
    later = [g.generation for g in bottomless.ls("k.db", settings)
             if g.generation >= forked.generation]
    for generation in later:
        commits = [c.seq for c in bottomless.ls("k.db", settings, generation=generation)]
        for seq in [0, *commits]:
            target = str(tmp_path / f"{generation}-{seq}.db")
            bottomless.restore(target, settings, db_name="k.db", generation=generation,
                               commit=seq)
            point = (rows(target, "SELECT a FROM t")[0][0],
                     tuple(r[0] for r in rows(target, "SELECT a FROM u")))
            assert point in existed, f"{generation}/{seq} never existed: {point}"
    assert len(later) >= 2, "the interrupted fork is followed by a new generation"
    newest = restored(tmp_path, settings, "k.db")
    assert rows(newest, "SELECT a FROM t") == [(3,)] and integrity(newest)


def test_a_new_generation_the_store_refuses_leaves_commits_queued_as_before(
    tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The uploader meets an orphan of this writer and the new generation's upload fails: the
    spool is not marked for a resync, which would make every commit meanwhile try the upload
    itself, under SQLite's write lock; the uploader settles the orphan once the store
    answers."""
    from bottomless.engine.generations import Generations
    from bottomless.errors import StoreError

    settings, path, db = open_async(tmp_path, make_settings, "o.db")
    rep = replicator(path)
    rep.shipper.halt()
    state = read_state(path)
    assert state is not None
    plant_commit(path, state.seq + 1, prev=state.digest_bytes)  # an orphan of this writer
    db.execute("INSERT INTO t VALUES (1)")
    real_start = Generations.start

    def unreachable(self: Generations, *args: Any, **kwargs: Any) -> Any:
        raise StoreError("the store is unreachable (injected)")

    monkeypatch.setattr(Generations, "start", unreachable)
    with pytest.raises(StoreError):
        rep.shipper.drain_once()
    assert not rep.spool.resync_needed()
    db.execute("INSERT INTO t VALUES (2)")  # queued, not a generation attempt of its own
    assert bottomless.status(db)["pending_commits"] == 2
    monkeypatch.setattr(Generations, "start", real_start)
    assert rep.shipper.drain_once()
    bottomless.wait_durable(db, 30)
    db.close()
    assert rows(restored(tmp_path, settings, "o.db"), "SELECT x FROM t") == [(1,), (2,)]

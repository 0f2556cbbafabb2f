"""Async durability under faults: a full disk at the spool, a wall clock that steps back, a
lost lease, an upload that can never succeed, an uploader that cannot read its spool.

A commit must then fail (or be refused) cleanly and at once, or the uploader must keep going;
never may a commit be acknowledged that cannot be uploaded, nor the lag bound lapse.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
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
)

import bottomless
from bottomless.backends.registry import open_store
from bottomless.engine import spool as spool_module
from bottomless.engine.lease import WriterLease
from bottomless.engine.spool import Spool
from bottomless.errors import ReplicaConflictError
from bottomless.local.files import read_state

MakeSettings = Callable[..., bottomless.Settings]


def wait_for(condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``condition`` holds; fails after ``timeout``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(0.01)
    return time.monotonic() - started


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


def test_a_writer_that_knows_it_lost_its_lease_refuses_async_commits_at_once(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    settings, path, db = open_async(tmp_path, make_settings, "lease.db", max_lag=5,
                                    lease_ttl=30)
    rep = replicator(path)
    other = WriterLease(open_store(settings), rep.db_name, "ff" * 16, 30)
    other.acquire(force=True)  # a failover decided by a human
    try:
        rep.lease.renew()  # the renewal finds the lease taken: the loss is known
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
    assert time.monotonic() - started < 1
    cause = info.value.__cause__
    assert isinstance(cause, ReplicaConflictError)
    assert "another writer" in str(cause) and "commit refused" in str(cause)
    abandon(db, path)  # its spooled commit cannot be shipped: leave without flushing


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

    def append(self: Spool, txn: Any) -> int:
        if left[0] > 0:
            left[0] -= 1
            raise OSError(errno.ENOSPC, "No space left on device", self.path)
        return real(self, txn)

    monkeypatch.setattr(Spool, "append", append)


def two_tables(path: str, settings: bottomless.Settings, mode: str) -> Any:
    db = bottomless.connect(path, settings)
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
    """The spooling fails and so does the new generation that should hold the commit (a
    rollback journal mode), or the process ends before its next commit (WAL): the spool's
    header says so, and the next open makes that generation from the local file, before
    anything else is uploaded on top of the gap."""
    settings = make_settings("file", durability="async")
    path = str(tmp_path / "e.db")
    db = two_tables(path, settings, mode)
    fail_appends(monkeypatch)
    rep = replicator(path)
    monkeypatch.setattr(rep.shipper, "resync_from_local",
                        lambda writer: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(apsw.IOError):
        db.execute("INSERT INTO t VALUES ('unspooled')")
    if mode == "delete":  # committed in place: later commits are refused until a new open
        assert rows(path, "SELECT a FROM t") == [("unspooled",)]
        with pytest.raises(apsw.IOError) as refused:
            db.execute("INSERT INTO u VALUES ('refused')")
        assert "opened again" in str(refused.value.__cause__)
    else:  # WAL recovery after a crash may still bring the commit back: the open resyncs
        assert rows(path, "SELECT a FROM t") == []
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
    assert local[1] == [("after",)]

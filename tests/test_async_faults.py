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
    with pytest.raises(OSError, match="No space left"):
        db.execute("INSERT INTO t VALUES(1)")
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

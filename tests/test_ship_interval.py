"""Async shipping pace (``ship_interval``): few uploads for a stream, prompt ones for a lone
commit, and the bounds (``max_lag``, ``max_spool_mb``) still first.

Uploads are counted, not timed: the only clocks here are loose bounds on a loaded machine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from helpers import (
    ForwardingStore,
    commits_are_refused_while_nothing_ships,
    integrity,
    replicator,
    restored,
    rows,
    wait_for,
)

import bottomless
from bottomless import format as fmt
from bottomless.engine.uploader import Backlog, Uploader

MakeSettings = Callable[..., bottomless.Settings]


class CommitLog(ForwardingStore):
    """Notes when each commit object was stored."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.stored: list[float] = []
        self._lock = threading.Lock()

    def put_if_absent(self, key: str, data: bytes) -> None:
        self.inner.put_if_absent(key, data)
        if fmt.is_commit_key(key):
            with self._lock:
                self.stored.append(time.monotonic())

    def count(self) -> int:
        with self._lock:
            return len(self.stored)


def counted(path: str) -> CommitLog:
    """Count the commit objects the shipper of the open database ``path`` stores from now on."""
    shipper = replicator(path).shipper
    log = CommitLog(shipper.store)
    shipper.store = log
    return log




def test_a_steady_stream_shares_uploads(tmp_path: Any, backend: str,
                                        make_settings: MakeSettings) -> None:
    interval = 0.5
    settings = make_settings(backend, durability="async", max_lag=2, ship_interval=interval)
    path = str(tmp_path / "stream.db")
    db = bottomless.connect(path, settings)
    db.execute("CREATE TABLE t(x)")
    bottomless.wait_durable(db, timeout=30)
    log = counted(path)
    started = time.monotonic()
    for i in range(60):  # about 20 commits/s for 3 s
        db.execute("INSERT INTO t VALUES(?)", (i,))
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    bottomless.wait_durable(db, timeout=30)
    # at most one upload per interval while the stream runs, one more for what wait_durable
    # ships, and one for a commit after the quiet spell before the stream
    assert log.count() <= elapsed / interval + 2, (log.count(), elapsed)
    db.close()
    copy = restored(tmp_path, settings, "stream.db")
    assert integrity(copy) == "ok" and rows(copy) == [(i,) for i in range(60)]


def test_a_commit_after_a_quiet_spell_ships_at_once(tmp_path: Any,
                                                    make_settings: MakeSettings) -> None:
    # the second check below must come before the next slot, interval after the first
    # upload: a first upload seen up to interval / 2 + 0.5 late leaves it 0.5 s of room
    interval = 3.0
    settings = make_settings("memory", durability="async", max_lag=5, ship_interval=interval)
    path = str(tmp_path / "quiet.db")
    db = bottomless.connect(path, settings)
    db.execute("CREATE TABLE t(x)")
    bottomless.wait_durable(db, timeout=30)
    log = counted(path)
    time.sleep(interval + 0.1)  # a quiet spell
    db.execute("INSERT INTO t VALUES(1)")
    # the lone commit does not wait for the interval
    assert wait_for(lambda: log.count() == 1, timeout=30) < interval / 2 + 0.5
    # one right after it does: it may share the next upload with more commits
    db.execute("INSERT INTO t VALUES(2)")
    time.sleep(0.5)
    assert log.count() == 1 and bottomless.status(db)["pending_commits"] == 1
    bottomless.wait_durable(db, timeout=30)  # ships at once, interval or not
    assert log.count() == 2 and bottomless.status(db)["pending_commits"] == 0
    db.close()
    copy = restored(tmp_path, settings, "quiet.db")
    assert integrity(copy) == "ok" and rows(copy) == [(1,), (2,)]


def test_a_full_spool_does_not_wait_for_the_interval(tmp_path: Any,
                                                     make_settings: MakeSettings) -> None:
    settings = make_settings("memory", durability="async", max_lag=60, ship_interval=60,
                             max_spool_mb=1)
    path = str(tmp_path / "full.db")
    db = bottomless.connect(path, settings)
    db.execute("CREATE TABLE t(x)")
    bottomless.wait_durable(db, timeout=30)
    log = counted(path)
    for _ in range(40):  # 4 MiB through a 1 MiB spool, well within the interval
        db.execute("INSERT INTO t VALUES(randomblob(100000))")
    assert log.count() >= 2, "back-pressure must ship what the interval holds back"
    bottomless.wait_durable(db, timeout=30)
    db.close()
    copy = restored(tmp_path, settings, "full.db")
    assert integrity(copy) == "ok" and rows(copy, "SELECT count(*) FROM t") == [(40,)]


def test_max_lag_bounds_a_commit_waiting_for_its_interval(tmp_path: Any,
                                                          make_settings: MakeSettings) -> None:
    settings = make_settings("memory", durability="async", max_lag=0.3, ship_interval=0.3,
                             timeout=1, max_retries=0)
    path = str(tmp_path / "bound.db")
    db = bottomless.connect(path, settings)
    db.execute("CREATE TABLE t(x)")
    rep = replicator(path)
    with rep.spool.upload_lock(wait=10) as mine:  # the uploader can't ship: the lag grows
        assert mine
        commits_are_refused_while_nothing_ships(db)
    bottomless.wait_durable(db, 30)
    db.execute("INSERT INTO t VALUES(2)")
    bottomless.wait_durable(db, 30)
    db.close()
    copy = restored(tmp_path, settings, "bound.db")
    assert integrity(copy) == "ok" and rows(copy)[-1] == (2,)


@pytest.mark.parametrize(("ship_interval", "max_lag", "words"), [
    (2.0, 1.0, ["ship_interval", "max_lag (1.0)", "LIBSQL_BOTTOMLESS_SHIP_INTERVAL"]),
    (0, 1.0, ["ship_interval", "greater than 0", "URI parameter ship_interval"]),
])
def test_ship_interval_is_checked(ship_interval: float, max_lag: float,
                                  words: list[str]) -> None:
    with pytest.raises(bottomless.ConfigError) as info:
        bottomless.Settings(ship_interval=ship_interval, max_lag=max_lag)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(("max_lag", "ship_interval", "in_force"), [
    (1.0, None, 1.0), (0.3, None, 0.3), (60, None, 1.0), (60, 5, 5),
])
def test_the_default_interval_fits_max_lag(max_lag: float, ship_interval: float | None,
                                           in_force: float) -> None:
    settings = bottomless.Settings(max_lag=max_lag, ship_interval=ship_interval)
    assert settings.shipping_interval == in_force


# ---------------------------------------------------------------- the uploader's schedule


class FakeSpool:
    """A backlog the test sets by hand; each drain empties it."""

    def __init__(self) -> None:
        self.backlog = Backlog(0.0, 1, 0)

    def drain(self) -> bool:
        shipped = self.backlog.age > 0
        self.backlog = Backlog(0.0, self.backlog.head + 1, 0)
        return shipped


def uploader(spool: FakeSpool, interval: float = 1.0, bound: float = 1.0) -> Uploader:
    return Uploader("test", spool.drain, lambda: spool.backlog, interval=interval, bound=bound,
                    gather=0.05, full=1000)


def ship(up: Uploader, spool: FakeSpool, ago: float = 0.2) -> None:
    """An upload by the uploader that started ``ago`` seconds ago (as ``run`` records one)."""
    up._last_slot = up._own_start = time.monotonic() - ago
    up._head = None
    spool.drain()


def test_schedule_a_lone_commit_waits_only_to_gather_company() -> None:
    spool = FakeSpool()
    up = uploader(spool)
    assert up.delay() == pytest.approx(0.05)  # nothing spooled: look again soon
    spool.backlog = Backlog(0.01, 1, 10)
    assert up.delay() == pytest.approx(0.04, abs=0.03)  # wide: the clock runs meanwhile
    spool.backlog = Backlog(0.06, 1, 10)
    assert up.delay() == 0


def test_schedule_a_stream_ships_once_per_interval_within_the_bound() -> None:
    spool = FakeSpool()
    up = uploader(spool, interval=0.5, bound=2.0)
    ship(up, spool)
    spool.backlog = Backlog(0.1, spool.backlog.head, 10)  # spooled after that upload began
    assert up.delay() == pytest.approx(0.3, abs=0.1)  # the interval, from the last upload
    # an interval as long as the bound gives way to it: the upload must end within max_lag
    up = uploader(spool, interval=1.0, bound=1.0)
    ship(up, spool, ago=0.01)
    up._durations.append(0.2)  # uploads have taken up to 0.2 s: start 0.4 s before the bound
    spool.backlog = Backlog(0.005, spool.backlog.head, 10)
    assert up.ship_by() == pytest.approx(0.6)
    assert up.delay() == pytest.approx(0.595, abs=0.1)


def test_schedule_leftovers_full_objects_and_hurry_do_not_wait() -> None:
    spool = FakeSpool()
    up = uploader(spool)
    ship(up, spool)
    spool.backlog = Backlog(5.0, spool.backlog.head, 10)  # older than the last upload
    assert up.delay() == 0
    spool.backlog = Backlog(0.1, spool.backlog.head, 1000)  # a full object's worth
    assert up.delay() == 0
    spool.backlog = Backlog(0.1, spool.backlog.head, 10)
    assert up.delay() > 0.5
    up.hurry.set()
    assert up.delay() == 0


def test_schedule_an_upload_by_another_process_counts() -> None:
    spool = FakeSpool()
    up = uploader(spool)
    assert up.delay() == pytest.approx(0.05)  # sees the head
    spool.backlog = Backlog(0.0, spool.backlog.head + 3, 0)  # another process uploaded
    up.delay()
    spool.backlog = Backlog(0.1, spool.backlog.head, 10)
    assert up.delay() > 0.5  # not a quiet spell: it waits for the interval


def test_schedule_a_late_upload_keeps_its_slot() -> None:
    """A commit a second apart with a 1 s interval: each upload's slot is when it was due,
    not when the thread got round to it, so lateness does not pile up into lag."""
    spool = FakeSpool()
    up = uploader(spool)
    ship(up, spool, ago=1.2)  # the next slot opened 0.2 s ago
    spool.backlog = Backlog(0.1, spool.backlog.head, 10)  # spooled 0.1 s ago: due 0.05 s ago
    assert up.delay() == 0
    assert up._slot == pytest.approx(time.monotonic() - 0.05, abs=0.04)

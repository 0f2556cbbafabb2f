"""Opening and closing databases from several threads: one slow database stalls no other;
and an open in another process while this one's uploader is in the middle of an upload.

A store whose calls block on an event stands in for a long restore (at open) or a long flush
(at close); the other database opens meanwhile. Timeouts are generous and only bound a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import apsw
import pytest
from helpers import ForwardingStore, replicator, rows

import bottomless
from bottomless.backends.base import PageStore
from bottomless.errors import StoreError
from bottomless.sqlite import vfs

MakeSettings = Callable[..., bottomless.Settings]
WAIT = 20.0  # seconds: only reached when something is stuck


class GatedStore(ForwardingStore):
    """A real store whose calls block while it is ``armed``, until ``gate`` is set.

    ``entered`` is set when a call starts waiting; with ``fail`` set, the released call raises
    StoreError instead of going through. ``close`` is gated too (the end of a replicator's
    close).
    """

    def __init__(self, inner: PageStore, log: list[str]) -> None:
        super().__init__(inner)
        self.armed = False
        self.fail = False
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.log = log

    def _pass(self) -> None:
        if not self.armed:
            return
        self.entered.set()
        assert self.gate.wait(3 * WAIT), "the test never opened the gate"
        if self.fail:
            self.fail = False
            raise StoreError(f"{self.location}: injected failure")

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        self._pass()
        return super().get_versioned(key)

    def get(self, key: str) -> bytes:
        self._pass()
        return super().get(key)

    def list_keys(self, prefix: str) -> list[str]:
        self._pass()
        return super().list_keys(prefix)

    def list_children(self, prefix: str) -> list[str]:
        self._pass()
        return super().list_children(prefix)

    def put_if_absent(self, key: str, data: bytes) -> None:
        self._pass()
        super().put_if_absent(key, data)

    def close(self) -> None:
        self._pass()
        self.inner.close()
        self.log.append("closed")


class Stores:
    """Replaces ``open_store`` of the VFS: stores of ``bucket`` are gated, others are not."""

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket
        self.log: list[str] = []
        self.opened: list[GatedStore] = []
        self.armed_at_open = False
        self.fail_at_open = False
        self.gate = threading.Event()
        self._real = vfs.open_store

    def __call__(self, settings: bottomless.Settings) -> PageStore:
        inner = self._real(settings)
        if settings.bucket != self.bucket:
            return inner
        self.log.append("opened")
        store = GatedStore(inner, self.log)
        store.gate = self.gate
        store.armed = self.armed_at_open
        store.fail = self.fail_at_open
        self.opened.append(store)
        return store


@pytest.fixture
def stores(monkeypatch: pytest.MonkeyPatch, make_settings: MakeSettings) -> Iterator[Stores]:
    """Gated stores for one bucket; the gate is opened at the end whatever happened."""
    gated = Stores(make_settings("memory").bucket)
    monkeypatch.setattr(vfs, "open_store", gated)
    try:
        yield gated
    finally:
        gated.gate.set()


class Worker(threading.Thread):
    """Runs ``work`` in a thread, keeping its result or its exception."""

    def __init__(self, work: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.work = work
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self.result = self.work()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            self.error = e
        finally:
            self.done.set()

    def outcome(self) -> Any:
        """Wait for the work; return its result or raise its exception."""
        assert self.done.wait(WAIT), "the work never finished"
        if self.error is not None:
            raise self.error
        return self.result


def _open_and_use(path: str, settings: bottomless.Settings) -> None:
    db = bottomless.connect(path, settings)
    try:
        db.execute("CREATE TABLE IF NOT EXISTS t(v)")
        db.execute("INSERT INTO t VALUES('x')")
    finally:
        db.close()


def _slow_settings(stores: Stores) -> bottomless.Settings:
    return bottomless.Settings(backend="memory", bucket=stores.bucket)


def test_a_slow_open_does_not_stall_opening_another_database(
    tmp_path: Any, stores: Stores, make_settings: MakeSettings
) -> None:
    stores.armed_at_open = True
    slow = Worker(lambda: bottomless.connect(str(tmp_path / "slow.db"), _slow_settings(stores)))
    slow.start()
    assert _entered(stores)

    other = Worker(lambda: _open_and_use(str(tmp_path / "other.db"), make_settings("memory")))
    other.start()
    finished = other.done.wait(WAIT)
    still_opening = not slow.done.is_set()
    stores.gate.set()
    slow.outcome().close()
    assert finished, "opening another database waited for the slow open"
    assert still_opening
    other.outcome()


def test_a_slow_close_does_not_stall_opening_another_database(
    tmp_path: Any, stores: Stores, make_settings: MakeSettings
) -> None:
    db = bottomless.connect(str(tmp_path / "slow.db"), _slow_settings(stores))
    db.execute("CREATE TABLE t(v)")
    store = stores.opened[0]
    store.armed = True
    closing = Worker(db.close)
    closing.start()
    assert store.entered.wait(WAIT)

    other = Worker(lambda: _open_and_use(str(tmp_path / "other.db"), make_settings("memory")))
    other.start()
    finished = other.done.wait(WAIT)
    still_closing = not closing.done.is_set()
    stores.gate.set()
    closing.outcome()
    assert finished, "opening another database waited for the slow close"
    assert still_closing
    other.outcome()


def test_a_second_opener_of_one_path_shares_the_replicator_opened_first(
    tmp_path: Any, stores: Stores
) -> None:
    path = str(tmp_path / "shared.db")
    stores.armed_at_open = True
    first = Worker(lambda: bottomless.connect(path, _slow_settings(stores)))
    first.start()
    assert _entered(stores)
    second = Worker(lambda: bottomless.connect(path, _slow_settings(stores)))
    second.start()
    stores.gate.set()
    one, two = first.outcome(), second.outcome()
    try:
        assert stores.log.count("opened") == 1  # one replicator, one store
        assert not replicator(path)._closing
        one.close()
        two.execute("CREATE TABLE t(v)")  # still replicating: the replicator is counted twice
        assert bottomless.status(two)["last_replicated_commit"] >= 1
    finally:
        two.close()
    assert stores.log == ["opened", "closed"]


def test_a_failed_open_leaves_nothing_half_open_for_the_next_opener(
    tmp_path: Any, stores: Stores
) -> None:
    path = str(tmp_path / "failing.db")
    stores.armed_at_open = True
    stores.fail_at_open = True
    first = Worker(lambda: bottomless.connect(path, _slow_settings(stores)))
    first.start()
    assert _entered(stores)
    stores.armed_at_open = stores.fail_at_open = False
    second = Worker(lambda: bottomless.connect(path, _slow_settings(stores)))
    second.start()
    stores.gate.set()
    with pytest.raises(StoreError):
        first.outcome()
    db = second.outcome()  # opened afresh, with a store of its own
    try:
        db.execute("CREATE TABLE t(v)")
        assert bottomless.status(db)["last_replicated_commit"] >= 1
        assert replicator(path).counted_store.inner is stores.opened[-1]
    finally:
        db.close()
    assert stores.log.count("opened") == 2


def test_an_open_racing_with_the_last_close_gets_a_fresh_replicator(
    tmp_path: Any, stores: Stores
) -> None:
    path = str(tmp_path / "race.db")
    db = bottomless.connect(path, _slow_settings(stores))
    db.execute("CREATE TABLE t(v)")
    old = replicator(path)
    stores.opened[0].armed = True
    closing = Worker(db.close)
    closing.start()
    assert stores.opened[0].entered.wait(WAIT)
    opening = Worker(lambda: bottomless.connect(path, _slow_settings(stores)))
    opening.start()
    stores.gate.set()
    closing.outcome()
    again: apsw.Connection = opening.outcome()
    try:
        # the new replicator was built after the old one had finished closing
        assert stores.log == ["opened", "closed", "opened"]
        fresh = replicator(path)
        assert fresh is not old and not fresh._closing
        again.execute("INSERT INTO t VALUES(1)")
        assert bottomless.status(again)["last_replicated_commit"] >= 2
    finally:
        again.close()


def _entered(stores: Stores) -> bool:
    """Wait until the first gated store of ``stores`` exists and a call waits at its gate."""
    for _ in range(int(WAIT * 10)):
        if stores.opened:
            return stores.opened[0].entered.wait(WAIT)
        threading.Event().wait(0.1)
    return False


_OPEN_ELSEWHERE = """
import json, sys, bottomless
settings = bottomless.Settings(**json.loads(sys.argv[2]))
open(sys.argv[3], "w").close()  # about to open: the other process's upload reply may come
db = bottomless.connect(sys.argv[1], settings)
status = bottomless.status(db)
db.close()
print(json.dumps([status["generation"], status["last_replicated_commit"]]))
"""


def test_an_open_elsewhere_waits_for_an_upload_in_flight(tmp_path: Any) -> None:
    """Process A's uploader has put commit N+1 in the bucket but not recorded it yet, and A has
    spooled another commit since; process B opens the database meanwhile. B waits for A's
    upload to be recorded, ships what is spooled and continues the lineage. Before, B judged
    the local file against the older state, branched a new generation from commit N and the
    bucket lost N+1's changes for good."""
    values = {"backend": "file", "bucket": str(tmp_path / "bucket"), "durability": "async",
              "max_lag": 2.0}
    settings = bottomless.Settings(**values)  # type: ignore[arg-type]
    path = str(tmp_path / "two.db")
    db = bottomless.connect(path, settings)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE x(a)")
    db.execute("CREATE TABLE y(a)")
    db.execute("INSERT INTO x VALUES ('n')")
    bottomless.wait_durable(db, WAIT)
    generation = bottomless.status(db)["generation"]
    store = replicator(path).shipper.store
    real_put = store.put_once
    landed = threading.Event()
    opening = str(tmp_path / "b-opens")

    def slow_reply(key: str, data: bytes) -> None:
        real_put(key, data)
        if not landed.is_set():
            landed.set()
            # in the bucket, the reply not back yet: until B is well into its open
            deadline = time.monotonic() + WAIT
            while not os.path.exists(opening) and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(1.0)

    store.put_once = slow_reply
    db.execute("BEGIN; INSERT INTO x VALUES ('e1'); INSERT INTO y VALUES ('e1'); COMMIT")
    assert landed.wait(WAIT), "the uploader never shipped"
    db.execute("INSERT INTO x VALUES ('e2')")  # spooled while e1's upload is in flight
    other = subprocess.run(
        [sys.executable, "-c", _OPEN_ELSEWHERE, path, json.dumps(values), opening],
        capture_output=True, text=True, timeout=3 * WAIT, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("LIBSQL_BOTTOMLESS_")},
    )
    assert other.returncode == 0, other.stderr[-3000:]
    opened_at = json.loads(other.stdout.splitlines()[-1])
    bottomless.wait_durable(db, WAIT)
    status = bottomless.status(db)
    db.close()
    assert opened_at == [generation, status["last_replicated_commit"]], other.stderr[-3000:]
    copy = str(tmp_path / "copy.db")
    bottomless.restore(copy, settings, db_name="two.db")
    for table in ("x", "y"):
        query = f"SELECT a FROM {table} ORDER BY a"
        assert rows(copy, query) == rows(path, query)
    assert rows(copy, "SELECT a FROM y") == [("e1",)]

"""Store faults: a flaky network in front of a real S3 server, and SQLite-style I/O-error runs.

1. A fault-injecting proxy (``faultproxy.py``) sits between s3fs/botocore and SeaweedFS and
   resets connections (before and after the server applied a write), answers 500/503/SlowDown,
   stalls past the read timeout, or truncates responses. Every COMMIT must either succeed or
   fail with an SQLite I/O error caused by a clear bottomless error; the bucket must end up
   holding exactly what the local file holds.
2. Store operation number N (PUT, GET, LIST, ...) fails, for N = 1, 2, 3, ... over a fixed
   workload, as SQLite's own I/O-error tests do, until a run finishes without reaching N.
   After each run the local file is intact and a restore equals it.

``pytest -s`` prints a tally of the faults injected.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import apsw
import pytest
from faultproxy import FaultProxy
from helpers import integrity, remove_db, replicator, restored, rows

import bottomless
from bottomless.backends.base import PageStore
from bottomless.backends.registry import open_store
from bottomless.errors import (
    BottomlessError,
    ReplicaConflictError,
    ReplicaNotFoundError,
    StoreError,
)
from bottomless.sqlite import vfs

pytestmark = pytest.mark.s3

MakeSettings = Callable[..., bottomless.Settings]
# what failed: an operation, or at least the object (ObjectExistsError names only the key)
WHAT = re.compile(r"\b(PUT|GET|HEAD|LIST|DELETE)\b|/generations/|/lease\b")


def _tally(title: str, counts: dict[str, int]) -> None:
    shown = ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none"
    print(f"\n[faults] {title}: {shown}")


def _direct(s3_settings: dict[str, Any], **overrides: Any) -> bottomless.Settings:
    return bottomless.Settings(**{**s3_settings, **overrides})


@contextlib.contextmanager
def _proxy(upstream: str, **options: Any) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream, **options)
    proxy.faults_enabled = False
    with proxy:
        yield proxy


def _read(path: str, sql: str) -> list[Any]:
    """Read with plain SQLite, read-write: a hot journal left by a failed commit is rolled back
    first, as any SQLite opener does (a read-only connection would refuse to)."""
    db = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READWRITE)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def _assert_clear(error: BaseException, endpoint: str) -> BottomlessError:
    """``error`` is SQLite's I/O error, caused by a bottomless error that says what failed."""
    assert isinstance(error, apsw.IOError), f"{type(error).__name__}: {error}"
    cause = error.__cause__
    assert isinstance(cause, BottomlessError), f"cause is {type(cause).__name__}: {cause}"
    message = str(cause)
    assert message.strip(), "empty error message"
    assert endpoint in message, f"endpoint missing from {message!r}"
    assert WHAT.search(message), f"neither operation nor object in {message!r}"
    return cause


# ---------------------------------------------------------------- the proxy itself


def test_proxy_is_transparent(tmp_path: Any, seaweed: Any,
                              s3_settings: dict[str, Any]) -> None:
    with _proxy(seaweed.endpoint) as proxy:
        settings = _direct(s3_settings, endpoint=proxy.endpoint)
        path = str(tmp_path / "clear.db")
        db = bottomless.connect(path, settings)
        db.execute("CREATE TABLE t(x)")
        db.executemany("INSERT INTO t VALUES(?)", [(i,) for i in range(5)])
        db.close()
        copy = restored(tmp_path, settings, "clear.db")  # GETs and LISTs through the proxy
        assert proxy.counts["forwarded"] == proxy.counts["requests"] > 0
        assert proxy.faults() == {}
    assert rows(copy) == rows(path) == [(i,) for i in range(5)]


@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_a_sync_commit_is_one_put_and_nothing_else(tmp_path: Any, seaweed: Any,
                                                   s3_settings: dict[str, Any],
                                                   mode: str) -> None:
    """The commit path of sync mode is one create-only PUT: no LIST, HEAD, GET or second PUT."""
    with _proxy(seaweed.endpoint) as proxy:
        settings = _direct(s3_settings, endpoint=proxy.endpoint)
        path = str(tmp_path / "app.db")
        db = bottomless.connect(path, settings)
        try:
            db.execute(f"PRAGMA journal_mode={mode}")
            db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
            before = len(proxy.seen)
            for i in range(20):
                db.execute("INSERT INTO t(v) VALUES (?)", (f"row {i}",))
            # a lease renewal (its own thread, every 10 s) may fall in: not the commit path
            during = [r for r in proxy.seen[before:] if "/lease" not in r]
        finally:
            db.close()
    assert len(during) == 20, during
    assert all(r.startswith("PUT /") and "/commits/" in r for r in during), during
    assert len(set(during)) == 20  # twenty different objects, none sent twice


# ---------------------------------------------------------------- commits under faults

@pytest.mark.parametrize(("mode", "rate", "retries", "timeout", "commits", "seed"), [
    ("wal", 0.10, 2, 2.0, 60, 1),
    ("delete", 0.10, 2, 2.0, 60, 2),
    # with retries the 10% above rarely fails a commit; these do, so failed commits get checked
    ("wal", 0.25, 0, 1.0, 40, 3),
    ("delete", 0.25, 0, 1.0, 40, 4),
])
def test_commits_under_faults(tmp_path: Any, seaweed: Any, s3_settings: dict[str, Any],
                              mode: str, rate: float, retries: int, timeout: float,
                              commits: int, seed: int) -> None:
    with _proxy(seaweed.endpoint, rate=rate, seed=seed, stall_seconds=timeout + 1) as proxy:
        settings = _direct(s3_settings, endpoint=proxy.endpoint, timeout=timeout,
                           max_retries=retries)
        path = str(tmp_path / "app.db")
        db = bottomless.connect(path, settings)
        assert db.execute(f"PRAGMA journal_mode={mode}").fetchone()[0] == mode
        db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        acknowledged: list[int] = []
        failed: list[int] = []
        causes: Counter[str] = Counter()
        proxy.faults_enabled = True
        started = time.monotonic()
        for i in range(commits):
            try:
                db.execute("INSERT INTO t VALUES(?, ?)", (i, f"row {i} " + "x" * 200))
            except apsw.IOError as e:
                cause = _assert_clear(e, proxy.endpoint)
                causes[type(cause).__name__] += 1
                failed.append(i)
                assert bottomless.status(db)["last_error"], "status does not show the error"
            else:
                acknowledged.append(i)
        elapsed = time.monotonic() - started
        proxy.faults_enabled = False
        for attempt in range(3):  # resumes (a 1 s timeout may meet a slow server once)
            try:
                db.execute("INSERT INTO t VALUES(?, 'after the faults')", (commits,))
                break
            except apsw.IOError:
                assert attempt < 2, "commits did not resume after the faults"
        acknowledged.append(commits)
        db.close()
        faults = proxy.faults()
        _tally(f"{mode}, rate {rate}, max_retries {retries}: {commits} commits in"
               f" {elapsed:.1f}s, ok={len(acknowledged) - 1}"
               f" failed={len(failed)} {dict(causes)}; requests={proxy.counts['requests']}",
               faults)

    assert sum(faults.values()) > 0, "no fault was injected: the test tested nothing"
    assert _read(path, "PRAGMA integrity_check") == [("ok",)]
    local = [r[0] for r in _read(path, "SELECT id FROM t ORDER BY id")]
    assert set(acknowledged) <= set(local), "an acknowledged commit is missing locally"
    assert not set(failed) & set(local), "a commit that reported failure is in the local file"
    copy = restored(tmp_path, _direct(s3_settings), "app.db")  # no proxy
    assert integrity(copy) == "ok"
    assert rows(copy, "SELECT * FROM t ORDER BY id") == _read(path, "SELECT * FROM t ORDER BY id")


# ---------------------------------------------------------------- retries are bounded


def test_stalled_store_fails_commit_in_bounded_time(tmp_path: Any, seaweed: Any,
                                                   s3_settings: dict[str, Any]) -> None:
    timeout, retries = 2.0, 1
    with _proxy(seaweed.endpoint, rate=1.0, kinds=["stall"],
                stall_seconds=timeout + 2) as proxy:
        settings = _direct(s3_settings, endpoint=proxy.endpoint, timeout=timeout,
                           max_retries=retries)
        path = str(tmp_path / "stall.db")
        db = bottomless.connect(path, settings)
        db.execute("CREATE TABLE t(x)")
        proxy.faults_enabled = True
        started = time.monotonic()
        with pytest.raises(apsw.IOError) as info:
            db.execute("INSERT INTO t VALUES(1)")
        elapsed = time.monotonic() - started
        proxy.faults_enabled = False
        cause = _assert_clear(info.value, proxy.endpoint)
        assert "timeout" in str(cause).lower() or "timed out" in str(cause).lower(), cause
        # the PUT's attempts (and botocore's backoff between them, under a second here), then
        # one read, without retries, of whether the last one landed
        bound = (retries + 2) * timeout + 1.8
        _tally(f"all requests stalled: commit failed after {elapsed:.1f}s (bound {bound:.0f}s)",
               proxy.faults())
        assert elapsed < bound, f"one failed commit took {elapsed:.1f}s"
        db.execute("INSERT INTO t VALUES(2)")
        db.close()
    assert _read(path, "SELECT * FROM t") == [(2,)]


@pytest.mark.parametrize("retries", [0, 1])
def test_max_retries_is_the_number_of_retries(seaweed: Any, s3_settings: dict[str, Any],
                                             retries: int) -> None:
    with _proxy(seaweed.endpoint, rate=1.0, kinds=["http500"]) as proxy:
        store = open_store(
            _direct(s3_settings, endpoint=proxy.endpoint, max_retries=retries)
        )
        try:
            proxy.faults_enabled = True
            with pytest.raises(StoreError):
                store.put_if_absent("retries/probe", b"x")
            proxy.faults_enabled = False
        finally:
            store.close()
        assert proxy.faults()["http500"] == retries + 1


# ---------------------------------------------------------------- writes the client never heard of

def test_failed_fork_is_not_the_replica(tmp_path: Any, seaweed: Any,
                                        s3_settings: dict[str, Any]) -> None:
    with _proxy(seaweed.endpoint, rate=1.0, kinds=["reset_after"]) as proxy:
        settings = _direct(s3_settings, endpoint=proxy.endpoint, timeout=2, max_retries=0)
        path = str(tmp_path / "fork.db")
        db = bottomless.connect(path, settings)
        db.execute("CREATE TABLE t(x)")
        db.execute("INSERT INTO t VALUES(1)")
        proxy.faults_enabled, proxy.match = True, "/commits/"
        with pytest.raises(apsw.IOError):  # the commit object is stored: an orphan
            db.execute("INSERT INTO t VALUES(2)")
        proxy.match = "/snapshots/"
        with pytest.raises(apsw.IOError):  # the orphan forces a new generation, stored too
            db.execute("INSERT INTO t VALUES(3)")
        proxy.faults_enabled = False
        db.close()
    assert _read(path, "SELECT * FROM t") == [(1,)]
    # A write that landed although its reply was lost is, until the writer next opens or
    # commits, the bucket's newest state (documented). Reopening settles it: the local file,
    # which never committed the failed transactions, is the truth.
    bottomless.connect(path, _direct(s3_settings)).close()
    assert rows(restored(tmp_path, _direct(s3_settings), "fork.db")) == [(1,)]


def test_failed_first_upload_can_be_retried(tmp_path: Any, seaweed: Any,
                                            s3_settings: dict[str, Any]) -> None:
    path = str(tmp_path / "first.db")
    plain = apsw.Connection(path)
    plain.execute("CREATE TABLE t(x); INSERT INTO t VALUES(1)")
    plain.close()
    with _proxy(seaweed.endpoint, rate=1.0, kinds=["reset_after"], match="/snapshots/",
                budget=1) as proxy:
        settings = _direct(s3_settings, endpoint=proxy.endpoint, timeout=2, max_retries=2)
        proxy.faults_enabled = True
        # the manifest lands, its reply is lost; botocore's retry finds it (412) and bottomless
        # recognizes its own bytes: the open succeeds instead of failing half-done
        bottomless.connect(path, settings).close()
        assert proxy.faults() == {"reset_after": 1}
    direct = _direct(s3_settings)
    bottomless.connect(path, direct).close()
    assert rows(restored(tmp_path, direct, "first.db")) == [(1,)]


# ---------------------------------------------------------------- the Nth operation fails


@dataclass
class FaultPlan:
    """Which store operation fails (1-based), and whether a write is applied first."""

    fail_at: int
    after_write: bool = False
    only: str = ""  # count only operations on keys containing this
    seen: list[str] = field(default_factory=list)
    hit: str | None = None

    def tick(self, op: str, key: str) -> bool:
        """Count one operation; tell whether it is the one to fail."""
        if self.only not in key:
            return False
        self.seen.append(f"{op} {key}")
        if len(self.seen) == self.fail_at:
            self.hit = f"#{self.fail_at} {op} {key}"
            return True
        return False


class FaultyStore(PageStore):
    """Wraps a real store and fails the operation that ``plan`` names, once."""

    def __init__(self, inner: PageStore, plan: FaultPlan) -> None:
        self.inner = inner
        self.plan = plan
        self.backend = inner.backend

    @property
    def location(self) -> str:
        return self.inner.location

    def _fail(self, op: str, key: str) -> StoreError:
        return StoreError(f"{self.location}: {op} {key} failed: injected fault {self.plan.hit}")

    def _reading(self, op: str, key: str, call: Callable[[], Any]) -> Any:
        if self.plan.tick(op, key):
            raise self._fail(op, key)
        return call()

    def _writing(self, op: str, key: str, call: Callable[[], Any]) -> Any:
        if not self.plan.tick(op, key):
            return call()
        if self.plan.after_write:  # the write happened; the client never heard back
            call()
        raise self._fail(op, key)

    def put_if_absent(self, key: str, data: bytes) -> None:
        self._writing("PUT", key, lambda: self.inner.put_if_absent(key, data))

    def put_if_match(self, key: str, data: bytes, version: str) -> str:
        result: str = self._writing("PUT", key, lambda: self.inner.put_if_match(key, data, version))
        return result

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        result: tuple[bytes, str] = self._reading("GET", key, lambda: self.inner.get_versioned(key))
        return result

    def get(self, key: str) -> bytes:
        result: bytes = self._reading("GET", key, lambda: self.inner.get(key))
        return result

    def get_range(self, key: str, start: int, end: int) -> bytes:
        result: bytes = self._reading("GET", key, lambda: self.inner.get_range(key, start, end))
        return result

    def exists(self, key: str) -> bool:
        result: bool = self._reading("HEAD", key, lambda: self.inner.exists(key))
        return result

    def list_keys(self, prefix: str) -> list[str]:
        result: list[str] = self._reading("LIST", prefix, lambda: self.inner.list_keys(prefix))
        return result

    def list_children(self, prefix: str) -> list[str]:
        result: list[str] = self._reading("LIST", prefix, lambda: self.inner.list_children(prefix))
        return result

    def delete(self, key: str) -> None:
        self._writing("DELETE", key, lambda: self.inner.delete(key))

    def close(self) -> None:
        self.inner.close()


def _content(path: str) -> list[Any]:
    """Everything a database holds, read with plain SQLite (nothing for a missing file)."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return []
    tables = _read(path, "SELECT name, sql FROM sqlite_master ORDER BY name")
    found: list[Any] = list(tables)
    for (name, _sql) in tables:
        found.append(_read(path, f'SELECT * FROM "{name}" ORDER BY 1'))
    return found


def _restored_content(tmp_path: Any, settings: bottomless.Settings, db_name: str) -> list[Any]:
    try:
        return _content(restored(tmp_path, settings, db_name))
    except ReplicaNotFoundError:
        return []


class Session:
    """One run of the workload; a failed statement is retried once, as an application would.

    The first failure is kept with the step it happened in; a failed open ends the run.
    """

    def __init__(self, path: str, settings: bottomless.Settings, mode: str,
                 wrap: Callable[[str], None]) -> None:
        self.path = path
        self.settings = settings
        self.mode = mode
        self.wrap = wrap  # called after each connect (the replicator-store injection)
        self.step = ""
        self.errors: list[tuple[str, BaseException]] = []  # (step, error), first one first
        self.acknowledged: list[int] = []

    def _connect(self, step: str) -> apsw.Connection:
        self.step = step
        db = bottomless.connect(self.path, self.settings)
        self.wrap(self.path)
        return db

    def _statement(self, db: apsw.Connection, step: str, sql: str,
                   params: tuple[Any, ...] = ()) -> None:
        self.step = step
        try:
            # fetched, so that a statement that returns rows (the journal-mode pragma)
            # commits inside this call and not when its cursor is collected
            db.execute(sql, params).fetchall()
        except apsw.IOError as e:
            self.errors.append((step, e))
            # if the failed commit had reached the local file, this would break the key
            db.execute(sql, params).fetchall()

    def run(self) -> None:
        try:
            self._run()
        except Exception as e:
            self.errors.append((self.step, e))
            raise

    def _run(self) -> None:
        db = self._connect("open")
        try:
            self._statement(db, "journal mode", f"PRAGMA journal_mode={self.mode}")
            self._statement(db, "create table", "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
            for i in range(1, 4):
                self._statement(db, f"insert {i}", "INSERT INTO t VALUES(?, ?)",
                                (i, "v" * (1500 * i)))
                self.acknowledged.append(i)
        finally:
            db.close()
        db = self._connect("reopen")
        try:
            self._statement(db, "insert 4", "INSERT INTO t VALUES(4, 'after reopen')")
            self.acknowledged.append(4)
        finally:
            db.close()


def _check_failure(error: BaseException, step: str) -> None:
    """A store fault surfaces as a bottomless error (at open) or SQLite's I/O error."""
    if isinstance(error, BottomlessError):
        assert step in ("open", "reopen"), f"{step}: bare {type(error).__name__} {error}"
        return
    assert isinstance(error, apsw.IOError), f"{step}: {type(error).__name__}: {error}"
    assert isinstance(error.__cause__, BottomlessError), (
        f"{step}: cause is {type(error.__cause__).__name__}: {error.__cause__}"
    )


def _is_lease_leak(step: str, hit: str, error: BaseException | None) -> bool:
    return (step == "open" and "/lease" in hit and isinstance(error, ReplicaConflictError)
            and "another writer" in str(error))


def _nth_operation_runs(tmp_path: Any, make_settings: MakeSettings, monkeypatch: Any,
                        mode: str, inject: str, after_write: bool) -> list[str]:
    """Run the workload failing operation N for N = 1, 2, ...; return the problems found."""
    problems: list[str] = []
    tally: Counter[str] = Counter()
    n = 0
    while True:
        n += 1
        plan = FaultPlan(n, after_write=after_write)
        settings = make_settings("memory")
        path = str(tmp_path / f"n{n}" / "io.db")
        os.makedirs(os.path.dirname(path))

        def wrap(db_path: str, plan: FaultPlan = plan) -> None:
            if inject == "replicator":
                rep = replicator(db_path)
                rep.store = FaultyStore(rep.store, plan)
                lease = getattr(rep, "lease", None)
                if lease is not None:
                    lease.store = rep.store

        with monkeypatch.context() as patch:
            if inject == "open_store":
                real = vfs.open_store
                patch.setattr(vfs, "open_store",
                              lambda s, plan=plan, real=real: FaultyStore(real(s), plan))
            session = Session(path, settings, mode, wrap)
            with contextlib.suppress(Exception):  # kept in session.failure, checked below
                session.run()
        failed_step = session.errors[0][0] if session.errors else ""
        for step, error in session.errors:
            try:
                _check_failure(error, step)
            except AssertionError as wrong:
                problems.append(f"N={n} {plan.hit}: {wrong}")
        if plan.hit is None:
            assert not failed_step, f"N={n}: {failed_step} failed without an injected fault"
            break
        tally[f"fault {plan.hit.split()[1]}"] += 1
        # absorbed: the lease release at close, which may fail (the lease then expires)
        tally[f"failed {failed_step.split()[0]}" if failed_step else "absorbed"] += 1
        where = f"N={n} {plan.hit} during {failed_step or 'nothing (absorbed)'}"
        problem = _check_after_fault(tmp_path, path, settings, session, failed_step)
        if problem is not None and _is_lease_leak(failed_step, plan.hit, problem[1]):
            tally["known lease leak"] += 1
        elif problem is not None:
            problems.append(f"{where}: {problem[0]}")
        remove_db(path)
    _tally(f"Nth operation fails ({inject}, {mode}, after_write={after_write}): {n - 1} runs",
           dict(tally))
    return problems


def _check_after_fault(
    tmp_path: Any, path: str, settings: bottomless.Settings, session: Session,
    failed_step: str,
) -> tuple[str, BaseException | None] | None:
    """The invariants after one faulty run: the first broken one, with its exception."""
    if os.path.exists(path) and os.path.getsize(path) > 0:
        verdict = _read(path, "PRAGMA integrity_check")
        if verdict != [("ok",)]:
            return f"local integrity_check {verdict}", None
    local = _content(path)
    present = [r[0] for r in (local[-1] if local else [])]
    if not set(session.acknowledged) <= set(present):
        return f"acknowledged {session.acknowledged}, the local file has {present}", None
    opened = failed_step not in ("open", "reopen")
    if opened and _restored_content(tmp_path, settings, "io.db") != local:
        return "a restore differs from the local file", None
    # a later open without faults continues, or brings the bucket in step with the file
    try:
        db = bottomless.connect(path, settings)
        with contextlib.suppress(apsw.SQLError):  # no table t if the fault came before it
            db.execute("INSERT INTO t VALUES(100, 'recovered')")
        db.close()
    except Exception as e:  # noqa: BLE001 - reported with its type
        return f"a reopen without faults failed: {type(e).__name__}: {e}", e
    if _restored_content(tmp_path, settings, "io.db") != _content(path):
        return "after a clean reopen, a restore differs from the local file", None
    return None


@pytest.mark.parametrize("mode", ["wal", "delete"])
@pytest.mark.parametrize("inject", ["open_store", "replicator"])
def test_nth_store_operation_fails(tmp_path: Any, make_settings: MakeSettings,
                                   monkeypatch: pytest.MonkeyPatch, mode: str,
                                   inject: str) -> None:
    problems = _nth_operation_runs(tmp_path, make_settings, monkeypatch, mode, inject, False)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_nth_write_applied_but_reported_failed(tmp_path: Any, make_settings: MakeSettings,
                                               monkeypatch: pytest.MonkeyPatch,
                                               mode: str) -> None:
    """The write reached the store but the client got an error (a reset after forwarding).

    The failed statement is retried, as an application would; the retry meets the orphan the
    failed commit left, so the library must move on to a new generation, and a restore must
    equal the local file again.
    """
    problems = _nth_operation_runs(tmp_path, make_settings, monkeypatch, mode, "open_store",
                                   True)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("after_write", [False, True])
def test_failed_open_does_not_keep_the_lease(tmp_path: Any, make_settings: MakeSettings,
                                             monkeypatch: pytest.MonkeyPatch,
                                             after_write: bool) -> None:
    settings = make_settings("memory")
    # lease operations: GET (absent), PUT (create), GET (its version); fail the create
    # after it was applied, or the re-read
    plan = FaultPlan(2 if after_write else 3, after_write=after_write, only="/lease")
    real = vfs.open_store
    monkeypatch.setattr(vfs, "open_store", lambda s: FaultyStore(real(s), plan))
    path = str(tmp_path / "lease.db")
    with pytest.raises(StoreError):
        bottomless.connect(path, settings)
    assert plan.hit is not None
    monkeypatch.setattr(vfs, "open_store", real)
    bottomless.connect(path, settings).close()  # ReplicaConflictError for lease_ttl seconds

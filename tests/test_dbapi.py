"""bottomless.dbapi: sqlite3's behaviour, over the bottomless VFS, with every guarantee kept.

CPython's own sqlite3 suite runs against the module in test_cpython_sqlite3.py; these tests
cover what is bottomless's own: replication through the DB-API, commit failures, errors that
are both DB-API and bottomless classes, threads, and a side-by-side check with sqlite3.
"""

from __future__ import annotations

import datetime
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from faultproxy import FaultProxy
from helpers import FailingStore, remove_db, replicator, restored, rows

import bottomless
import bottomless.dbapi as dbapi
import bottomless.dbapi.types as dbapi_types
from bottomless.errors import StoreError

MakeSettings = Callable[..., bottomless.Settings]



def _with_table(tmp_path: Any, settings: bottomless.Settings, name: str,
                table: str = "t(x)") -> tuple[str, dbapi.Connection]:
    """A replicated file database ``name`` holding an empty ``table``, committed."""
    path = str(tmp_path / name)
    conn = dbapi.connect(path, settings=settings)
    conn.execute(f"CREATE TABLE {table}")
    conn.commit()
    return path, conn


def _break_store(path: str) -> FailingStore:
    rep = replicator(path)
    failing = FailingStore(rep.store)
    rep.store = failing
    return failing


@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_a_file_database_is_replicated_and_comes_back(tmp_path: Any, backend: str,
                                                      make_settings: MakeSettings,
                                                      mode: str) -> None:
    settings = make_settings(backend)
    path = str(tmp_path / "app.db")
    conn = dbapi.connect(path, settings=settings)
    conn.execute(f"PRAGMA journal_mode={mode}")
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t(v) VALUES (?)", [(f"row {i}",) for i in range(50)])
    conn.commit()
    assert bottomless.status(conn)["last_replicated_commit"] >= 1
    conn.close()
    expected = rows(path)
    assert len(expected) == 50
    assert rows(restored(tmp_path, settings, "app.db")) == expected
    if backend == "memory":
        return  # the memory backend lives only as long as the process
    remove_db(path)
    back = dbapi.connect(path, settings=settings)
    assert back.execute("SELECT * FROM t ORDER BY id").fetchall() == expected
    back.close()


def test_memory_databases_are_not_replicated(tmp_path: Any, make_settings: MakeSettings) -> None:
    settings = make_settings("file")
    for name in (":memory:", ""):
        conn = dbapi.connect(name, settings=settings)
        conn.execute("CREATE TABLE t(x)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.commit()
        with pytest.raises(bottomless.BottomlessError):
            bottomless.status(conn)
        conn.close()
    assert not os.path.exists(settings.bucket)


def test_uri_parameters_override_settings_and_the_environment(
        tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    ignored = make_settings("file")
    chosen = str(tmp_path / "chosen")
    monkeypatch.setenv("LIBSQL_BOTTOMLESS_BUCKET", str(tmp_path / "from-env"))
    monkeypatch.setenv("LIBSQL_BOTTOMLESS_BACKEND", "file")
    path = tmp_path / "u.db"
    conn = dbapi.connect(f"file:{path}?bucket={chosen}&db_name=named", uri=True,
                         settings=ignored)
    conn.execute("CREATE TABLE t(x)")
    conn.commit()
    conn.close()
    assert os.path.isdir(os.path.join(chosen, "named"))
    assert not os.path.exists(ignored.bucket)
    # without settings, the environment applies
    env_conn = dbapi.connect(str(tmp_path / "e.db"))
    env_conn.execute("CREATE TABLE t(x)")
    env_conn.commit()
    env_conn.close()
    assert os.path.isdir(os.path.join(tmp_path / "from-env", "e.db"))


def test_an_explicit_vfs_in_a_uri_opens_without_replication(tmp_path: Any) -> None:
    path = tmp_path / "plain.db"
    conn = dbapi.connect(f"file:{path}?vfs=unix", uri=True)
    conn.execute("CREATE TABLE t(x)")
    conn.commit()
    with pytest.raises(bottomless.BottomlessError):
        bottomless.status(conn)
    conn.close()
    assert not os.path.exists(str(path) + "-bottomless")


def test_a_bad_setting_is_both_a_config_error_and_an_operational_error(tmp_path: Any) -> None:
    with pytest.raises(bottomless.ConfigError) as info:
        dbapi.connect(f"file:{tmp_path / 'x.db'}?durability=sometimes&backend=file", uri=True)
    assert isinstance(info.value, dbapi.OperationalError)
    assert "durability" in str(info.value) and "sync" in str(info.value)
    with pytest.raises(dbapi.Error):
        dbapi.connect(f"file:{tmp_path / 'y.db'}?no_such_setting=1", uri=True)


def test_a_conflicting_replica_is_both_error_kinds(tmp_path: Any,
                                                  make_settings: MakeSettings) -> None:
    settings = make_settings("file", db_name="shared")
    first = dbapi.connect(str(tmp_path / "a.db"), settings=settings)
    first.execute("CREATE TABLE t(x)")
    first.commit()
    first.close()
    other = sqlite3.connect(str(tmp_path / "b.db"))
    other.execute("CREATE TABLE u(y)")
    other.commit()
    other.close()
    with pytest.raises(dbapi.OperationalError) as info:
        dbapi.connect(str(tmp_path / "b.db"), settings=settings)
    assert isinstance(info.value, bottomless.ReplicaConflictError)
    assert isinstance(info.value.__cause__, bottomless.ReplicaConflictError)
    assert "initial_replication" in str(info.value)


@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_a_failed_upload_fails_commit_rolls_back_and_a_retry_works(
        tmp_path: Any, make_settings: MakeSettings, mode: str) -> None:
    settings = make_settings("file")
    path = str(tmp_path / "f.db")
    conn = dbapi.connect(path, settings=settings)
    conn.execute(f"PRAGMA journal_mode={mode}")
    conn.execute("CREATE TABLE t(x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    failing = _break_store(path)
    failing.down = True
    conn.execute("INSERT INTO t VALUES (2)")
    with pytest.raises(dbapi.OperationalError) as info:
        conn.commit()
    error = info.value
    assert isinstance(error, StoreError) and isinstance(error, bottomless.BottomlessError)
    assert "not committed" in str(error) and "injected outage" in str(error)
    assert error.sqlite_errorname is not None and error.sqlite_errorname.startswith("SQLITE_IOERR")
    assert not conn.in_transaction
    assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
    assert rows(restored(tmp_path, settings, "f.db")) == [(1,)]
    # the store is back: the application retries its transaction
    failing.down = False
    conn.execute("INSERT INTO t VALUES (2)")
    conn.commit()
    conn.close()
    assert rows(path) == rows(restored(tmp_path, settings, "f.db")) == [(1,), (2,)]


def test_a_failed_upload_in_a_with_block_raises_and_keeps_nothing(
        tmp_path: Any, make_settings: MakeSettings) -> None:
    settings = make_settings("file")
    path, conn = _with_table(tmp_path, settings, "w.db")
    _break_store(path).down = True
    with pytest.raises(dbapi.OperationalError), conn:
        conn.execute("INSERT INTO t VALUES (1)")
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    conn.close()
    assert rows(path) == rows(restored(tmp_path, settings, "w.db")) == []


def test_with_autocommit_false_a_failed_commit_leaves_a_transaction_open(
        tmp_path: Any, make_settings: MakeSettings) -> None:
    """PEP 249's mode, which SQLAlchemy recommends: always in a transaction. After a commit
    whose upload failed, the app's retry must not run statement by statement, each statement
    committed on its own."""
    settings = make_settings("file")
    path = str(tmp_path / "ac.db")
    conn = dbapi.connect(path, settings=settings, autocommit=False)
    conn.execute("CREATE TABLE t(x UNIQUE)")
    conn.commit()
    failing = _break_store(path)
    failing.down = True
    conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(dbapi.OperationalError):
        conn.commit()
    assert conn.in_transaction
    failing.down = False
    conn.execute("INSERT INTO t VALUES (2)")  # the retry fails half-way: nothing of it stays
    with pytest.raises(dbapi.IntegrityError):
        conn.execute("INSERT INTO t VALUES (2)")
    conn.rollback()
    conn.close()
    assert rows(path) == rows(restored(tmp_path, settings, "ac.db")) == []


_CTE_INSERT = "WITH v(x) AS (VALUES (1), (2), (3)) INSERT INTO t SELECT x FROM v RETURNING x"


def test_a_with_insert_returning_commits_in_execute_and_raises_a_failed_upload(
        tmp_path: Any, make_settings: MakeSettings) -> None:
    settings = make_settings("file")
    path, conn = _with_table(tmp_path, settings, "cte.db")
    cursor = conn.execute(_CTE_INSERT)  # no implicit BEGIN before WITH, as in sqlite3
    assert not conn.in_transaction and cursor.rowcount == -1
    assert cursor.fetchone() == (1,)  # one row read: the commit is already done
    assert rows(restored(tmp_path, settings, "cte.db")) == [(1,), (2,), (3,)]
    assert cursor.fetchall() == [(2,), (3,)] and cursor.rowcount == -1
    _break_store(path).down = True
    with pytest.raises(dbapi.OperationalError, match="not committed") as info:
        conn.execute(_CTE_INSERT.replace("(1), (2), (3)", "(4), (5)"))
    assert isinstance(info.value, StoreError)
    cause = info.value.__cause__  # the guide promises bottomless's own error there
    assert isinstance(cause, StoreError) and not isinstance(cause, dbapi.Error)
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (3,)
    conn.close()
    assert rows(path) == [(1,), (2,), (3,)]


def test_a_blob_write_whose_commit_cannot_upload_raises_a_dbapi_error(
        tmp_path: Any, make_settings: MakeSettings) -> None:
    """Outside a transaction, closing the blob is the commit of what was written."""
    settings = make_settings("file")
    path = str(tmp_path / "blob.db")
    conn = dbapi.connect(path, settings=settings)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB)")
    conn.execute("INSERT INTO t VALUES (1, zeroblob(4))")
    conn.commit()
    _break_store(path).down = True
    with pytest.raises(dbapi.OperationalError) as info, conn.blobopen("t", "b", 1) as blob:
        blob.write(b"ABCD")
    assert isinstance(info.value, StoreError)
    assert conn.execute("SELECT b FROM t").fetchone() == (bytes(4),)
    conn.close()


def test_an_autocommit_statement_that_cannot_upload_fails_itself(
        tmp_path: Any, make_settings: MakeSettings) -> None:
    settings = make_settings("memory")
    path = str(tmp_path / "a.db")
    conn = dbapi.connect(path, settings=settings, isolation_level=None)
    conn.execute("CREATE TABLE t(x)")
    _break_store(path).down = True
    with pytest.raises(StoreError):
        conn.execute("INSERT INTO t VALUES (1)")
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    conn.close()


@pytest.mark.s3
@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_a_sync_commit_through_the_dbapi_is_one_put(tmp_path: Any, seaweed: Any,
                                                    s3_settings: dict[str, Any],
                                                    mode: str) -> None:
    proxy = FaultProxy(seaweed.endpoint)
    proxy.faults_enabled = False
    with proxy:
        settings = bottomless.Settings(**{**s3_settings, "endpoint": proxy.endpoint})
        path = str(tmp_path / "one.db")
        conn = dbapi.connect(path, settings=settings)
        try:
            conn.execute(f"PRAGMA journal_mode={mode}")
            conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
            conn.commit()
            before = len(proxy.seen)
            for i in range(10):
                conn.execute("INSERT INTO t(v) VALUES (?)", (f"row {i}",))
                conn.execute("UPDATE t SET v = v || '!' WHERE id = ?", (i + 1,))
                conn.commit()
            during = proxy.seen[before:]
        finally:
            conn.close()
    assert len(during) == 10, during
    assert all(r.startswith("PUT /") and "/commits/" in r for r in during), during


def _in_threads(work: Callable[[int], None], count: int) -> list[BaseException]:
    """Run ``work(n)`` in ``count`` threads at once; return what they raised."""
    errors: list[BaseException] = []

    def guarded(worker: int) -> None:
        try:
            work(worker)
        except BaseException as e:  # noqa: BLE001 - returned to the test, which asserts
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_threads_share_a_connection_with_check_same_thread_off(
        tmp_path: Any, make_settings: MakeSettings) -> None:
    settings = make_settings("file")
    path = str(tmp_path / "threads.db")
    conn = dbapi.connect(path, settings=settings, check_same_thread=False,
                         isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE t(worker INTEGER, i INTEGER)")

    def work(worker: int) -> None:
        for i in range(25):
            conn.execute("INSERT INTO t VALUES (?, ?)", (worker, i))
            conn.execute("SELECT count(*) FROM t").fetchone()

    assert _in_threads(work, 4) == []
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (100,)
    conn.close()
    assert len(rows(restored(tmp_path, settings, "threads.db"))) == 100


def test_a_connection_per_thread_on_one_file(tmp_path: Any, make_settings: MakeSettings) -> None:
    settings = make_settings("file")
    path = str(tmp_path / "per-thread.db")
    setup = dbapi.connect(path, settings=settings)
    setup.execute("PRAGMA journal_mode=wal")
    setup.execute("CREATE TABLE t(worker INTEGER, i INTEGER)")
    setup.commit()

    def work(worker: int) -> None:
        own = dbapi.connect(path, settings=settings, timeout=30)
        for i in range(20):
            with own:
                own.execute("INSERT INTO t VALUES (?, ?)", (worker, i))
        own.close()

    errors = _in_threads(work, 3)
    setup.close()
    assert errors == []
    assert sorted(rows(restored(tmp_path, settings, "per-thread.db"))) == sorted(
        (w, i) for w in range(3) for i in range(20))
    # no commit was mistaken for a crash's orphan (each of those forks a new generation)
    generations = os.listdir(os.path.join(settings.bucket, "per-thread.db", "generations"))
    assert len(generations) == 1, generations


def test_the_wrong_thread_is_refused(tmp_path: Any, make_settings: MakeSettings) -> None:
    conn = dbapi.connect(str(tmp_path / "t.db"), settings=make_settings("memory"))
    seen: list[BaseException] = []

    def other() -> None:
        try:
            conn.execute("SELECT 1")
        except BaseException as e:  # noqa: BLE001 - asserted below
            seen.append(e)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert len(seen) == 1 and isinstance(seen[0], dbapi.ProgrammingError)
    conn.close()


def test_backup_into_a_replicated_database(tmp_path: Any, make_settings: MakeSettings) -> None:
    source = dbapi.connect(":memory:")
    source.execute("CREATE TABLE t(x)")
    source.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(300)])
    source.commit()
    settings = make_settings("file")
    target = dbapi.connect(str(tmp_path / "copy.db"), settings=settings)
    steps: list[int] = []
    source.backup(target, pages=1, progress=lambda status, left, total: steps.append(left))
    assert steps and steps[-1] == 0
    target.close()
    source.close()
    assert rows(restored(tmp_path, settings, "copy.db")) == [(i,) for i in range(300)]


# ---------------------------------------------------------------- side by side with sqlite3

def _script(module: Any, path: str) -> list[Any]:
    """One workload, recording what a program could observe."""
    seen: list[Any] = []
    conn = module.connect(path, detect_types=module.PARSE_DECLTYPES)
    cur = conn.cursor()
    seen.append((cur.rowcount, cur.lastrowid, cur.description))
    cur.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, born date, score REAL)")
    seen.append((cur.rowcount, cur.description, conn.in_transaction))
    cur.execute("INSERT INTO t(name, born, score) VALUES (?, ?, ?)",
                ("ada", datetime.date(1815, 12, 10), 1.5))
    seen.append((cur.rowcount, cur.lastrowid, conn.in_transaction))
    cur.executemany("INSERT INTO t(name, score) VALUES (:name, :score)",
                    [{"name": f"n{i}", "score": i} for i in range(5)])
    seen.append((cur.rowcount, cur.lastrowid))
    cur.execute("UPDATE t SET score = score + 1 WHERE score > ?", (1,))
    seen.append(cur.rowcount)
    cur.execute("SELECT * FROM t WHERE id < 0")
    seen.append((cur.description, cur.fetchall(), cur.rowcount))
    cur.execute("SELECT id, name, born FROM t ORDER BY id")
    seen.append((cur.fetchone(), cur.fetchmany(2), cur.fetchall(), cur.fetchone()))
    conn.row_factory = module.Row
    row = conn.execute("SELECT name AS Name, score FROM t WHERE id = 1").fetchone()
    seen.append((row["name"], row["SCORE"], row[0], list(row.keys()), len(row), tuple(row)))
    conn.row_factory = None
    cur.execute("INSERT INTO t(name) VALUES ('r') RETURNING id, name")
    seen.append((cur.rowcount, cur.fetchall(), cur.rowcount))
    for bad in [("SELECT 1; SELECT 2", ()), ("SELECT ?", (1, 2)), ("SELECT ?", (object(),)),
                ("INSERT INTO t(id) VALUES (1)", ()), ("SELEC 1", ()), ("SELECT :a", {"b": 1})]:
        try:
            cur.execute(*bad)
            seen.append("no error")
        except module.Error as e:
            seen.append((type(e).__name__, getattr(e, "sqlite_errorname", None)))
    conn.commit()
    seen.append(conn.in_transaction)
    conn.isolation_level = None
    conn.execute("INSERT INTO t(name) VALUES ('auto')")
    seen.append((conn.in_transaction, conn.total_changes))
    conn.create_function("twice", 1, lambda v: v * 2, deterministic=True)
    seen.append(conn.execute("SELECT twice(21)").fetchone())
    conn.create_function("boom", 0, lambda: 1 / 0)
    try:
        conn.execute("SELECT boom()").fetchone()
    except module.OperationalError as e:
        seen.append(str(e))
    seen.append(list(conn.iterdump())[:3])
    conn.close()
    try:
        conn.execute("SELECT 1")
    except module.ProgrammingError as e:
        seen.append(str(e))
    return seen


def test_the_same_program_sees_the_same_as_with_sqlite3(tmp_path: Any,
                                                        make_settings: MakeSettings,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIBSQL_BOTTOMLESS_BACKEND", "file")
    monkeypatch.setenv("LIBSQL_BOTTOMLESS_BUCKET", str(tmp_path / "bucket"))
    expected = _script(sqlite3, str(tmp_path / "stdlib.db"))
    got = _script(dbapi, str(tmp_path / "bottomless.db"))
    assert got == expected
    assert rows(restored(tmp_path, make_settings("file", bucket=str(tmp_path / "bucket")),
                         "bottomless.db"), "SELECT * FROM t ORDER BY id") == rows(
        str(tmp_path / "stdlib.db"), "SELECT * FROM t ORDER BY id")


def test_a_file_name_that_is_no_valid_db_name_replicates_under_a_derived_one(
        tmp_path: Any, make_settings: MakeSettings) -> None:
    settings = make_settings("file")
    path = str(tmp_path / "données app.db")
    conn = dbapi.connect(path, settings=settings)
    conn.execute("CREATE TABLE t(x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    name = bottomless.status(conn)["db_name"]
    conn.close()
    assert name.startswith("donn_es_app.db-") and len(name) == len("donn_es_app.db-") + 8
    assert rows(restored(tmp_path, settings, name)) == [(1,)]
    remove_db(path)
    back = dbapi.connect(path, settings=settings)  # the same name again: restored
    assert back.execute("SELECT x FROM t").fetchall() == [(1,)]
    back.close()


def test_fetchmany_of_zero_or_less_fetches_every_row(
        tmp_path: Any, make_settings: MakeSettings) -> None:
    conn = dbapi.connect(str(tmp_path / "m.db"), settings=make_settings("memory"))
    conn.execute("CREATE TABLE t(x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(5)])
    for size in (0, -1):
        assert len(conn.execute("SELECT x FROM t").fetchmany(size)) == 5
    cursor = conn.execute("SELECT x FROM t")
    cursor.arraysize = 0
    assert len(cursor.fetchmany()) == 5
    conn.close()


def test_serializing_a_schema_that_is_not_attached_is_an_error_as_in_sqlite3(
        tmp_path: Any, make_settings: MakeSettings) -> None:
    conn = dbapi.connect(str(tmp_path / "s.db"), settings=make_settings("memory"))
    conn.execute("CREATE TABLE t(x)")
    assert conn.serialize()[:16] == b"SQLite format 3\0"
    with pytest.raises(dbapi.OperationalError, match="unable to serialize 'nope'"):
        conn.serialize(name="nope")
    conn.close()


def test_errors_are_also_the_standard_librarys_classes(tmp_path: Any,
                                                      make_settings: MakeSettings) -> None:
    path, conn = _with_table(tmp_path, make_settings("file"), "e.db", "t(x PRIMARY KEY)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    with pytest.raises(sqlite3.IntegrityError):  # code written for sqlite3 catches it
        conn.execute("INSERT INTO t VALUES (1)")
    conn.rollback()
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        conn.execute("SELECT * FROM nope")
    _break_store(path).down = True
    conn.execute("INSERT INTO t VALUES (2)")
    with pytest.raises(sqlite3.OperationalError) as info:
        conn.commit()
    assert isinstance(info.value, StoreError)
    conn.close()
    for name in ("Warning", "Error", "InterfaceError", "DatabaseError", "DataError",
                 "OperationalError", "IntegrityError", "InternalError", "ProgrammingError",
                 "NotSupportedError"):
        assert issubclass(getattr(dbapi, name), getattr(sqlite3, name)), name


def test_a_connection_is_a_sqlite3_connection_whose_stdlib_part_is_closed(
        tmp_path: Any, make_settings: MakeSettings) -> None:
    conn = dbapi.connect(str(tmp_path / "i.db"), settings=make_settings("memory"))
    assert isinstance(conn, sqlite3.Connection)  # what pandas checks
    # the standard library's own functions, handed it, fail cleanly instead of crashing
    with pytest.raises(sqlite3.ProgrammingError, match="closed database"):
        sqlite3.Cursor(conn).execute("SELECT 1")
    with pytest.raises(sqlite3.ProgrammingError, match="closed database"):
        sqlite3.connect(":memory:").backup(conn)
    with pytest.raises(TypeError, match="factory must return a cursor"):
        conn.cursor(sqlite3.Cursor)
    # every public name is this module's own, or absent (hasattr False), never the stdlib's
    for name in dir(sqlite3.Connection):
        if not name.startswith("_") and hasattr(conn, name):
            assert getattr(dbapi.Connection, name) is not getattr(sqlite3.Connection, name)
    # Python 3.12's getconfig/setconfig, and extension loading, on every Python
    assert conn.getconfig(dbapi.SQLITE_DBCONFIG_ENABLE_FKEY) is False
    assert conn.setconfig(dbapi.SQLITE_DBCONFIG_ENABLE_FKEY) is True
    assert conn.getconfig(dbapi.SQLITE_DBCONFIG_ENABLE_FKEY) is True
    with pytest.raises(ValueError, match="unknown config"):
        conn.getconfig(1001)  # SQLITE_DBCONFIG_LOOKASIDE takes no on/off
    conn.enable_load_extension(True)
    with pytest.raises(sqlite3.OperationalError, match="no-such-extension"):
        conn.load_extension(str(tmp_path / "no-such-extension"))
    conn.row_factory = dbapi.Row
    assert conn.execute("SELECT 7 AS seven").fetchone()["seven"] == 7
    conn.close()


class _Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y


def test_adapters_and_converters_registered_with_sqlite3_apply_too(
        tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sqlite3.adapters, (_Point, sqlite3.PrepareProtocol),
                        lambda p: f"{p.x};{p.y}")
    monkeypatch.setitem(sqlite3.converters, "POINT",
                        lambda b: _Point(*map(int, b.split(b";"))))
    monkeypatch.setitem(sqlite3.converters, "SHADOWED", lambda b: "sqlite3's")
    dbapi.register_converter("shadowed", lambda b: "ours")
    try:
        conn = dbapi.connect(str(tmp_path / "p.db"), settings=make_settings("memory"),
                             detect_types=dbapi.PARSE_DECLTYPES)
        conn.execute("CREATE TABLE t(p point, s shadowed)")
        conn.execute("INSERT INTO t VALUES (?, 'x')", (_Point(3, 4),))
        point, shadowed = conn.execute("SELECT p, s FROM t").fetchone()
        assert (point.x, point.y) == (3, 4)
        assert shadowed == "ours"  # this module's registry comes first
        with pytest.raises(dbapi.ProgrammingError, match="type 'object' is not supported"):
            conn.execute("SELECT ?", (object(),))
        # a replacement of a default, and an adapter of a type SQLite stores (bool), apply too
        # (our default in place: bottomless.django, once imported, registers its own)
        monkeypatch.setitem(dbapi.adapters, (datetime.date, dbapi.PrepareProtocol),
                            dbapi_types._adapt_date)
        monkeypatch.setitem(sqlite3.adapters, (datetime.date, sqlite3.PrepareProtocol),
                            lambda d: f"day {d.isoformat()}")
        monkeypatch.setitem(sqlite3.adapters, (bool, sqlite3.PrepareProtocol),
                            lambda b: "yes" if b else "no")
        assert conn.execute("SELECT ?, ?, ?", (datetime.date(2020, 1, 2), True, 1)).fetchone() \
            == ("day 2020-01-02", "yes", 1)
        conn.close()
    finally:
        del dbapi.converters["SHADOWED"]


def test_pandas_reads_and_writes_through_a_connection_of_this_module(
        tmp_path: Any, make_settings: MakeSettings) -> None:
    pd = pytest.importorskip("pandas")
    import warnings

    conn = dbapi.connect(str(tmp_path / "pd.db"), settings=make_settings("memory"))
    frame = pd.DataFrame({"at": [datetime.time(1, 2, 3)], "on": [datetime.date(2020, 1, 2)],
                          "x": [1.5]})
    with warnings.catch_warnings():  # pandas warns it tests only sqlite3 and SQLAlchemy
        warnings.simplefilter("ignore", UserWarning)
        assert frame.to_sql("t", conn, index=False) == 1  # time: pandas's sqlite3 adapter
        back = pd.read_sql("SELECT * FROM t", conn)
        assert back.to_dict("records") == [{"at": "01:02:03.000000", "on": "2020-01-02",
                                            "x": 1.5}]
        with pytest.raises(pd.errors.DatabaseError, match="no such table"):
            pd.read_sql("SELECT * FROM nope", conn)
    conn.close()


def test_a_converter_gets_a_real_as_sqlite_writes_it(tmp_path: Any,
                                                     make_settings: MakeSettings) -> None:
    conn = dbapi.connect(str(tmp_path / "f.db"), settings=make_settings("memory"),
                         detect_types=dbapi.PARSE_DECLTYPES)
    dbapi.register_converter("measured", bytes)
    try:
        conn.execute("CREATE TABLE t(x measured)")
        conn.executemany("INSERT INTO t VALUES (?)", [(1e20,), (float("inf"),), (0.5,)])
        got = [x for (x,) in conn.execute("SELECT x FROM t ORDER BY rowid")]
    finally:
        del dbapi.converters["MEASURED"]
        conn.close()
    assert got == [b"1.0e+20", b"Inf", b"0.5"]  # what sqlite3 hands over; not str(1e20)


_GC_CLOSE = """
import gc, os, sys, weakref
import bottomless, bottomless.dbapi as dbapi
import bottomless.local.files as files
directory, bucket = sys.argv[1], sys.argv[2]
settings = bottomless.Settings(backend="file", bucket=bucket)

class Repository:  # holds its connection, which holds it: only the collector frees them
    def __init__(self, path):
        self.conn = dbapi.connect(path, settings=settings)
        self.conn.owner = self
        self.conn.execute("CREATE TABLE t(x)")
        self.conn.commit()

gone = weakref.ref(Repository(os.path.join(directory, "a.db")))
real = files._open_identified

def collecting(*args, **kwargs):  # a collection at an allocation under the state files' lock
    gc.collect()
    return real(*args, **kwargs)

files._open_identified = collecting
other = dbapi.connect(os.path.join(directory, "b.db"), settings=settings)
files._open_identified = real
other.close()
print("collected" if gone() is None else "alive", flush=True)
"""


def test_a_connection_the_collector_frees_inside_bottomless_does_not_hang_it(
        tmp_path: Any) -> None:
    """Left unclosed in a reference cycle, a connection is closed by the garbage collector,
    in the middle of whatever allocated: here bottomless's own code, holding a lock that
    closing needs."""
    done = subprocess.run(
        [sys.executable, "-c", _GC_CLOSE, str(tmp_path), str(tmp_path / "bucket")],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "collected"


def test_a_shared_in_memory_database_is_shared_between_connections() -> None:
    """``mode=memory&cache=shared`` (Django's default test database): apsw's SQLite has no
    shared cache, yet connections of the process see one database, as with sqlite3."""
    uri = f"file:shared-{os.getpid()}?mode=memory&cache=shared"
    first = dbapi.connect(uri, uri=True)
    first.execute("CREATE TABLE t(x)")
    first.execute("INSERT INTO t VALUES (1)")
    first.commit()
    seen: list[Any] = []
    thread = threading.Thread(target=lambda: seen.append(
        dbapi.connect(uri, uri=True).execute("SELECT x FROM t").fetchall()))
    thread.start()
    thread.join()
    assert seen == [[(1,)]]
    private = dbapi.connect(f"file:private-{os.getpid()}?mode=memory", uri=True)
    private.execute("CREATE TABLE u(x)")
    other = dbapi.connect(f"file:private-{os.getpid()}?mode=memory", uri=True)
    assert other.execute("SELECT name FROM sqlite_master").fetchall() == []
    first.close()


# ---------------------------------------------------------------- newer Pythons' sqlite3

_PY312 = sys.version_info >= (3, 12)
_PY313 = sys.version_info >= (3, 13)


def _warnings_of(action: Callable[[], Any]) -> list[Any]:
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        action()
    return [w for w in seen if issubclass(w.category, DeprecationWarning | ResourceWarning)]


@pytest.mark.parametrize("sql", [
    "select ?", "select :a, :a, ?", "select ?2, :a", "select :a, ?1", "select ?3, :3, ?1",
    "select @a, :a, $a", "select ':a', ?", 'select "c:d", :x from t', "select [e $f], $g from t",
    "select price$usd, ? from t", "select -- :no\n ?, /* :no */ :yes", "select 'it''s', :y",
    "select $a::b, $c(x), ?", "select ?5, ?", "select :émoji, :a1_b$c", "select @a, @a, @b",
    "select 1 limit ? offset :o", "select coalesce(?, :a, ?3, @b, ?)", "select ?10",
])
def test_placeholders_are_numbered_and_named_as_sqlite_does(sql: str) -> None:
    """The text scan behind 3.12's named-placeholder warning agrees with SQLite's own
    numbering (read through apsw, which drops the marker from each name)."""
    import apsw

    from bottomless.dbapi.sqltext import placeholders

    db = apsw.Connection(":memory:")
    db.execute('create table t(a, "c:d", [e $f], price$usd)')
    seen: list[Any] = []

    def trace(cursor: Any, _sql: str, _bindings: Any) -> bool:
        seen.append((cursor.bindings_count, cursor.bindings_names))
        return False

    cursor = db.cursor()
    cursor.exec_trace = trace
    count, names = placeholders(sql)
    with pytest.raises(apsw.ExecTraceAbort):
        cursor.execute(sql, (None,) * count)
    sqlite_count, sqlite_names = seen[0]
    assert count == sqlite_count
    assert all(name[0] in "?:@$#" and name in sql for _, name in names)
    assert [(number, name[1:]) for number, name in names] == [
        (index + 1, name) for index, name in enumerate(sqlite_names) if name is not None
    ]


def test_a_sequence_for_named_placeholders_warns_from_python_3_12() -> None:
    """Python 3.12 warns, per named placeholder, when a sequence is bound (the warning names
    the caller's file); a dict, plain ``?`` and a wrong count do not warn; 3.11 never does."""
    conn = dbapi.connect(":memory:")
    conn.execute("create table t(a, b)")
    seen = _warnings_of(lambda: conn.execute("select :a, ?, @b", (1, 2, 3)))
    many = _warnings_of(lambda: conn.executemany("insert into t values (:a, ?)", [(1, 2)] * 2))

    def no_warning_here() -> None:
        conn.execute("select :a", {"a": 1})
        conn.execute("select ?", (1,))
        conn.executemany("insert into t values (?, ?)", [(1, 2)])
        with pytest.raises(dbapi.ProgrammingError):
            conn.execute("select :a", (1, 2))

    quiet = _warnings_of(no_warning_here)
    numbered = _warnings_of(lambda: conn.execute("select ?2, ?1", (1, 2)))
    assert conn.execute("select count(*) from t").fetchone() == (3,)
    conn.close()
    assert quiet == []
    if not _PY312:
        assert seen == many == numbered == []
        return
    assert [str(w.message).split(" is a named")[0] for w in seen] == [
        "Binding 1 (':a')", "Binding 3 ('@b')"]
    assert "Starting with Python 3.14 an sqlite3.ProgrammingError" in str(seen[0].message)
    assert {w.filename for w in seen + many} == {__file__}
    assert len(many) == 2
    # 3.12.0 to 3.12.3 took "?1" for a name too (CPython gh-117995)
    assert len(numbered) == (2 if sys.version_info < (3, 12, 4) else 0)


def test_version_and_version_info_warn_from_python_3_12() -> None:
    """``version``/``version_info`` (also through ``dbapi2``) warn from 3.12, naming the
    caller; ``enable_shared_cache`` is gone from 3.12, as in sqlite3."""
    assert dbapi.dbapi2 is dbapi
    seen = _warnings_of(lambda: (dbapi.version, dbapi.dbapi2.version_info))
    assert (hasattr(dbapi, "enable_shared_cache"), "version" in dbapi.__all__) == (
        not _PY312, not _PY312)
    if not _PY312:
        assert seen == []
        return
    assert [str(w.message) for w in seen] == [
        f"{name} is deprecated and will be removed in Python 3.14"
        for name in ("version", "version_info")]
    assert {w.filename for w in seen} == {__file__}


def test_the_default_date_adapters_warn_at_the_caller_from_python_3_12(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # only the defaults warn: none of sqlite3's own (pandas registers some) may shadow them
    monkeypatch.delitem(sqlite3.adapters, (datetime.date, sqlite3.PrepareProtocol), False)
    monkeypatch.delitem(sqlite3.converters, "DATE", False)
    registries: list[tuple[dict[Any, Any], Any]] = [
        (dbapi.adapters, (datetime.date, dbapi.PrepareProtocol)),
        (dbapi.adapters, (datetime.datetime, dbapi.PrepareProtocol)),
        (dbapi.converters, "DATE"), (dbapi.converters, "TIMESTAMP"),
    ]
    for registry, key in registries:  # put back as they are after the test
        monkeypatch.setitem(registry, key, registry.get(key))
    dbapi.register_defaults()
    conn = dbapi.connect(":memory:", detect_types=dbapi.PARSE_DECLTYPES)
    conn.execute("create table t(d date)")
    bound = _warnings_of(lambda: conn.execute("insert into t values (?)", (datetime.date.today(),)))
    read = _warnings_of(lambda: conn.execute("select d from t").fetchone())
    conn.close()
    if not _PY312:
        assert bound == read == []
        return
    assert ["adapter" in str(w.message) for w in bound] == [True]
    assert ["converter" in str(w.message) for w in read] == [True]
    assert {w.filename for w in bound + read} == {__file__}


def test_options_by_position_warn_from_python_3_13() -> None:
    """3.13 warns for options given by position to ``connect`` and ``Connection()``, and for
    the callbacks given by keyword; the signatures stay those of sqlite3."""
    import inspect

    class Factory(dbapi.Connection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)

    made: list[Any] = []
    by_position = _warnings_of(lambda: made.append(dbapi.connect(":memory:", 1.0, 0, None)))
    via_factory = _warnings_of(lambda: made.append(
        dbapi.connect(":memory:", 5.0, 0, None, True, Factory)))
    by_keyword = _warnings_of(lambda: made.append(dbapi.connect(":memory:", timeout=1.0)))
    conn = made[-1]
    callbacks = _warnings_of(lambda: (
        conn.create_function("f", 0, func=lambda: 1),
        conn.create_aggregate("g", n_arg=1, aggregate_class=None),
        conn.set_authorizer(authorizer_callback=None),
        conn.set_progress_handler(progress_handler=None, n=1),
        conn.set_trace_callback(trace_callback=None),
        conn.create_function("h", 0, lambda: 1, deterministic=True),
    ))
    assert made[0].isolation_level is None and isinstance(made[1], Factory)
    for each in made:
        each.close()
    assert by_keyword == []
    assert str(inspect.signature(dbapi.connect)).startswith("(database: 'str | bytes")
    assert "narg" in str(inspect.signature(dbapi.Connection.create_function))
    if not _PY313:
        assert by_position == via_factory == callbacks == []
        return
    assert [str(w.message).split(" is deprecated")[0] for w in by_position + via_factory] == [
        "Passing more than 1 positional argument to sqlite3.connect()",
        "Passing more than 1 positional argument to _sqlite3.Connection()",
    ] * 2
    assert "'cached_statements' and 'uri' will become keyword-only" in str(by_position[0].message)
    assert [str(w.message).split(" to _sqlite3")[0] for w in callbacks] == [
        "Passing keyword arguments 'name', 'narg' and 'func'",
        "Passing keyword arguments 'name', 'n_arg' and 'aggregate_class'",
        "Passing keyword argument 'authorizer_callback'",
        "Passing keyword argument 'progress_handler'",
        "Passing keyword argument 'trace_callback'",
    ]
    assert {w.filename for w in by_position + via_factory + callbacks} == {__file__}


def test_an_unclosed_connection_warns_when_collected_from_python_3_13() -> None:
    import gc

    described: list[str] = []

    def drop_one(close: bool) -> None:
        conn = dbapi.connect(":memory:")
        described.append(f"unclosed database in {conn!r}")
        if close:
            conn.close()
        del conn
        gc.collect()

    open_one = _warnings_of(lambda: drop_one(False))
    closed_one = _warnings_of(lambda: drop_one(True))
    # the collector may find other tests' connections too: only these two count
    assert [w.category for w in open_one if str(w.message) == described[0]] == (
        [ResourceWarning] if _PY313 else [])
    assert [w for w in closed_one if str(w.message) == described[1]] == []


def _cli(capsys: pytest.CaptureFixture[str], *args: str, stdin: str = "") -> tuple[int, str, str]:
    import io

    from bottomless.dbapi.__main__ import main

    old = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with pytest.raises(SystemExit) as done:
            main(list(args))
    finally:
        sys.stdin = old
    out, err = capsys.readouterr()
    return int(done.value.code or 0), out, err


def test_the_command_line_shell_runs_a_statement_or_reads_them(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m bottomless.dbapi``, Python 3.12's ``python -m sqlite3`` over this module:
    a statement from the command line, or statements from standard input."""
    monkeypatch.setenv("LIBSQL_BOTTOMLESS_BACKEND", "file")
    monkeypatch.setenv("LIBSQL_BOTTOMLESS_BUCKET", str(tmp_path / "bucket"))
    path = str(tmp_path / "cli.db")
    assert _cli(capsys, path, "create table t(x)") == (0, "", "")
    assert _cli(capsys, path, "select count(*) from t") == (0, "(0,)\n", "")
    code, out, err = _cli(capsys, ":memory:", "select 1; select 2")
    assert (code, out) == (1, "")
    assert err == "ProgrammingError: You can only execute one statement at a time.\n"
    assert "OperationalError (SQLITE_ERROR): " in _cli(capsys, ":memory:", "sel")[2]
    code, out, _ = _cli(capsys, "-v")
    assert (code, out) == (0, f"SQLite version {dbapi.sqlite_version}\n")
    assert "usage: python -m bottomless.dbapi" in _cli(capsys, "-h")[1]

    code, out, err = _cli(capsys, path, stdin="insert into t\nvalues (7);\nsel;\n.version\n"
                          "select x from t;\n.quit\nselect 2;\n")
    assert code == 0
    assert f"Connected to {path!r}" in err and "OperationalError (SQLITE_ERROR)" in err
    assert out == ("sqlite>     ... sqlite> sqlite> " + dbapi.sqlite_version + "\nsqlite> "
                   "(7,)\nsqlite> ")
    code, out, err = _cli(capsys, stdin="select\n")
    assert (code, out) == (0, "sqlite>     ... ")
    assert "Connected to a transient in-memory database" in err


def test_an_unreachable_store_at_connect_is_a_store_error_with_its_reason(
        tmp_path: Any) -> None:
    settings = bottomless.Settings(backend="s3", endpoint="http://127.0.0.1:9", bucket="b",
                                   max_retries=0, timeout=1, access_key_id="a",
                                   secret_access_key="b")
    with pytest.raises(dbapi.OperationalError) as info:
        dbapi.connect(str(tmp_path / "u.db"), settings=settings)
    assert isinstance(info.value, bottomless.StoreError)
    assert "http://127.0.0.1:9" in str(info.value) and "connect" in str(info.value)


def test_a_timeout_that_is_not_a_number_is_refused_before_the_open(tmp_path: Any) -> None:
    settings = bottomless.Settings(backend="file", bucket=str(tmp_path / "bucket"))
    for timeout in ("5", None):
        with pytest.raises(TypeError, match="must be real number") as info:
            dbapi.connect(str(tmp_path / "t.db"), timeout=timeout,  # type: ignore[arg-type]
                          settings=settings)
        with pytest.raises(TypeError) as stdlib:
            sqlite3.connect(":memory:", timeout=timeout)  # type: ignore[arg-type]
        assert str(info.value) == str(stdlib.value)
    assert not os.path.exists(tmp_path / "t.db") and not os.path.exists(tmp_path / "bucket")
    for timeout in (1e12, float("inf"), float("nan"), -1):  # accepted, as sqlite3 does
        dbapi.connect(str(tmp_path / "t.db"), timeout=timeout, settings=settings).close()


def test_a_factory_that_is_not_this_modules_connection_is_refused(tmp_path: Any) -> None:
    class Stdlib(sqlite3.Connection):
        pass

    settings = bottomless.Settings(backend="file", bucket=str(tmp_path / "bucket"))
    for given in ({}, {"settings": settings}):
        with pytest.raises(TypeError, match="Stdlib: its connections would not be replicated"):
            dbapi.connect(str(tmp_path / "f.db"), factory=Stdlib, **given)  # type: ignore[arg-type]
    assert not os.path.exists(tmp_path / "f.db")  # refused before anything was opened
    with pytest.raises(TypeError, match="would not be replicated"):  # a callable: what it made
        dbapi.connect(str(tmp_path / "g.db"), factory=lambda *a, **k: sqlite3.connect(":memory:"))

    class Making(type):  # a class whose call makes one of ours, as sqlite3 accepts
        def __call__(cls, *args: Any, **kwargs: Any) -> Any:
            return dbapi.Connection(*args, **kwargs)

    class Made(metaclass=Making):
        pass

    made = dbapi.connect(str(tmp_path / "h.db"), factory=Made, settings=settings)  # type: ignore[arg-type]
    assert isinstance(made, dbapi.Connection)
    made.close()


def test_the_shell_reports_a_database_it_cannot_open_in_one_line(tmp_path: Any) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bottomless.dbapi", str(tmp_path / "missing" / "x.db"),
         "SELECT 1"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "LIBSQL_BOTTOMLESS_BACKEND": "file",
             "LIBSQL_BOTTOMLESS_BUCKET": str(tmp_path / "bucket")},
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # no traceback
    assert lines[0].startswith(
        f"python -m bottomless.dbapi: cannot open '{tmp_path / 'missing' / 'x.db'}':"
        " unable to open database file"
    )
    assert lines[0].endswith(f"the directory {tmp_path / 'missing'} does not exist")


def test_a_row_factory_that_raises_cannot_leave_a_returning_write_pending(
        tmp_path: Any, make_settings: MakeSettings) -> None:
    settings = make_settings("file")
    path, conn = _with_table(tmp_path, settings, "rf.db")

    def failing(_cursor: Any, _row: Any) -> Any:
        raise ValueError("row factory failed")

    conn.row_factory = failing
    cursor = conn.execute(_CTE_INSERT)  # the statement ran to its end: committed here
    assert rows(restored(tmp_path, settings, "rf.db")) == [(1,), (2,), (3,)]
    with pytest.raises(ValueError, match="row factory failed"):  # at fetch, as in sqlite3
        cursor.fetchone()
    cursor.row_factory = None  # the cursor's own, copied from the connection's
    assert cursor.fetchall() == [(1,), (2,), (3,)]  # the rows stay kept
    _break_store(path).down = True
    conn.row_factory = failing
    with pytest.raises(dbapi.OperationalError, match="not committed"):  # raised in execute
        conn.execute(_CTE_INSERT.replace("(1), (2), (3)", "(4)"))
    conn.row_factory = None
    assert conn.execute("SELECT x FROM t").fetchall() == [(1,), (2,), (3,)]
    conn.close()
    assert rows(path) == [(1,), (2,), (3,)]


def test_executemany_runs_any_statement_that_writes_as_sqlite3_does(
        tmp_path: Any, make_settings: MakeSettings) -> None:
    conn = dbapi.connect(str(tmp_path / "em.db"), settings=make_settings("memory"))
    conn.execute("CREATE TABLE t(x)")
    cursor = conn.executemany("WITH v(x) AS (SELECT ?) INSERT INTO t SELECT x FROM v",
                              [(1,), (2,)])
    assert cursor.rowcount == -1 and not conn.in_transaction  # not DML to sqlite3
    assert conn.execute("SELECT x FROM t").fetchall() == [(1,), (2,)]
    conn.executemany("CREATE TABLE IF NOT EXISTS u(y)", [(), ()])
    with pytest.raises(dbapi.ProgrammingError, match="can only execute DML"):
        conn.executemany("WITH v(x) AS (SELECT ?) SELECT x FROM v", [(1,)])
    with pytest.raises(dbapi.OperationalError, match="no such table: nope"):
        conn.executemany("WITH v(x) AS (SELECT ?) INSERT INTO nope SELECT x FROM v", [(1,)])
    conn.close()

"""bottomless.dbapi against the standard library's sqlite3, side by side, where they once differed.

Each test runs the same steps on ``sqlite3`` and on ``bottomless.dbapi`` (file backend) and
expects the same outcome; CPython's own suite (test_cpython_sqlite3.py) has no case for them.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from helpers import FailingStore, remove_db, replicator, rows

import bottomless
import bottomless.dbapi as dbapi
from bottomless.errors import StoreError

MODULES = [pytest.param(sqlite3, id="sqlite3"), pytest.param(dbapi, id="bottomless")]


@pytest.fixture(autouse=True)
def _file_backend(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIBSQL_BOTTOMLESS_BACKEND", "file")
    monkeypatch.setenv("LIBSQL_BOTTOMLESS_BUCKET", str(tmp_path / "bucket"))


def _database(module: ModuleType, tmp_path: Any, journal_mode: str = "delete") -> str:
    path = str(tmp_path / f"{module.__name__}.db")
    conn = module.connect(path)
    conn.execute(f"PRAGMA journal_mode={journal_mode}")
    conn.execute("CREATE TABLE t(a)")
    conn.commit()
    conn.close()
    return path


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("statement", [
    lambda c: c.execute("INSERT INTO no_such_table VALUES (1)"),
    lambda c: c.execute("UPDATE t SETT a = 1"),
    lambda c: c.executemany("INSERT INTO no_such_table VALUES (?)", [(1,)]),
], ids=["missing-table", "syntax", "executemany"])
def test_dml_that_does_not_compile_begins_no_transaction(
        module: ModuleType, statement: Callable[[Any], Any], tmp_path: Any) -> None:
    path = _database(module, tmp_path)
    reader = module.connect(path, timeout=0.1)
    with pytest.raises(module.OperationalError):
        statement(reader)
    assert not reader.in_transaction
    reader.execute("SELECT count(*) FROM t").fetchall()  # would keep a read lock in a transaction
    writer = module.connect(path, timeout=0.1)
    writer.execute("INSERT INTO t VALUES (1)")
    writer.commit()  # "database is locked" while the reader's transaction was left open
    assert reader.execute("SELECT count(*) FROM t").fetchone() == (1,)
    writer.close()
    reader.close()


@pytest.mark.parametrize("module", MODULES)
def test_dml_whose_parameters_do_not_bind_keeps_its_transaction(
        module: ModuleType, tmp_path: Any) -> None:
    """sqlite3 binds after its BEGIN, so the transaction stays open (and nothing else does)."""
    conn = module.connect(_database(module, tmp_path))
    with pytest.raises(module.ProgrammingError):
        conn.execute("INSERT INTO t VALUES (?)", (1, 2))
    assert conn.in_transaction
    conn.execute("INSERT INTO t VALUES (?)", (3,))
    conn.commit()
    assert conn.execute("SELECT a FROM t").fetchall() == [(3,)]
    conn.close()


def test_a_statement_that_does_not_compile_is_still_traced(tmp_path: Any) -> None:
    """The watch for compiling stands in for the connection's tracer: it must hand on."""
    conn = dbapi.connect(_database(dbapi, tmp_path))
    traced: list[str] = []
    conn.set_trace_callback(traced.append)
    conn.execute("INSERT INTO t VALUES (7)")
    with pytest.raises(dbapi.OperationalError):
        conn.execute("INSERT INTO no_such_table VALUES (1)")
    conn.commit()
    assert "INSERT INTO t VALUES (7)" in traced
    conn.close()


@pytest.mark.parametrize("module", MODULES)
def test_closing_a_connection_does_not_raise_a_blobs_earlier_error(
        module: ModuleType, tmp_path: Any) -> None:
    path = _database(module, tmp_path)
    conn = module.connect(path)
    conn.execute("INSERT INTO t VALUES (zeroblob(4))")
    conn.commit()
    blob = conn.blobopen("t", "a", 1, readonly=True)
    with pytest.raises(module.OperationalError):
        blob.write(b"x")
    conn.close()  # the blob is closed with it; its error was raised already
    with pytest.raises(module.ProgrammingError):
        blob.read()
    again = module.connect(path)  # no lock was left behind
    again.execute("INSERT INTO t VALUES (2)")
    again.commit()
    again.close()


def test_closing_a_connection_raises_the_failed_commit_of_an_open_blob(tmp_path: Any) -> None:
    """Outside a transaction, what a blob wrote commits when it closes: if that commit cannot
    be uploaded, ``close()`` says so (sqlite3 has no upload to fail), and still closes."""
    path = _database(dbapi, tmp_path)
    conn = dbapi.connect(path, isolation_level=None)
    conn.execute("INSERT INTO t VALUES (zeroblob(4))")
    rep = replicator(path)
    failing = FailingStore(rep.store)
    rep.store = failing
    blob = conn.blobopen("t", "a", 1)
    blob.write(b"ABCD")
    failing.down = True
    with pytest.raises(dbapi.OperationalError) as info:
        conn.close()
    assert isinstance(info.value, StoreError)
    conn.close()  # closed already: nothing to do
    failing.down = False
    again = dbapi.connect(path)
    assert again.execute("SELECT a FROM t").fetchall() == [(bytes(4),)]
    again.close()


@pytest.mark.parametrize("module", MODULES)
def test_another_thread_reads_a_connections_state(module: ModuleType, tmp_path: Any) -> None:
    conn = module.connect(_database(module, tmp_path))
    conn.execute("INSERT INTO t VALUES (1)")
    seen: dict[str, Any] = {}

    def look() -> None:
        seen["state"] = (conn.in_transaction, conn.isolation_level, conn.total_changes)
        try:
            conn.commit()
        except module.ProgrammingError as e:
            seen["commit"] = str(e)

    thread = threading.Thread(target=look)
    thread.start()
    thread.join()
    assert seen["state"] == (True, "", 1)
    assert "same thread" in seen["commit"]
    conn.close()


@pytest.mark.parametrize("module", MODULES)
def test_a_denied_statement_is_a_database_error_not_an_operational_one(
        module: ModuleType, tmp_path: Any) -> None:
    conn = module.connect(_database(module, tmp_path))
    conn.set_authorizer(lambda *args: module.SQLITE_DENY)
    with pytest.raises(module.DatabaseError) as info:
        conn.execute("SELECT * FROM t")
    assert type(info.value) is module.DatabaseError
    assert info.value.sqlite_errorname == "SQLITE_AUTH"
    conn.close()


@pytest.mark.parametrize("module", MODULES)
def test_a_closed_connection_cannot_enter_a_with_block(module: ModuleType, tmp_path: Any) -> None:
    conn = module.connect(_database(module, tmp_path))
    conn.close()
    ran = False
    with pytest.raises(module.ProgrammingError, match="closed database"), conn:
        ran = True
    assert not ran


def test_a_cursor_described_only_after_its_connection_closed_raises_a_dbapi_error(
        tmp_path: Any) -> None:
    """sqlite3 describes at execute; this module when asked (cheaper): after the close, only
    a DB-API error can be given, not apsw's own."""
    conn = dbapi.connect(_database(dbapi, tmp_path))
    cursor = conn.execute("SELECT 1 AS one")
    conn.close()
    with pytest.raises(dbapi.ProgrammingError):
        cursor.description  # noqa: B018


def test_the_transactions_that_were_committed_are_the_ones_restored(tmp_path: Any) -> None:
    """A failed statement, rolled back or never begun, leaves nothing in the bucket."""
    path = _database(dbapi, tmp_path)
    conn = dbapi.connect(path)
    with pytest.raises(dbapi.OperationalError):
        conn.execute("INSERT INTO no_such_table VALUES (1)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    conn.close()
    remove_db(path)
    restored = rows(bottomless_restored(tmp_path, os.path.basename(path)), "SELECT a FROM t")
    assert restored == [(1,)]


def bottomless_restored(tmp_path: Any, db_name: str) -> str:
    target = str(tmp_path / "restored.db")
    bottomless.restore(target, bottomless.Settings(), db_name=db_name)
    return target


@pytest.mark.parametrize("module", MODULES)
def test_executemany_with_no_rows_still_compiles_first(module: ModuleType, tmp_path: Any) -> None:
    conn = module.connect(_database(module, tmp_path), isolation_level="IMMEDIATE")
    with pytest.raises(module.OperationalError, match="no such table"):
        conn.executemany("INSERT INTO missing VALUES (?)", [])
    assert not conn.in_transaction  # an IMMEDIATE one would hold the write lock
    conn.executemany("INSERT INTO t VALUES (?)", [])
    assert conn.in_transaction  # compiled, then begun, as in sqlite3
    conn.close()


@pytest.mark.parametrize("module", MODULES)
def test_a_value_too_big_to_bind_keeps_the_transaction(module: ModuleType,
                                                       tmp_path: Any) -> None:
    conn = module.connect(_database(module, tmp_path))
    conn.setlimit(module.SQLITE_LIMIT_LENGTH, 40)
    with pytest.raises(module.DataError):
        conn.execute("INSERT INTO t VALUES (?)", ("x" * 100,))
    assert conn.in_transaction  # bound after the BEGIN, as sqlite3 binds
    conn.close()


@pytest.mark.parametrize("module", MODULES)
def test_another_thread_reads_the_state_while_a_statement_runs(
        module: ModuleType, tmp_path: Any) -> None:
    conn = module.connect(_database(module, tmp_path), check_same_thread=False)
    started = threading.Event()
    seen: list[Any] = []

    def slow(x: int) -> int:
        started.set()
        time.sleep(0.2)
        return x

    conn.create_function("slow", 1, slow)
    reader = threading.Thread(
        target=lambda: (started.wait(5), seen.append((conn.in_transaction, conn.total_changes))))
    reader.start()
    conn.execute("INSERT INTO t SELECT slow(1)")
    reader.join()
    assert len(seen) == 1 and seen[0][1] in (0, 1)
    conn.close()


@pytest.mark.parametrize("module", MODULES)
def test_with_autocommit_off_commit_always_commits(module: ModuleType, tmp_path: Any) -> None:
    """Python 3.12's autocommit=False: COMMIT runs even when SQLite rolled the transaction
    back by itself (an interrupted statement), and fails then, as sqlite3's does."""
    if module is sqlite3 and sys.version_info < (3, 12):
        pytest.skip("sqlite3 has autocommit from Python 3.12")
    conn = module.connect(_database(module, tmp_path), autocommit=False)
    steps = [0]

    def interrupt() -> bool:
        steps[0] += 1
        return steps[0] > 200

    conn.set_progress_handler(interrupt, 1)
    with pytest.raises(module.OperationalError, match="interrupted"):
        conn.execute("INSERT INTO t WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1"
                     " FROM r WHERE x < 100000) SELECT x FROM r")
    conn.set_progress_handler(None, 1)
    assert not conn.in_transaction  # SQLite rolled it back
    with pytest.raises(module.OperationalError, match="no transaction is active"):
        conn.commit()
    assert not conn.in_transaction  # none begun after SQLite's own error (an upload's: one)
    conn.close()


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("level", ["", "IMMEDIATE", None])
def test_executemany_checks_its_arguments_and_sql_before_any_begin(
        module: ModuleType, level: str | None, tmp_path: Any) -> None:
    conn = module.connect(_database(module, tmp_path), isolation_level=level)
    with pytest.raises(TypeError):
        conn.executemany("INSERT INTO t VALUES (?)", 5)  # not iterable
    assert not conn.in_transaction
    with pytest.raises(module.OperationalError, match="no such table"):
        conn.executemany("INSERT INTO missing VALUES (?)", iter([]))
    assert not conn.in_transaction
    conn.close()

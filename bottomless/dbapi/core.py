"""What a cursor needs of its connection: state, checks, transactions, statement kinds.

:class:`ConnectionCore` holds it; :class:`~bottomless.dbapi.Connection` (``connection.py``)
builds the public ``sqlite3`` API on top, and :class:`~bottomless.dbapi.Cursor`
(``cursor.py``) works against the core alone, so the two modules never import each other.
The parts of the standard library's ``sqlite3`` a connection stands on are here too: the
closed ``sqlite3.Connection`` it derives from, and ``sqlite3/dump.py`` for ``iterdump``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sqlite3
import sys
import sysconfig
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import apsw

from bottomless.dbapi import exceptions as _exc
from bottomless.dbapi.exceptions import ProgrammingError, raise_translated
from bottomless.dbapi.sqltext import first_statement_end, placeholders, skip_blank
from bottomless.dbapi.types import bind_value

#: Python 3.12's ``sqlite3.LEGACY_TRANSACTION_CONTROL``: implicit BEGIN before DML
LEGACY_TRANSACTION_CONTROL = -1
_DML = ("insert", "update", "delete", "replace")
_MAX_CACHED_KINDS = 1024
_get_ident = threading.get_ident
#: what ConnectionCore._prepared returns for SQL that does not prepare
_NOT_PREPARED: Any = object()


def convert_binding(_cursor: apsw.Cursor, number: int, value: Any) -> Any:
    """apsw's ``convert_binding`` hook: adapt a parameter apsw cannot bind as it is."""
    return bind_value(number, value)


if TYPE_CHECKING:
    class _StdlibConnection:
        """Typed as this module's own API (see :class:`ConnectionCore`)."""
else:
    _StdlibConnection = sqlite3.Connection


class ConnectionCore(_StdlibConnection):
    """The internals of a connection that its cursors use; not to be made on its own.

    It derives from the standard library's ``sqlite3.Connection``, whose ``__init__`` it never
    calls, so that libraries that check ``isinstance(conn, sqlite3.Connection)`` (pandas)
    take it for what it is, a drop-in; every public method and attribute is this module's own.
    The inherited part is made and closed at once, so a ``sqlite3`` function handed this
    connection (``sqlite3.Cursor(conn)``) says it is closed instead of touching memory never
    set up.

    Until :meth:`_start` has run (from ``Connection.__init__``) every check fails with
    "Base Connection.__init__ not called.".
    """

    # slots: the stdlib part's __init__ reads the instance's __dict__ (its statement cache
    # is a functools.lru_cache around the connection), which on 3.11 turns off the fast
    # lookup of attributes kept there; slots keep the hot ones fast (+20 % per execute)
    __slots__ = ("__dict__", "_autocommit", "_begin", "_db", "_detect_types", "_initialized",
                 "_isolation_level", "_kinds", "_lock", "_no_columns", "_text_factory",
                 "_thread", "_transform_rows", "_trimmed", "_txn", "row_factory")

    _db: apsw.Connection | None
    _thread: int | None
    _initialized: bool
    _txn: apsw.Cursor
    _lock: threading.RLock
    _detect_types: int
    _text_factory: Any
    _transform_rows: bool
    #: statement kinds (see :meth:`_classify`) and the SQL that returns no columns, by SQL
    _kinds: dict[str, int]
    _trimmed: dict[str, tuple[int, str]]
    _no_columns: set[str]
    _isolation_level: str | None
    _autocommit: bool | int
    #: the BEGIN to run before DML, None when nothing begins transactions implicitly
    _begin: str | None
    row_factory: Any  # a slot of ours, which shadows sqlite3.Connection's

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        self = super().__new__(cls)
        self._db = self._thread = self.row_factory = None
        self._initialized = False
        if not TYPE_CHECKING:  # the stdlib part: a private in-memory database, closed
            sqlite3.Connection.__init__(self, ":memory:", check_same_thread=False)
            sqlite3.Connection.close(self)
        return self

    def _start(self, db: apsw.Connection, *, check_same_thread: bool, detect_types: int,
               isolation_level: str | None, autocommit: bool | int) -> None:
        """Take ``db`` (just opened) and the validated options; the connection is usable."""
        self._db = db
        self._txn = db.cursor()
        self._thread = _get_ident() if check_same_thread else None
        self._lock = threading.RLock()
        self._detect_types = int(detect_types)
        self._text_factory = str
        self._transform_rows = bool(self._detect_types)
        self._kinds = {}
        self._trimmed = {}
        self._no_columns = set()
        self._blobs: weakref.WeakSet[Any] = weakref.WeakSet()  # open ones (Connection.blobopen)
        self._isolation_level = isolation_level
        self._autocommit = autocommit
        self._begin = None
        self._update_begin()
        self.row_factory = None
        self._initialized = True
        if autocommit is False:
            self._run("BEGIN")

    # ------------------------------------------------------------ checks

    def _gone(self) -> _exc.ProgrammingError:
        """The error for a connection that is closed, or whose __init__ did not succeed."""
        if not self._initialized:
            return ProgrammingError("Base Connection.__init__ not called.")
        return ProgrammingError("Cannot operate on a closed database.")

    def _check_open(self) -> None:
        """The check of what ``sqlite3`` lets any thread do: only that the connection is open."""
        if self._db is None:
            raise self._gone()

    def _between_steps(self, read: Callable[[apsw.Connection], Any]) -> Any:
        """``read(db)``, from any thread: apsw refuses while another thread is inside a call
        on the connection (a step of a statement), so wait for that call to end."""
        while True:
            try:
                return read(self._live)
            except apsw.ThreadingViolationError:
                time.sleep(0.0005)

    def _check(self) -> None:
        if self._db is None:
            raise self._gone()
        if self._thread is not None and _get_ident() != self._thread:
            raise ProgrammingError(
                "SQLite objects created in a thread can only be used in that same thread."
                f" The object was created in thread id {self._thread} and this is thread id"
                f" {_get_ident()}."
            )

    @property
    def _live(self) -> apsw.Connection:
        db = self._db
        if db is None:
            raise self._gone()
        return db

    # ------------------------------------------------------------ transactions

    def _run(self, sql: str) -> None:
        try:
            self._txn.execute(sql)
        except BaseException as e:  # noqa: BLE001 - translated, never swallowed
            raise_translated(e)

    def _begin_transaction(self) -> None:
        assert self._begin is not None
        self._run(self._begin)

    def _update_begin(self) -> None:
        level = self._isolation_level
        legacy = self._autocommit == LEGACY_TRANSACTION_CONTROL and type(self._autocommit) is int
        self._begin = f"BEGIN {level}" if legacy and level is not None else None

    def _legacy(self) -> bool:
        return type(self._autocommit) is int

    def _commit_for_script(self) -> None:
        if self._legacy() and self._live.in_transaction:
            self._run("COMMIT")

    # ------------------------------------------------------------ rows

    @property
    def text_factory(self) -> Any:
        """The type text columns are returned as: ``str`` (default), ``bytes``, or a callable."""
        return self._text_factory

    @text_factory.setter
    def text_factory(self, value: Any) -> None:
        self._text_factory = value
        self._transform_rows = bool(self._detect_types) or value is not str

    # ------------------------------------------------------------ statements

    def _classify(self, sql: str) -> tuple[int, str]:
        """The kind of ``sql`` and the SQL to run; the kind is cached in ``_kinds``.

        Kinds: 0: not DML; 1: INSERT/UPDATE/DELETE/REPLACE; 2: one that may return rows;
        3: a statement that starts with ``WITH`` and may be DML that returns rows (no
        implicit BEGIN, as in ``sqlite3``; see ``Cursor.execute``).
        When only comments follow the statement, only the statement itself is run (like
        sqlite3, the rest is never compiled); such SQL is cached in ``_trimmed`` instead, so
        the common case costs one dictionary lookup.
        """
        trimmed = self._trimmed.get(sql)
        if trimmed is not None:
            return trimmed
        head = skip_blank(sql)
        start = sql[head : head + 7].lower()
        kind = 1 if start.startswith(_DML) else 0
        if "returning" in sql.lower():
            kind = 2 if kind else 3 if start.startswith("with") else 0
        if ";" in sql:
            end = first_statement_end(sql)
            if skip_blank(sql, end) != len(sql):
                raise ProgrammingError("You can only execute one statement at a time.")
            if end < len(sql):
                if len(self._trimmed) >= _MAX_CACHED_KINDS:
                    self._trimmed.clear()
                self._trimmed[sql] = (kind, sql[:end])
                return kind, sql[:end]
        if len(self._kinds) >= _MAX_CACHED_KINDS:
            self._kinds.clear()
        self._kinds[sql] = kind
        return kind, sql

    def _prepared(self, sql: str, parameters: Any, look: Callable[[apsw.Cursor], Any]) -> Any:
        """What ``look`` finds on ``sql`` prepared and bound but not run; ``_NOT_PREPARED``
        if it does not prepare (running it would raise)."""
        found: list[Any] = []

        def trace(cursor: apsw.Cursor, _sql: str, _bindings: Any) -> bool:
            found.append(look(cursor))
            return False

        with self._lock:
            probe = self._live.cursor()
            probe.convert_binding = convert_binding
            probe.exec_trace = trace
            try:
                probe.execute(sql, parameters)
            except apsw.ExecTraceAbort:
                pass
            except Exception:  # noqa: BLE001 - it does not prepare: the caller decides
                return _NOT_PREPARED
            finally:
                probe.close()
        return found[0] if found else _NOT_PREPARED

    def _compile(self, sql: str) -> None:
        """Compile ``sql`` without running it; raise its error (translated) if it does not."""
        probe = self._live.cursor()
        probe.exec_trace = _never
        try:
            probe.execute(sql)
        except (apsw.ExecTraceAbort, apsw.BindingsError):
            pass  # compiled; bindings are only missing because nothing runs
        except BaseException as e:  # noqa: BLE001 - translated, never swallowed
            raise_translated(e)
        finally:
            probe.close()

    def _columns_of(self, sql: str, parameters: Any) -> tuple[Any, ...]:
        """The columns ``sql`` would return, learned by preparing it without running it."""
        if sql in self._no_columns or self._db is None:
            return ()
        described = self._prepared(sql, parameters, lambda cursor: cursor.description)
        columns: tuple[Any, ...] = () if described is _NOT_PREPARED else tuple(described)
        if not columns:
            if len(self._no_columns) >= _MAX_CACHED_KINDS:
                self._no_columns.clear()
            self._no_columns.add(sql)
        return columns

    def _writes(self, sql: str) -> bool:
        """Whether ``sql`` may change the database (``sqlite3_stmt_readonly`` is false); True
        for SQL that does not prepare, so that running it raises SQLite's own error."""
        writes = self._prepared(sql, (None,) * placeholders(sql)[0],
                                lambda cursor: not cursor.is_readonly)
        return writes is _NOT_PREPARED or bool(writes)


_LEVELS = ("", "DEFERRED", "IMMEDIATE", "EXCLUSIVE")


def check_level(value: object) -> str | None:
    """The canonical (upper-case) isolation level for ``value``; raises as sqlite3 does."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError("isolation_level must be str or None")
    level = str.upper(value)  # never a subclass's upper()
    if level not in _LEVELS:
        raise ValueError(
            "isolation_level string must be '', 'DEFERRED', 'IMMEDIATE', or 'EXCLUSIVE'"
        )
    return level


class _NotProvided:
    """A public name of ``sqlite3.Connection`` that this module has no counterpart of (a
    newer Python's, say): reading it raises AttributeError, so ``hasattr`` is False, instead
    of reaching the closed standard-library part (see :class:`ConnectionCore`)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        raise AttributeError(f"'Connection' object has no attribute {self.name!r}")


def hide_stdlib_names(connection_class: type) -> None:
    """Make every public name ``connection_class`` inherits from ``sqlite3.Connection``
    unreadable (see :class:`_NotProvided`)."""
    for name in dir(sqlite3.Connection):
        if not name.startswith("_") and getattr(connection_class, name) is getattr(
            sqlite3.Connection, name
        ):
            setattr(connection_class, name, _NotProvided(name))


@functools.cache
def stdlib_dump() -> Any:
    """The standard library's ``sqlite3.dump`` module, even when ``sqlite3`` is this module."""
    module = sys.modules.get("sqlite3.dump")
    if module is not None and hasattr(module, "_iterdump"):
        return module
    path = os.path.join(sysconfig.get_path("stdlib"), "sqlite3", "dump.py")
    spec = importlib.util.spec_from_file_location("bottomless.dbapi._stdlib_dump", path)
    if spec is None or spec.loader is None or not os.path.exists(path):
        raise _exc.NotSupportedError("iterdump needs the standard library's sqlite3/dump.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _never(_cursor: apsw.Cursor, _sql: str, _bindings: Any) -> bool:
    """An exec tracer that stops every statement before it runs (it compiled)."""
    return False

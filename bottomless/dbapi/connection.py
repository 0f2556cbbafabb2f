"""The DB-API connection: ``sqlite3.Connection``'s API over :class:`ConnectionCore`.

Opening is in ``opening.py``; the state and transaction handling its cursors share is in
``core.py``; here are the public methods: transactions, functions and hooks, whole-database
tools.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import apsw

from bottomless.dbapi import callbacks as _callbacks
from bottomless.dbapi import exceptions as _exc
from bottomless.dbapi.blob import Blob
from bottomless.dbapi.core import (
    LEGACY_TRANSACTION_CONTROL,
    ConnectionCore,
    check_level,
    hide_stdlib_names,
    stdlib_dump,
)
from bottomless.dbapi.cursor import Cursor
from bottomless.dbapi.deprecations import positional_callbacks, positional_options, unclosed
from bottomless.dbapi.exceptions import (
    DataError,
    OperationalError,
    ProgrammingError,
    raise_translated,
)
from bottomless.dbapi.opening import open_database
from bottomless.dbapi.sqltext import is_single_statement
from bottomless.errors import BottomlessError
from bottomless.settings import Settings


class Statement:
    """A compiled statement, what calling a connection returns (as in ``sqlite3``)."""

    __slots__ = ("sql",)
    sql: str

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"cannot create '{type(self).__module__}.{type(self).__name__}' instances")

    @classmethod
    def _make(cls, sql: str) -> Statement:
        made = cls.__new__(cls)
        made.sql = sql
        return made


class Connection(ConnectionCore):
    """A database connection that behaves like ``sqlite3.Connection``.

    A file database is opened through the bottomless VFS: it is restored from the bucket if
    missing, and in sync mode every COMMIT is in the bucket before ``commit()`` returns. A
    failed upload makes ``commit()`` raise :class:`OperationalError` (also a
    :class:`bottomless.StoreError`); the transaction is not applied. ``":memory:"`` and ``""``
    are plain, unreplicated SQLite databases.
    """

    Warning = _exc.Warning
    Error = _exc.Error
    InterfaceError = _exc.InterfaceError
    DatabaseError = _exc.DatabaseError
    DataError = _exc.DataError
    OperationalError = _exc.OperationalError
    IntegrityError = _exc.IntegrityError
    InternalError = _exc.InternalError
    ProgrammingError = _exc.ProgrammingError
    NotSupportedError = _exc.NotSupportedError

    @positional_options("_sqlite3.Connection()", allowed=2)
    def __init__(
        self,
        database: str | bytes | os.PathLike[str] | os.PathLike[bytes],
        timeout: float = 5.0,
        detect_types: int = 0,
        isolation_level: str | None = "",
        check_same_thread: bool = True,
        factory: Any = None,
        cached_statements: int = 128,
        uri: bool = False,
        *,
        autocommit: bool | int = LEGACY_TRANSACTION_CONTROL,
        settings: Settings | None = None,
    ) -> None:
        if autocommit not in (True, False, LEGACY_TRANSACTION_CONTROL) or (
            type(autocommit) is not bool and autocommit != LEGACY_TRANSACTION_CONTROL
        ):
            raise ValueError(
                "autocommit must be True, False, or sqlite3.LEGACY_TRANSACTION_CONTROL"
            )
        level = check_level(isolation_level)
        busy_ms = _busy_ms(timeout)  # checked before the open, which may restore and lease
        name = os.fsdecode(database) if isinstance(database, bytes) else os.fspath(database)
        if isinstance(name, bytes):
            name = os.fsdecode(name)
        # a second __init__ replaces the database; until it succeeds the object is unusable
        self._initialized = False
        self._db = None
        try:
            db = open_database(name, uri, settings, max(int(cached_statements), 0))
        except BottomlessError as e:  # the store, a setting, a conflict: its own message
            raise_translated(e)
        except (OSError, UnicodeError) as e:  # the VFS could not open or name the file
            raise OperationalError("unable to open database file") from e
        except BaseException as e:  # noqa: BLE001 - translated, never swallowed
            raise_translated(e)
        db.set_busy_timeout(busy_ms)
        self._start(db, check_same_thread=check_same_thread, detect_types=detect_types,
                    isolation_level=level, autocommit=autocommit)

    # ------------------------------------------------------------ attributes

    @property
    def apsw_connection(self) -> apsw.Connection:
        """The underlying ``apsw.Connection`` (for bottomless.status and apsw-only features)."""
        return self._live

    @property
    def isolation_level(self) -> str | None:
        """``""``, ``"DEFERRED"``, ``"IMMEDIATE"``, ``"EXCLUSIVE"``: BEGIN before DML; None: off."""
        self._check_open()
        return self._isolation_level

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        self._check_open()  # any thread may set it, as in sqlite3; only the COMMIT checks
        level = check_level(value)
        if level is None and self._legacy() and self._live.in_transaction:
            self._check()
            self._run("COMMIT")
        self._isolation_level = level
        self._update_begin()

    @property
    def autocommit(self) -> bool | int:
        """Python 3.12's transaction control: True, False or LEGACY_TRANSACTION_CONTROL."""
        self._check()
        return self._autocommit

    @autocommit.setter
    def autocommit(self, value: bool | int) -> None:
        self._check()
        if type(value) is not bool and value != LEGACY_TRANSACTION_CONTROL:
            raise ValueError(
                "autocommit must be True, False, or sqlite3.LEGACY_TRANSACTION_CONTROL"
            )
        with self._lock:
            if value is True and self._live.in_transaction:
                self._run("COMMIT")
            self._autocommit = value
            self._update_begin()
            if value is False and not self._live.in_transaction:
                self._run("BEGIN")

    @property
    def in_transaction(self) -> bool:
        """True while a transaction is open."""
        self._check_open()
        return bool(self._between_steps(lambda db: db.in_transaction))

    @property
    def total_changes(self) -> int:
        """Rows changed since the connection was opened."""
        self._check_open()
        return int(self._between_steps(lambda db: db.total_changes()))

    # ------------------------------------------------------------ statements

    def cursor(self, factory: Any = Cursor) -> Cursor:
        """A new cursor (``factory(connection)`` must return a Cursor)."""
        self._check()
        made = factory(self)
        if not issubclass(type(made), Cursor):
            raise TypeError(f"factory must return a cursor, not {type(made).__name__}")
        assert isinstance(made, Cursor)
        return made

    def __call__(self, sql: Any = None, /) -> Statement:
        """Compile ``sql`` without running it (``sqlite3`` does the same when called)."""
        self._check()
        if not isinstance(sql, str):
            raise TypeError(f"argument 1 must be str, not {type(sql).__name__}")
        self._check_sql(sql)
        if ";" in sql and not is_single_statement(sql):
            raise ProgrammingError("You can only execute one statement at a time.")
        self._compile(sql)
        return Statement._make(sql)

    def _check_sql(self, sql: str) -> None:
        """Refuse ``sql`` as ``sqlite3`` does before compiling it (size, NUL characters)."""
        if len(sql.encode()) > self._live.limit(apsw.SQLITE_LIMIT_SQL_LENGTH, -1):
            raise DataError("query string is too large")
        if "\0" in sql:
            raise ProgrammingError("the query contains a null character")

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        """A new cursor's ``execute``."""
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> Cursor:
        """A new cursor's ``executemany``."""
        return self.cursor().executemany(sql, parameters)

    def executescript(self, sql_script: str, /) -> Cursor:
        """A new cursor's ``executescript``."""
        return self.cursor().executescript(sql_script)

    def commit(self) -> None:
        """Commit the open transaction; in sync mode it is in the bucket when this returns.

        Raises OperationalError (also a bottomless.StoreError) when the upload fails; the
        transaction is then not committed, locally or in the bucket.
        """
        self._end_transaction("COMMIT")

    def rollback(self) -> None:
        """Roll the open transaction back."""
        self._end_transaction("ROLLBACK")

    def _end_transaction(self, verb: str) -> None:
        """COMMIT or ROLLBACK the open transaction; with ``autocommit=False`` open the next."""
        self._check()
        if self._autocommit is True:
            return
        with self._lock:
            try:  # with autocommit=False always, as sqlite3: a COMMIT with none open fails
                if self._autocommit is False or self._live.in_transaction:
                    self._run(verb)
            except BaseException as e:
                # a failed upload rolled the transaction back: with autocommit=False the
                # connection must still be in one, or the app's retry would run statement by
                # statement, each committed on its own (SQLite's own errors: as sqlite3, none)
                if (self._autocommit is False and isinstance(e, BottomlessError)
                        and not self._live.in_transaction):
                    with contextlib.suppress(_exc.Error):
                        self._run("BEGIN")
                raise
            if self._autocommit is False:
                self._run("BEGIN")

    def close(self) -> None:
        """Close the connection; an uncommitted transaction is rolled back, not committed."""
        if self._db is None:
            if not self._initialized:
                raise self._gone()
            return
        self._check()
        with self._lock:
            db = self._db
            if self._autocommit is False and db.in_transaction:
                self._run("ROLLBACK")
            failed: BaseException | None = None
            for blob in list(self._blobs):
                try:
                    blob._discard()
                except BaseException as e:  # noqa: BLE001 - raised below, once closed
                    failed = failed or e
            self._db = None
            try:
                db.close()
            except BaseException as e:  # noqa: BLE001 - translated, never swallowed
                db.close(True)  # closed whatever failed: the connection cannot be reached now
                raise_translated(e)
            if failed is not None:
                raise_translated(failed)

    if sys.version_info >= (3, 13):
        def __del__(self) -> None:
            if self._db is not None:  # collected while open: apsw closes it, sqlite3 warns
                unclosed(self)

    def __enter__(self) -> Connection:
        self._check_open()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> Literal[False]:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.rollback()
                raise
        else:
            self.rollback()
        return False

    # ------------------------------------------------------------ functions and hooks

    @positional_callbacks("_sqlite3.Connection.create_function()", ("name", "narg", "func"))
    def create_function(self, name: str, narg: int, func: Callable[..., Any] | None, *,
                        deterministic: bool = False) -> None:
        """Register a scalar SQL function (None removes it)."""
        self._check()
        wrapped = None if func is None else _callbacks.scalar_function(func)
        try:
            self._live.create_scalar_function(name, wrapped, narg, deterministic=deterministic)
        except apsw.Error as e:
            raise OperationalError("Error creating function") from e

    @positional_callbacks("_sqlite3.Connection.create_aggregate()",
                          ("name", "n_arg", "aggregate_class"))
    def create_aggregate(self, name: str, n_arg: int, aggregate_class: Any) -> None:
        """Register an aggregate: a class with ``step(*args)`` and ``finalize()``."""
        self._check()
        factory = _callbacks.Aggregate.factory(aggregate_class, window=False)
        try:
            self._live.create_aggregate_function(name, factory, n_arg)
        except apsw.Error as e:
            raise OperationalError("Error creating aggregate") from e

    def create_window_function(self, name: str, num_params: int, aggregate_class: Any, /
                               ) -> None:
        """Register an aggregate window function: ``step``, ``value``, ``inverse``, ``finalize``."""
        self._check()
        factory = _callbacks.Aggregate.factory(aggregate_class, window=True)
        try:
            self._live.create_window_function(name, factory, num_params)
        except apsw.Error as e:
            code = getattr(e, "result", -1)
            raise ProgrammingError(apsw.mapping_result_codes.get(code, str(e))) from e

    def create_collation(self, name: str, callable: Callable[[str, str], int] | None, /
                         ) -> None:
        """Register a collation ``callable(a, b) -> int`` (None removes it)."""
        self._check()
        if callable is not None and not _is_callable(callable):
            raise TypeError("parameter must be callable")
        self._live.create_collation(
            name, None if callable is None else _callbacks.collation(callable)
        )

    @positional_callbacks("_sqlite3.Connection.set_authorizer()", ("authorizer_callback",))
    def set_authorizer(self, authorizer_callback: Callable[..., int] | None) -> None:
        """Authorize each action while statements are prepared (SQLITE_OK/DENY/IGNORE)."""
        self._check()
        self._live.authorizer = (
            None if authorizer_callback is None else _callbacks.authorizer(authorizer_callback)
        )

    @positional_callbacks("_sqlite3.Connection.set_progress_handler()", ("progress_handler",))
    def set_progress_handler(self, progress_handler: Callable[[], Any] | None, n: int) -> None:
        """Call ``progress_handler`` every ``n`` VM steps; a true result interrupts."""
        self._check()
        if progress_handler is None:
            self._live.set_progress_handler(None)
            return
        self._live.set_progress_handler(_callbacks.progress_handler(progress_handler), n)

    @positional_callbacks("_sqlite3.Connection.set_trace_callback()", ("trace_callback",))
    def set_trace_callback(self, trace_callback: Callable[[str], Any] | None) -> None:
        """Call ``trace_callback(sql)`` for each statement SQLite runs."""
        self._check()
        db = self._live
        if trace_callback is None:
            db.trace_v2(0, None)
            db.exec_trace = None
            return
        tracer = _callbacks.StatementTracer(trace_callback)
        db.exec_trace = tracer.remember
        db.trace_v2(apsw.SQLITE_TRACE_STMT, tracer)

    def interrupt(self) -> None:
        """Abort the statement running on this connection (callable from any thread)."""
        self._live.interrupt()

    # ------------------------------------------------------------ whole-database tools

    def iterdump(self, *, filter: str | None = None) -> Iterator[str]:
        """The database as SQL text, statement by statement (the standard library's dump)."""
        self._check()
        dump = stdlib_dump()
        lines: Iterator[str] = (
            dump._iterdump(self) if filter is None else dump._iterdump(self, filter=filter)
        )
        return lines

    def backup(self, target: Connection, *, pages: int = -1,
               progress: Callable[[int, int, int], Any] | None = None, name: str = "main",
               sleep: float = 0.250) -> None:
        """Copy this database into ``target`` (another Connection), ``pages`` at a time."""
        self._check()
        if not isinstance(target, Connection):
            raise TypeError("target is not a Connection")
        target._check()
        if target is self:
            raise ValueError("target cannot be the same connection instance")
        if progress is not None and not _is_callable(progress):
            raise TypeError("progress argument must be a callable")
        step = pages if pages > 0 else -1
        try:
            with target._live.backup("main", self._live, name) as job:
                while True:
                    try:
                        job.step(step)
                    except (apsw.BusyError, apsw.LockedError):
                        time.sleep(sleep)
                        continue
                    if progress is not None:
                        done = apsw.SQLITE_DONE if job.done else apsw.SQLITE_OK
                        progress(done, job.remaining, job.page_count)
                    if job.done:
                        break
        except apsw.Error as e:
            raise_translated(e)

    def blobopen(self, table: str, column: str, row: int, /, *, readonly: bool = False,
                 name: str = "main") -> Blob:
        """Open the BLOB in ``table.column`` of rowid ``row`` for incremental I/O."""
        self._check()
        try:
            blob = Blob._wrap(self, self._live.blob_open(name, table, column, row, not readonly))
        except apsw.Error as e:
            raise_translated(e)
        self._blobs.add(blob)
        return blob

    def getlimit(self, category: int, /) -> int:
        """The current value of a run-time limit (``SQLITE_LIMIT_*``)."""
        return self.setlimit(category, -1)

    def setlimit(self, category: int, limit: int, /) -> int:
        """Set a run-time limit; return its previous value (a negative limit only reads)."""
        self._check()
        if not 0 <= category <= apsw.SQLITE_LIMIT_WORKER_THREADS:
            raise ProgrammingError("'category' is out of bounds")
        return int(self._live.limit(category, limit))

    def getconfig(self, op: int, /) -> bool:
        """Whether the boolean option ``op`` (an ``SQLITE_DBCONFIG_*``) is on (Python 3.12's
        ``getconfig``, on every Python)."""
        return self._config(op, -1)

    def setconfig(self, op: int, enable: bool = True, /) -> bool:
        """Turn the boolean option ``op`` on or off; return whether it is on now."""
        return self._config(op, 1 if enable else 0)

    def _config(self, op: int, value: int) -> bool:
        self._check()
        if op not in BOOLEAN_CONFIGS:
            raise ValueError(f"unknown config 'op': {op}")
        try:
            return bool(self._live.config(op, value))
        except apsw.Error as e:
            raise_translated(e)

    def enable_load_extension(self, enabled: bool, /) -> None:
        """Allow or forbid :meth:`load_extension` (and SQL's ``load_extension()``)."""
        self._check()
        try:
            self._live.enable_load_extension(bool(enabled))
        except apsw.Error as e:
            raise_translated(e)

    def load_extension(self, name: str, /, *, entrypoint: str | None = None) -> None:
        """Load the SQLite extension in the shared library ``name`` (enable it first)."""
        self._check()
        try:
            self._live.load_extension(os.fspath(name), entrypoint)
        except apsw.ExtensionLoadingError as e:  # an OperationalError in sqlite3
            message = str(e).removeprefix("ExtensionLoadingError: ")
            raise OperationalError(message) from e
        except apsw.Error as e:
            raise_translated(e)

    def serialize(self, *, name: str = "main") -> bytes:
        """The database ``name`` as bytes, as it would be written to a file. Raises
        OperationalError for a schema that is not attached, as sqlite3 does."""
        self._check()
        data = self._live.serialize(name)
        if data is None:
            raise OperationalError(f"unable to serialize '{name}'")
        return bytes(data)

    def deserialize(self, data: bytes, /, *, name: str = "main") -> None:
        """Replace database ``name`` with an in-memory copy of ``data`` (not replicated)."""
        self._check()
        view = memoryview(data)  # TypeError for anything but a buffer, as in sqlite3
        if not view.c_contiguous:
            raise BufferError("underlying buffer is not C-contiguous")
        try:
            self._live.deserialize(name, view.tobytes())
        except apsw.Error as e:
            raise_translated(e)


#: the ``SQLITE_DBCONFIG_*`` options that are on or off (the others take other arguments)
BOOLEAN_CONFIGS = frozenset(
    value for name, value in vars(apsw).items()
    if name.startswith("SQLITE_DBCONFIG_") and isinstance(value, int)
    and name not in ("SQLITE_DBCONFIG_MAINDBNAME", "SQLITE_DBCONFIG_LOOKASIDE",
                     "SQLITE_DBCONFIG_FP_DIGITS", "SQLITE_DBCONFIG_MAX")
)


hide_stdlib_names(Connection)


def _is_callable(value: object) -> bool:
    return callable(value)


def _busy_ms(timeout: Any) -> int:
    """``timeout`` (seconds) as SQLite's busy timeout in ms; TypeError as ``sqlite3`` raises
    it for what is not a real number (a string from a config file)."""
    if isinstance(timeout, (str, bytes, bytearray)) or not hasattr(timeout, "__float__"):
        raise TypeError(f"must be real number, not {type(timeout).__name__}")
    ms = float(timeout) * 1000
    return 0 if math.isnan(ms) else int(min(max(ms, -(2**31)), 2**31 - 1))  # inf: the most

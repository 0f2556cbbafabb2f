"""The DB-API cursor: statements, parameters and rows, by ``sqlite3``'s rules, over apsw."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, NoReturn

import apsw

from bottomless.dbapi.core import ConnectionCore, convert_binding
from bottomless.dbapi.deprecations import SINCE_3_12, named_placeholders
from bottomless.dbapi.exceptions import (
    DataError,
    OperationalError,
    ProgrammingError,
    raise_translated,
)
from bottomless.dbapi.implicit import ImplicitBegin
from bottomless.dbapi.types import (
    PARSE_COLNAMES,
    PARSE_DECLTYPES,
    adapt_all,
    column_bytes,
    find_converter,
    registry,
    stdlib_adapters,
)

_get_ident = threading.get_ident


def _sequence(parameters: Any) -> Any:
    """Parameters apsw can bind, taken as sqlite3 takes them: a dict, or a sequence.

    A list becomes a tuple: apsw reads a list in place while it binds, and an adapter that
    empties it would crash the interpreter. Other sequences are read by index, as sqlite3
    reads them; anything else (a set, a generator, None) is refused.
    """
    if isinstance(parameters, dict):
        return parameters
    if type(parameters) is list:
        return tuple(parameters)
    if not hasattr(type(parameters), "__getitem__"):
        raise ProgrammingError("parameters are of unsupported type")
    return tuple(parameters[index] for index in range(len(parameters)))


class _RowTracer:
    """apsw's row tracer for a cursor with a row factory, converters or a text factory.

    It holds the cursor weakly: apsw's cursor keeps its tracer, and a cycle back to the
    Cursor would keep a dropped cursor's statement open (and its table locked) until the
    garbage collector ran, where sqlite3 releases it at once.
    """

    __slots__ = ("cursor",)

    def __init__(self, cursor: Cursor) -> None:
        self.cursor = weakref.ref(cursor)

    def __call__(self, _cursor: apsw.Cursor, row: tuple[Any, ...]) -> Any:
        cursor = self.cursor()
        if cursor is None:
            return row
        if cursor.connection._transform_rows:
            row = cursor._transform(row)
        factory = cursor.row_factory
        return row if factory is None else factory(cursor, row)


def _column_name(name: str) -> str:
    """A ``PARSE_COLNAMES`` column name without its ``[type]`` (and the space before it)."""
    cut = name.find("[")
    if cut < 0:
        return name
    return name[: cut - 1] if cut > 0 and name[cut - 1] == " " else name[:cut]


class Cursor:
    """A cursor of a :class:`~bottomless.dbapi.Connection`, as ``sqlite3.Cursor`` behaves.

    ``rowcount`` is the number of rows a DML statement changed (summed over ``executemany``)
    and -1 for anything else; ``lastrowid`` is the connection's last inserted rowid after each
    ``execute``; ``description`` names the result columns, even of an empty result.
    """

    # until __init__ has run the cursor refuses everything ("Base Cursor.__init__ not called.")
    _closed = True

    def __init__(self, connection: ConnectionCore, /) -> None:
        # ConnectionCore is only ever made as a Connection: the message names the public class
        if not isinstance(connection, ConnectionCore):
            raise TypeError(
                f"argument 1 must be bottomless.dbapi.Connection, not {type(connection).__name__}"
            )
        connection._check()
        # (never self.__dict__: reading it makes every attribute access of the cursor slower)
        previous: apsw.Cursor | None = getattr(self, "_cur", None)
        if previous is not None:
            try:  # apsw refuses while the cursor is fetching: recursive use
                previous.close()
            except apsw.Error as e:
                raise_translated(e)
        self.connection = connection
        self._cur: apsw.Cursor = connection._live.cursor()
        self._cur.convert_binding = convert_binding
        self.arraysize = 1
        self.row_factory: Any = connection.row_factory
        self.rowcount = -1
        self.lastrowid: int | None = None
        self._description: tuple[tuple[Any, ...], ...] | None = None
        self._pending = False  # description still to be worked out from the statement
        self._sql = ""
        self._params: Any = None
        self._names: tuple[str, ...] | None = None
        self._converters: list[Any] | None = None
        # the rows of a DML ... RETURNING not fetched yet (see _run_returning)
        self._returning: list[Any] | None = None
        self._changes = 0
        self._traced = False
        self._closed = False

    # ------------------------------------------------------------ checks

    def _check(self) -> None:
        if self._closed:
            raise self._unusable()
        self.connection._check()

    def _unusable(self) -> ProgrammingError:
        if not hasattr(self, "_cur"):
            return ProgrammingError("Base Cursor.__init__ not called.")
        return ProgrammingError("Cannot operate on a closed cursor.")

    def _fail(self, error: BaseException) -> NoReturn:
        """Raise the DB-API form of ``error``, knowing the statement it came from."""
        if isinstance(error, UnicodeDecodeError):
            raise self._decode_error(error) from error
        if isinstance(error, apsw.TooBigError) and self._sql and len(
            self._sql.encode(errors="replace")
        ) > self.connection._live.limit(apsw.SQLITE_LIMIT_SQL_LENGTH, -1):
            raise DataError("query string is too large") from error
        raise_translated(error)

    def _decode_error(self, error: UnicodeDecodeError) -> OperationalError:
        try:
            names = [column[0] for column in self._cur.description]
        except apsw.Error:
            names = []
        column = names[0] if len(names) == 1 else "?"
        text = bytes(error.object).decode("utf-8", "replace")
        return OperationalError(f"Could not decode to UTF-8 column '{column}' with text '{text}'")

    # ------------------------------------------------------------ executing

    # one function, however long: it is the path of every statement, and each call costs
    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        """Execute one SQL statement with qmark (``?``) or named (``:name``) parameters."""
        if self._closed:  # _check(), inlined: this is the hot path
            raise self._unusable()
        conn = self.connection
        conn._check()
        if not isinstance(sql, str):
            raise TypeError(f"execute() argument 1 must be str, not {type(sql).__name__}")
        with conn._lock:
            kind = conn._kinds.get(sql)
            if kind is None:  # new, or followed by comments that are cut off
                kind, sql = conn._classify(sql)
            db = conn._db
            if db is None:  # closed by another thread since the check
                raise conn._gone()
            began = None
            if 0 < kind < 3 and conn._begin is not None and not db.in_transaction:
                began = ImplicitBegin(conn, self._cur)
            if self.row_factory is not None or conn._transform_rows:
                if not self._traced:
                    self._cur.row_trace = _RowTracer(self)
                    self._traced = True
            elif self._traced:
                self._cur.row_trace = None
                self._traced = False
            if type(parameters) is not tuple:
                parameters = _sequence(parameters)
            if (SINCE_3_12 and parameters and type(parameters) is tuple
                    and sql not in named_placeholders.unnamed):
                named_placeholders.check(sql, len(parameters))
            if len(stdlib_adapters) != registry.stdlib_size:
                registry.refresh()
            if registry.shadows_native:
                parameters = adapt_all(parameters)
            self._pending = True
            self._names = None
            self._converters = None
            self._returning = None
            self._sql = sql
            self._params = parameters
            try:
                self._cur.execute(sql, parameters)
            except BaseException as e:  # noqa: BLE001 - translated, never swallowed
                self.rowcount = -1
                self._pending = False
                self._description = None
                if began:
                    began.failed(e, sql)
                self._fail(e)
            finally:
                if began:
                    began.done()
            if kind == 3:  # WITH ... RETURNING: if it writes, run it to the end now, so
                # that an autocommit commit that fails raises here, not at a later reset
                if self._active() and not self._cur.is_readonly:
                    self._run_returning(db)
                    self._changes = -1  # not DML to sqlite3: rowcount stays -1
                self.rowcount = -1
            elif kind:
                if kind == 2 and self._active():
                    self._run_returning(db)
                else:
                    self.rowcount = db.changes()
            else:
                self.rowcount = -1
            self.lastrowid = db.last_insert_rowid()
            return self

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> Cursor:
        """Execute one DML statement once per set of parameters; ``rowcount`` is the sum."""
        self._check()
        if not isinstance(sql, str):
            raise TypeError(f"executemany() argument 1 must be str, not {type(sql).__name__}")
        conn = self.connection
        with conn._lock:
            kind = conn._kinds.get(sql)
            if kind is None:
                kind, sql = conn._classify(sql)
            # as in sqlite3: anything that writes; only DML begins a transaction, counts rows
            dml = 0 < kind < 3
            if not dml and not conn._writes(sql):
                raise ProgrammingError("executemany() can only execute DML statements.")
            db = conn._live
            seq_of_parameters = iter(seq_of_parameters)  # as sqlite3: first, then compile,
            if dml:  # and only then BEGIN (apsw compiles nothing when there are no rows),
                conn._compile(sql)  # so that any error after the BEGIN keeps it, as there
                if conn._begin is not None and not db.in_transaction:
                    conn._begin_transaction()
            self._reset()
            if SINCE_3_12:
                seq_of_parameters = named_placeholders.checked_rows(sql, seq_of_parameters)
            if len(stdlib_adapters) != registry.stdlib_size:
                registry.refresh()
            if registry.shadows_native:
                seq_of_parameters = (adapt_all(p) for p in seq_of_parameters)
            before = db.total_changes()
            try:
                self._cur.executemany(sql, seq_of_parameters)
                if kind >= 2:
                    for _ in self._cur:
                        pass
            except BaseException as e:  # noqa: BLE001 - translated, never swallowed
                self.rowcount = -1
                raise_translated(e)
            self.rowcount = db.total_changes() - before if dml else -1
        return self

    def executescript(self, sql_script: str, /) -> Cursor:
        """Execute several statements; a pending transaction is committed first (legacy)."""
        self._check()
        if not isinstance(sql_script, str):
            raise TypeError(
                f"executescript() argument must be str, not {type(sql_script).__name__}"
            )
        conn = self.connection
        if "\0" in sql_script:
            raise ValueError("embedded null character")
        if len(sql_script.encode()) > conn._live.limit(apsw.SQLITE_LIMIT_SQL_LENGTH, -1):
            raise DataError("query string is too large")
        with conn._lock:
            conn._commit_for_script()
            self._reset()
            try:
                self._cur.execute(sql_script)
                for _ in self._cur:
                    pass
            except BaseException as e:  # noqa: BLE001 - translated, never swallowed
                raise_translated(e)
        return self

    def _reset(self) -> None:
        self._pending = False
        self._description = None
        self._names = None
        self._returning = None
        if self._traced:
            self._cur.row_trace = None
            self._traced = False

    def _active(self) -> bool:
        try:
            self._cur.description  # noqa: B018 - raises once the statement is done
        except apsw.ExecutionCompleteError:
            return False
        return True

    # ------------------------------------------------------------ rows

    def _transform(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        found = self._converters
        if found is None:
            found = self._converters = self._column_converters()
        text_factory = self.connection.text_factory
        values = []
        for value, converter in zip(row, found, strict=False):
            if value is not None and converter is not None:
                # sqlite3 reads an empty TEXT or BLOB as NULL: it reaches no converter
                value = None if value in (b"", "") else converter(column_bytes(value))
            elif isinstance(value, str) and text_factory is not str:
                value = value.encode() if text_factory is bytes else text_factory(value.encode())
            values.append(value)
        return tuple(values)

    def _column_converters(self) -> list[Any]:
        detect = self.connection._detect_types
        found: list[Any] = []
        for name, decltype, *_ in self._cur.description:
            converter = None
            if detect & PARSE_COLNAMES:
                start = name.find("[")
                end = name.find("]", start + 1)
                if start >= 0 and end > start:
                    converter = find_converter(name[start + 1 : end].upper())
            if converter is None and detect & PARSE_DECLTYPES and decltype:
                base = decltype.split("(", 1)[0].split(" ", 1)[0]
                converter = find_converter(base.upper())
            found.append(converter)
        return found

    def _run_returning(self, db: apsw.Connection) -> None:
        """Run a DML ... RETURNING to its end now and keep its rows for the fetch methods.

        SQLite makes every change at the first step anyway, but reports how many only once
        the statement is done; sqlite3's ``rowcount`` is 0 until the last row is fetched,
        and then that number.
        """
        self._pending = False
        self._description = self._describe()
        # rows are kept as SQLite gives them: the row factory and converters run when they
        # are fetched, as in sqlite3, so that one that raises cannot stop the statement
        # half-way (its autocommit commit, and a failed upload, would then wait for a reset)
        tracer = self._cur.row_trace if self._traced else None
        if tracer is not None:
            if self.connection._transform_rows and self._converters is None:
                self._converters = self._column_converters()
            self._cur.row_trace = None
        try:
            rows: list[Any] = self._cur.fetchall()
        except BaseException as e:  # noqa: BLE001 - translated, never swallowed
            self.rowcount = -1
            self._fail(e)
        finally:
            if tracer is not None:
                self._cur.row_trace = tracer
        self.rowcount = 0
        self._changes = db.changes()
        self._returning = rows

    def _take(self, count: int | None) -> list[Any]:
        """Up to ``count`` (None: all) kept RETURNING rows; the last sets ``rowcount``."""
        rows = self._returning
        assert rows is not None
        end = len(rows) if count is None else min(max(count, 0), len(rows))
        taken = rows[:end]
        tracer = self._cur.row_trace if self._traced else None
        if tracer is not None:  # a row factory or converter that raises leaves them kept
            taken = [tracer(self._cur, row) for row in taken]
        if count is None or count >= len(rows):
            self._returning = None
            self.rowcount = self._changes
        else:
            del rows[:end]
        return taken

    def fetchone(self) -> Any:
        """The next row, or None when there are no more."""
        if self._closed:  # _check(), inlined: this is the hot path
            raise self._unusable()
        self.connection._check()
        with self.connection._lock:
            if self._returning is not None:
                return self._take(1)[0]
            try:
                return next(self._cur)
            except StopIteration:
                return None
            except BaseException as e:  # noqa: BLE001 - translated, never swallowed
                self._fail(e)

    def fetchmany(self, size: int | None = None) -> list[Any]:
        """Up to ``size`` (default ``arraysize``) more rows; all of them if it is 0 or less,
        as ``sqlite3`` does."""
        self._check()
        wanted = self.arraysize if size is None else size
        count = wanted if wanted > 0 else None
        rows: list[Any] = []
        with self.connection._lock:
            if self._returning is not None:
                return self._take(count)
            try:
                for row in self._cur:
                    rows.append(row)
                    if count is not None and len(rows) >= count:
                        break
            except BaseException as e:  # noqa: BLE001 - translated, never swallowed
                self._fail(e)
        return rows

    def fetchall(self) -> list[Any]:
        """Every remaining row."""
        self._check()
        with self.connection._lock:
            if self._returning is not None:
                return self._take(None)
            try:
                rows: list[Any] = self._cur.fetchall()
            except BaseException as e:  # noqa: BLE001 - translated, never swallowed
                self._fail(e)
        return rows

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._closed:  # _check(), inlined: this is the hot path
            raise self._unusable()
        self.connection._check()
        with self.connection._lock:
            if self._returning is not None:
                return self._take(1)[0]
            try:
                return next(self._cur)
            except StopIteration:
                raise
            except BaseException as e:  # noqa: BLE001 - translated, never swallowed
                self._fail(e)

    # ------------------------------------------------------------ description

    @property
    def description(self) -> tuple[tuple[Any, ...], ...] | None:
        """One 7-tuple ``(name, None, None, None, None, None, None)`` per result column."""
        if self._pending:
            self._pending = False
            self._description = self._describe()
        return self._description

    def _describe(self) -> tuple[tuple[Any, ...], ...] | None:
        try:
            raw = self._cur.description
        except apsw.ExecutionCompleteError:
            raw = self.connection._columns_of(self._sql, self._params)
        except apsw.Error as e:  # closed with its connection before it was ever described
            self._pending = True
            raise_translated(e)
        if not raw:
            return None
        strip = self.connection._detect_types & PARSE_COLNAMES
        return tuple(
            (_column_name(column[0]) if strip else column[0], None, None, None, None, None, None)
            for column in raw
        )

    def _column_names(self) -> tuple[str, ...]:
        names = self._names
        if names is None:
            description = self.description or ()
            names = self._names = tuple(column[0] for column in description)
        return names

    # ------------------------------------------------------------ the rest of PEP 249

    def setinputsizes(self, sizes: Any, /) -> None:
        """Accepted and ignored, as PEP 249 allows."""

    def setoutputsize(self, size: Any, column: Any = None, /) -> None:
        """Accepted and ignored, as PEP 249 allows."""

    def close(self) -> None:
        """Close the cursor; using it afterwards raises ProgrammingError."""
        if self._closed:
            if not hasattr(self, "_cur"):
                raise self._unusable()
            return
        self.connection._check()
        try:
            self._cur.close()
        except apsw.Error as e:  # inside one of its own converters: recursive use
            raise_translated(e)
        self._closed = True

"""The DB-API cursor: statements, parameters and rows, by ``sqlite3``'s rules, over apsw."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import apsw

from bottomless.dbapi.exceptions import ProgrammingError, raise_translated
from bottomless.dbapi.types import (
    PARSE_COLNAMES,
    PARSE_DECLTYPES,
    adapt_all,
    bind_value,
    column_bytes,
    converters,
    registry,
)

if TYPE_CHECKING:
    from bottomless.dbapi.connection import Connection

_get_ident = threading.get_ident


def _convert_binding(_cursor: apsw.Cursor, number: int, value: Any) -> Any:
    return bind_value(number, value)


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

    def __init__(self, connection: Connection, /) -> None:
        from bottomless.dbapi.connection import Connection

        if not isinstance(connection, Connection):
            raise TypeError(
                f"argument 1 must be bottomless.dbapi.Connection, not {type(connection).__name__}"
            )
        connection._check()
        self.connection = connection
        self._cur: apsw.Cursor = connection._live.cursor()
        self._cur.convert_binding = _convert_binding
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
        self._returning = False  # a DML ... RETURNING whose rowcount comes once it is done
        self._traced = False
        self._closed = False

    # ------------------------------------------------------------ checks

    def _check(self) -> None:
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed cursor.")
        self.connection._check()

    # ------------------------------------------------------------ executing

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        """Execute one SQL statement with qmark (``?``) or named (``:name``) parameters."""
        self._check()
        if not isinstance(sql, str):
            raise TypeError(f"execute() argument 1 must be str, not {type(sql).__name__}")
        with self.connection._lock:
            return self._execute(sql, parameters)

    def _execute(self, sql: str, parameters: Any) -> Cursor:
        conn = self.connection
        kind = conn._kinds.get(sql)
        if kind is None:
            kind = conn._classify(sql)
        db = conn._live
        if kind and conn._begin is not None and not db.in_transaction:
            conn._begin_transaction()
        if self.row_factory is not None or conn._transform_rows:
            self._cur.row_trace = self._trace_row
            self._traced = True
        elif self._traced:
            self._cur.row_trace = None
            self._traced = False
        if registry.shadows_native:
            parameters = adapt_all(parameters)
        self._pending = True
        self._names = None
        self._converters = None
        self._returning = False
        self._sql = sql
        self._params = parameters
        try:
            self._cur.execute(sql, parameters)
        except BaseException as e:  # noqa: BLE001 - translated, never swallowed
            self.rowcount = -1
            self._pending = False
            self._description = None
            raise_translated(e)
        if kind:
            if kind == 2 and self._active():
                self.rowcount = 0
                self._returning = True
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
                kind = conn._classify(sql)
            if not kind:
                raise ProgrammingError("executemany() can only execute DML statements.")
            db = conn._live
            if conn._begin is not None and not db.in_transaction:
                conn._begin_transaction()
            self._reset()
            if registry.shadows_native:
                seq_of_parameters = (adapt_all(p) for p in seq_of_parameters)
            before = db.total_changes()
            try:
                self._cur.executemany(sql, seq_of_parameters)
                if kind == 2:
                    for _ in self._cur:
                        pass
            except BaseException as e:  # noqa: BLE001 - translated, never swallowed
                self.rowcount = -1
                raise_translated(e)
            self.rowcount = db.total_changes() - before
        return self

    def executescript(self, sql_script: str, /) -> Cursor:
        """Execute several statements; a pending transaction is committed first (legacy)."""
        self._check()
        if not isinstance(sql_script, str):
            raise ValueError("script argument must be unicode.")
        conn = self.connection
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
        self._returning = False
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

    def _trace_row(self, _cursor: apsw.Cursor, row: tuple[Any, ...]) -> Any:
        if self.connection._transform_rows:
            row = self._transform(row)
        factory = self.row_factory
        if factory is not None:
            return factory(self, row)
        return row

    def _transform(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        found = self._converters
        if found is None:
            found = self._converters = self._column_converters()
        text_factory = self.connection.text_factory
        values = []
        for value, converter in zip(row, found, strict=False):
            if value is not None and converter is not None:
                value = converter(column_bytes(value))
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
                    converter = converters.get(name[start + 1 : end].upper())
            if converter is None and detect & PARSE_DECLTYPES and decltype:
                base = decltype.split("(", 1)[0].split(" ", 1)[0]
                converter = converters.get(base.upper())
            found.append(converter)
        return found

    def _done(self) -> None:
        if self._returning:
            self._returning = False
            self.rowcount = self.connection._live.changes()

    def fetchone(self) -> Any:
        """The next row, or None when there are no more."""
        self._check()
        with self.connection._lock:
            try:
                return next(self._cur)
            except StopIteration:
                self._done()
                return None
            except BaseException as e:  # noqa: BLE001 - translated, never swallowed
                raise_translated(e)

    def fetchmany(self, size: int | None = None) -> list[Any]:
        """Up to ``size`` (default ``arraysize``) more rows."""
        self._check()
        count = self.arraysize if size is None else size
        rows: list[Any] = []
        with self.connection._lock:
            try:
                for row in self._cur:
                    rows.append(row)
                    if len(rows) >= count:
                        break
                else:
                    self._done()
            except BaseException as e:  # noqa: BLE001 - translated, never swallowed
                raise_translated(e)
        return rows

    def fetchall(self) -> list[Any]:
        """Every remaining row."""
        self._check()
        with self.connection._lock:
            try:
                rows: list[Any] = self._cur.fetchall()
            except BaseException as e:  # noqa: BLE001 - translated, never swallowed
                raise_translated(e)
            self._done()
        return rows

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        self._check()
        with self.connection._lock:
            try:
                return next(self._cur)
            except StopIteration:
                self._done()
                raise
            except BaseException as e:  # noqa: BLE001 - translated, never swallowed
                raise_translated(e)

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
            return
        self.connection._check()
        self._closed = True
        self._cur.close()

"""The implicit BEGIN that ``sqlite3`` issues before DML, undone when the DML did not compile.

``sqlite3`` compiles a statement, then issues its BEGIN, then binds the parameters and runs
it. apsw compiles, binds and runs in one call, so the BEGIN has to come first; apsw's exec
tracer, which runs once the statement is compiled and bound (before its first step), tells
afterwards whether it got that far. If it did not, and the error is not one of binding (which
``sqlite3`` raises after its BEGIN), the BEGIN is rolled back: a statement that does not
compile leaves no transaction open, as in ``sqlite3``. (``executemany`` compiles its
statement first instead, as apsw compiles nothing for an empty sequence.)
"""

from __future__ import annotations

import contextlib
from typing import Any

import apsw

#: errors apsw raises while binding parameters, after compiling (a value over the length
#: limit is TooBigError, as is SQL over the SQL length limit, which is told apart by length)
_BINDING_ERRORS = (apsw.BindingsError, apsw.TooBigError, apsw.RangeError)


class ImplicitBegin:
    """The BEGIN issued before one statement on ``cursor`` of ``connection``."""

    __slots__ = ("compiled", "connection", "cursor")

    def __init__(self, connection: Any, cursor: apsw.Cursor) -> None:
        self.connection = connection
        self.cursor = cursor
        self.compiled = False
        connection._begin_transaction()
        cursor.exec_trace = self._on_compiled

    def _on_compiled(self, cursor: apsw.Cursor, sql: str, bindings: Any) -> bool:
        self.compiled = True
        outer = self.connection._live.exec_trace  # set_trace_callback's, shadowed by ours
        return True if outer is None else bool(outer(cursor, sql, bindings))

    def failed(self, error: BaseException, sql: str) -> None:
        """The statement ``sql`` raised ``error``: roll the BEGIN back if it did not compile."""
        if self.compiled or not isinstance(error, apsw.Error):
            return
        if isinstance(error, _BINDING_ERRORS) and not (
            isinstance(error, apsw.TooBigError) and len(sql.encode(errors="replace"))
            > self.connection._live.limit(apsw.SQLITE_LIMIT_SQL_LENGTH, -1)
        ):
            return
        self.rollback()

    def rollback(self) -> None:
        """Undo the BEGIN; the statement's own error is the one raised."""
        with contextlib.suppress(apsw.Error):
            self.connection._txn.execute("ROLLBACK")

    def done(self) -> None:
        """Stop watching the cursor (after the statement, failed or not)."""
        self.cursor.exec_trace = None

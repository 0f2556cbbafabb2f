"""User callbacks as ``sqlite3`` runs them: functions, aggregates, collations, hooks, tracing.

apsw calls Python directly; these wrappers give each callback ``sqlite3``'s rules: what a
failure turns into (see :func:`bottomless.dbapi.exceptions.translate`), which results SQLite
can take, and that a failure is reported through ``sys.unraisablehook`` when
``enable_callback_tracebacks(True)`` is on. None of them refers to its connection, so a
connection or cursor that the program drops is freed at once, as in ``sqlite3``.
"""

from __future__ import annotations

import sys
import types
import weakref
from collections.abc import Callable
from typing import Any

import apsw

from bottomless.dbapi.exceptions import DataError, UserFunctionError

_NATIVE_RESULTS = (int, float, str, bytes, bytearray, memoryview)
_INT64 = range(-(2**63), 2**63)
_INT32 = range(-(2**31), 2**31)
_MAX_TRACED_STATEMENTS = 64


class _Reporting:
    """Whether exceptions raised in user callbacks are reported (``enable_callback_tracebacks``)."""

    tracebacks = False


reporting = _Reporting()


def report(error: BaseException, origin: object) -> None:
    """Hand ``error`` to ``sys.unraisablehook`` if callback tracebacks are enabled."""
    if reporting.tracebacks:
        sys.unraisablehook(types.SimpleNamespace(
            exc_type=type(error), exc_value=error, exc_traceback=error.__traceback__,
            err_msg="Exception ignored in user callback", object=origin,
        ))


def checked_result(value: Any) -> Any:
    """``value`` if SQLite can take it as a result; raises as ``sqlite3`` fails to set it."""
    kind = type(value)
    if kind is int:
        if value not in _INT64:
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
    elif kind is str:
        if not value.isascii():
            value.encode()  # UnicodeEncodeError for lone surrogates
    elif kind is memoryview:
        if not value.c_contiguous:
            raise BufferError("underlying buffer is not C-contiguous")
    elif value is not None and not isinstance(value, _NATIVE_RESULTS):
        raise UserFunctionError("user-defined function raised exception")
    return value


def scalar_function(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` made to fail its SQL statement as ``sqlite3``'s user functions fail."""
    def call(*args: Any) -> Any:
        try:
            return checked_result(func(*args))
        except UserFunctionError:
            raise
        except BaseException as e:
            report(e, func)
            raise UserFunctionError("user-defined function raised exception") from e

    return call


class Aggregate:
    """One aggregate's state: the instance is made at the first step, as ``sqlite3`` does.

    With no rows SQLite never calls ``step``, and the result is NULL without calling
    ``finalize``. Failures are reported with the class as their origin.
    """

    __slots__ = ("instance", "kind", "window")

    def __init__(self, kind: type, window: bool) -> None:
        self.kind = kind
        self.window = window
        self.instance: Any = None

    @classmethod
    def factory(cls, kind: Any, *, window: bool) -> Callable[[], tuple[Any, ...]] | None:
        """The apsw aggregate (or window function) factory for class ``kind``."""
        if kind is None:
            return None
        if window:
            return lambda: (cls(kind, True), cls.step, cls.finalize, cls.value, cls.inverse)
        return lambda: (cls(kind, False), cls.step, cls.finalize)

    def _call(self, name: str, args: tuple[Any, ...]) -> Any:
        instance = self.instance
        if instance is None:
            try:
                instance = self.instance = self.kind()
            except BaseException as e:
                report(e, self.kind)
                raise UserFunctionError(
                    "user-defined aggregate's '__init__' method raised error"
                ) from e
        try:
            method = getattr(instance, name)
        except AttributeError as e:
            report(e, self.kind)
            raise UserFunctionError(
                f"user-defined aggregate's '{name}' method not defined"
            ) from e
        try:
            return method(*args)
        except BaseException as e:
            report(e, self.kind)
            raise UserFunctionError(
                f"user-defined aggregate's '{name}' method raised error"
            ) from e

    def step(self, *args: Any) -> None:
        """Feed one row (the instance is made now if this is the first)."""
        self._call("step", args)

    def inverse(self, *args: Any) -> None:
        """Remove one row from the window."""
        self._call("inverse", args)

    def value(self) -> Any:
        """The window's current value."""
        return self._result("value")

    def finalize(self) -> Any:
        """The aggregate's result: NULL when no row was stepped."""
        if self.instance is None:
            return None
        if self.window:
            # SQLite ignores an error set by a window function's xFinal: reported, not raised
            try:
                return self._result("finalize")
            except UserFunctionError:
                return None
        return self._result("finalize")

    def _result(self, name: str) -> Any:
        value = self._call(name, ())
        try:
            return checked_result(value)
        except UserFunctionError:
            raise
        except BaseException as e:
            report(e, self.kind)
            raise UserFunctionError(
                f"user-defined aggregate's '{name}' method raised error"
            ) from e


def collation(func: Callable[[str, str], Any]) -> Callable[[str, str], int]:
    """``func`` with its answer folded to -1, 0 or 1, as ``sqlite3`` reads a collation's."""
    def collate(left: str, right: str) -> int:
        answer = func(left, right)
        if not isinstance(answer, int):
            return 0
        return (answer > 0) - (answer < 0)

    return collate


def authorizer(func: Callable[..., Any]) -> Callable[..., int]:
    """``func`` as an authorizer: an exception or an answer that is no C int denies."""
    def authorize(*args: Any) -> int:
        try:
            answer = func(*args)
        except BaseException as e:  # noqa: BLE001 - a failing authorizer denies
            report(e, func)
            return int(apsw.SQLITE_DENY)
        return answer if type(answer) is int and answer in _INT32 else int(apsw.SQLITE_DENY)

    return authorize


def progress_handler(func: Callable[[], Any]) -> Callable[[], bool]:
    """``func`` as a progress handler: a true answer or an exception interrupts."""
    def progress() -> bool:
        try:
            return bool(func())
        except BaseException as e:  # noqa: BLE001 - a failing handler interrupts
            report(e, func)
            return True

    return progress


class StatementTracer:
    """``set_trace_callback``: each statement as ``sqlite3`` traces it, parameters expanded.

    apsw's statement event carries the SQL as written; the expanded form comes from the
    cursor that runs it, which the connection's exec tracer (:meth:`remember`) records --
    weakly, so that a cursor the program drops still releases its statement. A trigger's
    statements are traced as the statement that fired them, as ``sqlite3`` does.
    """

    def __init__(self, callback: Callable[[str], Any]) -> None:
        self.callback = callback
        self.cursor: weakref.ref[apsw.Cursor] | None = None
        self.traced: dict[int, str] = {}

    def remember(self, cursor: apsw.Cursor, _sql: str, _bindings: Any) -> bool:
        """apsw's exec tracer: note the cursor about to run a statement; let it run."""
        self.cursor = weakref.ref(cursor)
        return True

    def __call__(self, event: dict[str, Any]) -> None:
        try:
            self.callback(self._sql(event))
        except BaseException as e:  # noqa: BLE001 - like sqlite3: reported, not raised
            report(e, self.callback)

    def _sql(self, event: dict[str, Any]) -> str:
        key: int = event["id"]
        sql: str = event["sql"]
        if event["trigger"]:
            return self.traced.get(key, sql)
        cursor = None if self.cursor is None else self.cursor()
        if cursor is not None:
            try:
                sql = cursor.expanded_sql or sql
            except apsw.NoMemError:  # longer than SQLITE_LIMIT_LENGTH: sqlite3 falls back
                report(DataError("Expanded SQL string exceeds the maximum string length"),
                       None)
        if len(self.traced) >= _MAX_TRACED_STATEMENTS:
            self.traced.clear()
        self.traced[key] = sql
        return sql

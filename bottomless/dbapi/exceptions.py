"""The DB-API exception tree of :mod:`bottomless.dbapi`, and the translation from apsw's.

The classes and their names are those of PEP 249 and the standard library's ``sqlite3``::

    Warning
    Error
    ├── InterfaceError
    └── DatabaseError
        ├── DataError
        ├── OperationalError
        ├── IntegrityError
        ├── InternalError
        ├── ProgrammingError
        └── NotSupportedError

A bottomless error (a store failure at COMMIT, a conflicting replica at connect, a bad setting)
is raised as an instance of a class that derives from *both* :class:`OperationalError` and the
bottomless class (:class:`~bottomless.StoreError`, :class:`~bottomless.ConfigError`, ...), so
``except sqlite3.OperationalError`` and ``except bottomless.BottomlessError`` both catch it.
The original error is its ``__cause__``.

Each class also derives from the standard library's class of the same name, so code written for
``sqlite3`` (``except sqlite3.IntegrityError``, or pandas catching ``sqlite3.Error``) handles
this module's errors too.
"""

from __future__ import annotations

import re
import sqlite3
from typing import NoReturn

import apsw

from bottomless.errors import BottomlessError


class Warning(sqlite3.Warning):
    """An important warning, such as data truncation (PEP 249)."""


class Error(sqlite3.Error):
    """Base of every DB-API error; ``sqlite_errorcode``/``sqlite_errorname`` when SQLite's."""

    # None for an error SQLite did not report (sqlite3's have no attribute then); typeshed
    # types sqlite3's as always set
    sqlite_errorcode: int | None = None  # type: ignore[assignment]
    sqlite_errorname: str | None = None  # type: ignore[assignment]


class InterfaceError(Error, sqlite3.InterfaceError):
    """Misuse of the DB-API interface itself."""


class DatabaseError(Error, sqlite3.DatabaseError):
    """An error reported by the database."""


class DataError(DatabaseError, sqlite3.DataError):
    """A value was out of range or too big."""


class OperationalError(DatabaseError, sqlite3.OperationalError):
    """The database could not do what was asked: locked, I/O error, failed upload, ..."""


class IntegrityError(DatabaseError, sqlite3.IntegrityError):
    """A constraint failed."""


class InternalError(DatabaseError, sqlite3.InternalError):
    """SQLite reported an internal error."""


class ProgrammingError(DatabaseError, sqlite3.ProgrammingError):
    """Wrong SQL, wrong number of parameters, a closed object, the wrong thread."""


class NotSupportedError(DatabaseError, sqlite3.NotSupportedError):
    """The operation is not supported."""


class UserFunctionError(Exception):
    """Raised inside SQLite by a wrapped user callback; surfaces as OperationalError."""


# SQLite primary result code -> class, as the standard library maps them
_BY_CODE: dict[int, type[Error]] = {
    apsw.SQLITE_INTERNAL: InternalError,
    apsw.SQLITE_NOTFOUND: InternalError,
    apsw.SQLITE_CORRUPT: DatabaseError,
    apsw.SQLITE_NOTADB: DatabaseError,
    apsw.SQLITE_TOOBIG: DataError,
    apsw.SQLITE_CONSTRAINT: IntegrityError,
    apsw.SQLITE_MISMATCH: IntegrityError,
    apsw.SQLITE_MISUSE: InterfaceError,
    apsw.SQLITE_RANGE: InterfaceError,
}
for _code in ("ERROR", "PERM", "ABORT", "BUSY", "LOCKED", "READONLY", "INTERRUPT", "IOERR",
              "FULL", "CANTOPEN", "PROTOCOL", "EMPTY", "SCHEMA"):  # the rest (AUTH): DatabaseError
    _BY_CODE[getattr(apsw, "SQLITE_" + _code)] = OperationalError

_PROGRAMMING = (apsw.BindingsError, apsw.ThreadingViolationError, apsw.CursorClosedError,
                apsw.ConnectionClosedError, apsw.IncompleteExecutionError)
_COUNTS = re.compile(r"uses (\d+) and there are (\d+) supplied")
_NONE_SUPPLIED = re.compile(r"Statement has (\d+) bindings but you didn't supply any")
_combined: dict[type[BaseException], type[Error]] = {}


def combined_class(origin: type[BaseException]) -> type[Error]:
    """The class deriving from :class:`OperationalError` and the bottomless class ``origin``."""
    found = _combined.get(origin)
    if found is None:
        found = type(origin.__name__, (OperationalError, origin), {"__module__": __name__})
        _combined[origin] = found
    return found


def _with_code(error: Error, extended: int | None) -> Error:
    if extended is not None and extended >= 0:
        error.sqlite_errorcode = extended
        name = apsw.mapping_extended_result_codes.get(
            extended, apsw.mapping_result_codes.get(extended)
        )
        error.sqlite_errorname = None if name is None else str(name)
    return error


def _bindings_message(message: str) -> str:
    found = _COUNTS.search(message)
    if found:
        return ("Incorrect number of bindings supplied. The current statement uses"
                f" {found.group(1)}, and there are {found.group(2)} supplied.")
    found = _NONE_SUPPLIED.search(message)
    if found:
        return ("Incorrect number of bindings supplied. The current statement uses"
                f" {found.group(1)}, and there are 0 supplied.")
    if "has no name, but you supplied a dict" in message:
        number = re.search(r"Binding (\d+)", message)
        index = int(number.group(1)) + 1 if number else 1
        return f"Binding {index} has no name, but you supplied a dictionary (which has only names)."
    return message


def _store_failure(cause: BottomlessError, error: apsw.Error) -> Error:
    cls = combined_class(type(cause))
    translated = cls(f"the transaction was not committed and was rolled back: {cause}")
    translated.__dict__.update({k: v for k, v in vars(cause).items() if not k.startswith("_")})
    return _with_code(translated, getattr(error, "extendedresult", None))


def translate(error: BaseException) -> BaseException:
    """The DB-API exception to raise for ``error`` (apsw's, bottomless's, or a binding's)."""
    if isinstance(error, Error):
        return error
    if isinstance(error, BottomlessError):
        cls = combined_class(type(error))
        translated = cls(str(error))
        translated.__dict__.update(
            {k: v for k, v in vars(error).items() if not k.startswith("_")}
        )
        return translated
    if isinstance(error, UserFunctionError):
        return _callback_failure(error)
    if isinstance(error, apsw.Error):
        cause = error.__cause__
        if isinstance(cause, BottomlessError):
            return _store_failure(cause, error)
        if isinstance(cause, Error):  # one of ours, raised inside a callback
            return cause
        if isinstance(cause, UserFunctionError):
            return _callback_failure(cause)
        message = str(error)
        if isinstance(error, _PROGRAMMING):
            if isinstance(error, apsw.CursorClosedError):
                message = "Cannot operate on a closed cursor."
            elif isinstance(error, apsw.ConnectionClosedError):
                message = "Cannot operate on a closed database."
            elif isinstance(error, apsw.BindingsError):
                message = _bindings_message(message)
            elif isinstance(error, apsw.ThreadingViolationError) and (
                "inside a query" in message or "while inside an executing" in message
            ):
                message = "Recursive use of cursors not allowed."
            return ProgrammingError(message)
        code = getattr(error, "result", -1)
        cls_for = _BY_CODE.get(code, DatabaseError) if code >= 0 else DatabaseError
        return _with_code(cls_for(message), getattr(error, "extendedresult", None))
    if isinstance(error, KeyError) and error.args:
        return ProgrammingError(
            f"You did not supply a value for binding parameter :{error.args[0]}."
        )
    if isinstance(error, TypeError) and (
        "binding" in str(error).lower() or "dict or a sequence" in str(error)
    ):
        return ProgrammingError("parameters are of unsupported type")
    if type(error) is ValueError and "null character" in str(error):
        return ProgrammingError("the query contains a null character")
    if type(error) is OverflowError and "too big to convert" in str(error):
        return OverflowError("Python int too large to convert to SQLite INTEGER")
    return error


def _callback_failure(error: UserFunctionError) -> BaseException:
    """What a failed user function or aggregate raises, as ``sqlite3`` maps it."""
    cause = error.__cause__
    if isinstance(cause, MemoryError):
        return MemoryError()
    if isinstance(cause, OverflowError):
        return DataError("string or blob too big")
    return OperationalError(str(error))


def raise_translated(error: BaseException) -> NoReturn:
    """Raise the DB-API form of ``error``, chained to it, or to the bottomless error apsw
    wrapped (a failed upload's ``StoreError``), which is the one that says what went wrong."""
    translated = translate(error)
    if translated is error:
        raise error
    cause = error.__cause__
    if isinstance(error, apsw.Error) and isinstance(cause, BottomlessError):
        raise translated from cause
    raise translated from error

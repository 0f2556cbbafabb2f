"""A DB-API 2.0 (PEP 249) driver for bottomless that behaves like the standard ``sqlite3``.

Change one import and code written for ``sqlite3`` replicates::

    import bottomless.dbapi as sqlite3

    conn = sqlite3.connect("app.db", settings=bottomless.Settings(backend="s3", bucket="b"))
    with conn:
        conn.execute("INSERT INTO notes VALUES (?)", ("in the bucket before COMMIT returns",))

Without ``settings`` the ``LIBSQL_BOTTOMLESS_*`` environment applies; with ``uri=True`` the
URI's parameters override both. ``":memory:"`` and ``""`` are ordinary, unreplicated databases.
Transactions, parameters, ``rowcount``, ``lastrowid``, ``description``, adapters and
converters, and the exception classes follow ``sqlite3``'s rules (see
``docs/guides/sqlite3.md`` for the few differences). It is a thin layer over apsw.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import sys
import warnings
from collections.abc import Callable
from typing import Any, cast

import apsw

from bottomless.dbapi.blob import Blob
from bottomless.dbapi.callbacks import reporting
from bottomless.dbapi.connection import Connection
from bottomless.dbapi.core import LEGACY_TRANSACTION_CONTROL
from bottomless.dbapi.cursor import Cursor
from bottomless.dbapi.deprecations import (
    SINCE_3_12,
    deprecated_attribute,
    options_by_position,
)
from bottomless.dbapi.exceptions import (
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    Warning,
)
from bottomless.dbapi.types import (
    PARSE_COLNAMES,
    PARSE_DECLTYPES,
    Binary,
    Date,
    DateFromTicks,
    PrepareProtocol,
    Row,
    Time,
    TimeFromTicks,
    Timestamp,
    TimestampFromTicks,
    adapt,
    adapters,
    converters,
    register_adapter,
    register_converter,
    register_defaults,
)
from bottomless.settings import Settings

apilevel = "2.0"
#: threads may share the module, not connections (use check_same_thread=False and a pool)
threadsafety = 1
paramstyle = "qmark"
sqlite_version: str = apsw.sqlite_lib_version()
sqlite_version_info: tuple[int, ...] = tuple(int(p) for p in sqlite_version.split("."))
_VERSION = "0.1.0"
_VERSION_INFO = (0, 1, 0)
if sys.version_info < (3, 12):  # from 3.12 on, reading them warns (see __getattr__)
    version = _VERSION
    version_info = _VERSION_INFO

# the SQLITE_* constants: result codes, authorizer actions and answers, limits
for _mapping in (apsw.mapping_result_codes, apsw.mapping_extended_result_codes,
                 apsw.mapping_authorizer_function, apsw.mapping_authorizer_return_codes,
                 apsw.mapping_limits):
    for _name, _value in _mapping.items():
        if isinstance(_name, str) and _name.startswith("SQLITE_"):
            globals()[_name] = _value
for _name, _value in vars(apsw).items():  # the options of Connection.getconfig/setconfig
    if _name.startswith("SQLITE_DBCONFIG_") and isinstance(_value, int):
        globals()[_name] = _value
SQLITE_DONE: int = apsw.SQLITE_DONE
SQLITE_ROW: int = apsw.SQLITE_ROW

register_defaults()


def connect(
    database: str | bytes | os.PathLike[str] | os.PathLike[bytes],
    timeout: float = 5.0,
    detect_types: int = 0,
    isolation_level: str | None = "",
    check_same_thread: bool = True,
    factory: type[Connection] | None = None,
    cached_statements: int = 128,
    uri: bool = False,
    *,
    autocommit: bool | int = LEGACY_TRANSACTION_CONTROL,
    settings: Settings | None = None,
) -> Connection:
    """Open a database, replicated by bottomless unless it is in memory.

    The arguments are those of ``sqlite3.connect`` plus ``settings`` (a
    :class:`bottomless.Settings`; default: the ``LIBSQL_BOTTOMLESS_*`` environment). A
    missing local file is restored from the bucket first. Bottomless errors at open
    (:class:`~bottomless.ReplicaConflictError`, :class:`~bottomless.ConfigError`,
    :class:`~bottomless.StoreError`) are raised as classes that are also
    :class:`OperationalError`.
    """
    extra: dict[str, Any] = {}
    if autocommit != LEGACY_TRANSACTION_CONTROL or type(autocommit) is bool:
        extra["autocommit"] = autocommit
    if settings is not None:
        extra["settings"] = settings
    return _replicating(_made_by(factory)(
        database, timeout=timeout, detect_types=detect_types, isolation_level=isolation_level,
        check_same_thread=check_same_thread, factory=factory,
        cached_statements=cached_statements, uri=uri, **extra,
    ))


def _made_by(factory: Any) -> Callable[..., Any]:
    """``factory``, or Connection if None. A subclass of the standard library's connection is
    refused before it opens (and creates) the file; anything else is checked on what it
    returns (a class may make other objects than its own, through ``__new__`` or a
    metaclass)."""
    if factory is None:
        return Connection
    if (isinstance(factory, type) and issubclass(factory, sqlite3.Connection)
            and not issubclass(factory, Connection)):  # (ours subclasses it, for isinstance)
        raise TypeError(
            "factory must be bottomless.dbapi.Connection or a subclass of it, not"
            f" {factory.__qualname__}: its connections would not be replicated"
        )
    return cast("Callable[..., Any]", factory)


def _replicating(made: Any) -> Connection:
    """``made``, what a ``factory`` returned, if it is a connection of this module; else it is
    closed and TypeError raised: a ``sqlite3.Connection`` of the standard library's own
    would open the file without replicating it, and say nothing."""
    if not isinstance(made, Connection):
        with contextlib.suppress(Exception):
            made.close()
        raise TypeError(
            "factory must be bottomless.dbapi.Connection or a subclass of it, not"
            f" {type(made).__qualname__}: its connections would not be replicated"
        )
    return made


def _forward_positional_options(
    keyword_connect: Callable[..., Connection],
) -> Callable[..., Connection]:
    """3.13's ``connect``: with options by position, a warning, and the arguments handed on
    to the factory as they came, so that ``Connection()`` warns about them too."""

    @functools.wraps(keyword_connect)
    def connect(database: Any, *args: Any, **kwargs: Any) -> Connection:
        if not args:
            return keyword_connect(database, **kwargs)
        options_by_position("sqlite3.connect()")
        factory = args[4] if len(args) > 4 else kwargs.get("factory")
        return _replicating(_made_by(factory)(database, *args, **kwargs))

    return connect


if sys.version_info >= (3, 13):
    connect = _forward_positional_options(connect)


def complete_statement(statement: str) -> bool:
    """True if ``statement`` holds one or more complete SQL statements."""
    return bool(apsw.complete(statement))


def enable_callback_tracebacks(flag: bool, /) -> None:
    """Report exceptions raised in user functions and callbacks through sys.unraisablehook."""
    reporting.tracebacks = bool(flag)


if sys.version_info < (3, 12):  # removed from sqlite3 in 3.12
    def enable_shared_cache(enable: bool) -> None:
        """Deprecated, as in ``sqlite3``: turn SQLite's shared-cache mode on or off."""
        warnings.warn(
            "enable_shared_cache is deprecated and will be removed in Python 3.12. Shared"
            " cache is strongly discouraged by the SQLite 3 documentation. If shared cache"
            " must be used, open the database in URI mode using the cache=shared query"
            " parameter.",
            DeprecationWarning, stacklevel=2,
        )
        try:
            apsw.enable_shared_cache(bool(enable))
        except Exception as e:  # apsw's SQLite may be built without shared cache
            if enable:
                raise OperationalError("Changing the shared_cache flag failed") from e


def __getattr__(name: str) -> Any:
    if name == "dbapi2":  # sqlite3.dbapi2 holds the same names as sqlite3 itself
        return sys.modules[__name__]
    if name in ("version", "version_info") and SINCE_3_12:
        deprecated_attribute(name)
        return _VERSION if name == "version" else _VERSION_INFO
    # sqlite3.OptimizedUnicode: an alias of str, deprecated in 3.10 and gone in 3.12
    if name == "OptimizedUnicode" and sys.version_info < (3, 12):
        warnings.warn(
            "OptimizedUnicode is deprecated and will be removed in Python 3.12. Since"
            " Python 3.3 it has simply been an alias for 'str'.",
            DeprecationWarning, stacklevel=2,
        )
        return str
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LEGACY_TRANSACTION_CONTROL", "PARSE_COLNAMES", "PARSE_DECLTYPES", "Binary", "Blob",
    "Connection", "Cursor", "DataError", "DatabaseError", "Date", "DateFromTicks", "Error",
    "IntegrityError", "InterfaceError", "InternalError", "NotSupportedError",
    "OperationalError", "PrepareProtocol", "ProgrammingError", "Row", "Time", "TimeFromTicks",
    "Timestamp", "TimestampFromTicks", "Warning", "adapt", "adapters", "apilevel",
    "complete_statement", "connect", "converters", "enable_callback_tracebacks",
    "paramstyle",
    "register_adapter", "register_converter", "sqlite_version", "sqlite_version_info",
    "threadsafety",
]
if sys.version_info < (3, 12):
    __all__ += ["enable_shared_cache", "version", "version_info"]

"""Adapters, converters, :class:`Row` and the PEP 249 type constructors.

The registries are this module's own (``adapters``, ``converters``), filled and read exactly as
the standard library's ``sqlite3`` fills and reads its own: ``register_adapter(type, callable)``
turns a Python value into one SQLite stores, ``register_converter(name, callable)`` turns the
bytes of a column declared (``PARSE_DECLTYPES``) or named (``PARSE_COLNAMES``) ``name`` back.

Where this module has no adapter for a type, or no converter for a name, or only the default
one it registers itself (date, datetime, timestamp), the standard library's registries
(``sqlite3.adapters``, ``sqlite3.converters``) are asked next: a library that registers its
adapters with ``sqlite3`` (pandas does, for ``datetime.time`` and in place of the defaults
Python 3.12 deprecates) works unchanged.
"""

from __future__ import annotations

import datetime
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import apsw

from bottomless.dbapi.deprecations import SINCE_3_12, default_adapter_used
from bottomless.dbapi.exceptions import ProgrammingError

PARSE_DECLTYPES = 1
PARSE_COLNAMES = 2


class PrepareProtocol:
    """The protocol object adapters are registered for (PEP 246), as in ``sqlite3``."""


#: ``(type, PrepareProtocol)`` -> adapter; shared by every connection of this module
adapters: dict[tuple[type, type], Callable[[Any], Any]] = {}
#: upper-case type name -> converter of the column's bytes
converters: dict[str, Callable[[bytes], Any]] = {}

# types SQLite binds natively; an adapter registered for one of them (or a subclass) makes
# every binding go through the adapters, as it does in sqlite3
_NATIVE = (int, float, str, bytes, bytearray, memoryview)
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


_F = TypeVar("_F", bound=Callable[..., Any])


def _shadows(kind: type) -> bool:
    return issubclass(kind, _NATIVE) or kind is type(None)


class _Registry:
    """Whether an adapter, this module's or ``sqlite3``'s, shadows a type apsw would bind by
    itself (then every parameter goes through :func:`adapt_all`)."""

    shadows_native = False
    ours_shadow = False
    #: ``len(sqlite3.adapters)`` when it was last looked through (checked per execute)
    stdlib_size = -1

    def refresh(self) -> None:
        """Look through ``sqlite3.adapters`` again (its size changed; a swap that keeps the
        size goes unseen until the next change of size)."""
        size = len(sqlite3.adapters)
        self.shadows_native = self.ours_shadow or any(
            proto is sqlite3.PrepareProtocol and _shadows(kind)
            for kind, proto in list(sqlite3.adapters)
        )
        self.stdlib_size = size  # last: another thread skips nothing meanwhile


registry = _Registry()
#: the stdlib's registry, read on every execute to see whether it changed
stdlib_adapters = sqlite3.adapters


def register_adapter(kind: type, adapter: Callable[[Any], Any], /) -> None:
    """Adapt values of exactly ``kind`` with ``adapter`` when they are bound."""
    adapters[(kind, PrepareProtocol)] = adapter
    if _shadows(kind):
        registry.ours_shadow = registry.shadows_native = True


def register_converter(name: str, converter: Callable[[bytes], Any], /) -> None:
    """Convert columns of type ``name`` (case-insensitive) with ``converter``."""
    converters[name.upper()] = converter


def _first(ours: _F | None, stdlib: _F | None) -> _F | None:
    """One registered with this module, else one registered with ``sqlite3`` by someone other
    than ``sqlite3`` itself, else this module's default (the same as ``sqlite3``'s, with its
    deprecation warning pointing at the caller)."""
    if ours is not None and ours not in _DEFAULTS:
        return ours
    if stdlib is not None and getattr(stdlib, "__module__", None) != "sqlite3.dbapi2":
        return stdlib
    return ours if ours is not None else stdlib


def find_converter(name: str) -> Callable[[bytes], Any] | None:
    """The converter for the type name ``name`` (upper case), as :func:`_first` picks it."""
    return _first(converters.get(name), sqlite3.converters.get(name))


def _adapter_for(kind: type) -> Callable[[Any], Any] | None:
    """The adapter of ``kind``, as :func:`_first` picks it."""
    return _first(adapters.get((kind, PrepareProtocol)),
                  sqlite3.adapters.get((kind, sqlite3.PrepareProtocol)))


_MISSING: Any = object()


def adapt(obj: Any, proto: Any = PrepareProtocol, alt: Any = _MISSING, /) -> Any:
    """Adapt ``obj``: a registered adapter, ``__adapt__``, ``__conform__``, else ``alt``."""
    if proto is PrepareProtocol:
        adapter = _adapter_for(type(obj))
    else:
        adapter = adapters.get((type(obj), proto))
    if adapter is not None:
        return adapter(obj)
    # as in sqlite3, a TypeError from __adapt__ or __conform__ means "cannot adapt"
    hook = getattr(proto, "__adapt__", None)
    if hook is not None:
        try:
            adapted = hook(obj)
        except TypeError:
            adapted = None
        if adapted is not None:
            return adapted
    conform = getattr(obj, "__conform__", None)
    if conform is not None:
        try:
            adapted = conform(proto)
        except TypeError:
            adapted = None
        if adapted is not None:
            return adapted
    if alt is not _MISSING:
        return alt
    raise ProgrammingError("can't adapt")


def bind_value(number: int, value: Any) -> Any:
    """Adapt one parameter apsw cannot bind as it is (``Cursor.convert_binding``)."""
    adapted = adapt(value, PrepareProtocol, None)
    if adapted is None or not isinstance(adapted, (*_NATIVE, type(None))):
        raise ProgrammingError(
            f"Error binding parameter {number}: type '{type(value).__name__}' is not supported"
        )
    return adapted


def adapt_all(parameters: Any) -> Any:
    """Every parameter through the adapters (used when an adapter shadows a native type)."""
    def one(value: Any) -> Any:
        adapter = _adapter_for(type(value))
        return value if adapter is None else adapter(value)

    if isinstance(parameters, dict):
        return {key: one(value) for key, value in parameters.items()}
    if parameters is None:
        return None
    return tuple(one(value) for value in parameters)


def column_bytes(value: Any) -> bytes:
    """The bytes a converter receives for a column value, as ``sqlite3`` hands them over: a
    REAL as SQLite writes it as text (``1.0e+20``, ``Inf``), which Python's ``str`` does not."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, float):
        return _sqlite_text(value)
    return str(value).encode()


class _RealAsText:
    """SQLite's own text of a REAL, from a private in-memory connection made when first
    needed (apsw serializes the threads that share it)."""

    def __init__(self) -> None:
        self._connection: apsw.Connection | None = None

    def __call__(self, value: float) -> bytes:
        if self._connection is None:
            self._connection = apsw.Connection(":memory:", vfs="memdb")
        text = self._connection.execute("SELECT CAST(? AS TEXT)", (value,)).fetchone()
        assert text is not None
        return str(text[0]).encode()


_sqlite_text = _RealAsText()


class Row:
    """A result row addressable by index and, case-insensitively, by column name.

    Use it as ``connection.row_factory = Row``; it compares equal to a row of the same
    columns and values, and has ``keys()``, ``len()``, iteration and slicing.
    """

    __slots__ = ("_keys", "_values")

    def __init__(self, cursor: Any, data: tuple[Any, ...], /) -> None:
        names = getattr(cursor, "_column_names", None)
        if names is None:
            raise TypeError("Row() argument 1 must be a bottomless.dbapi.Cursor")
        if not isinstance(data, tuple):
            raise TypeError(f"Row() argument 2 must be tuple, not {type(data).__name__}")
        self._keys: tuple[str, ...] = names()
        self._values = data

    def keys(self) -> list[str]:
        """The column names."""
        return list(self._keys)

    def __getitem__(self, key: int | str | slice) -> Any:
        if isinstance(key, (int, slice)):
            return self._values[key]
        if isinstance(key, str):
            # ASCII letters only, as SQLite and sqlite3 compare column names
            folded = key.translate(_ASCII_LOWER)
            for index, name in enumerate(self._keys):
                if name.translate(_ASCII_LOWER) == folded:
                    return self._values[index]
            raise IndexError("No item with that key")
        raise IndexError("Index must be int or string")

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Row):
            return NotImplemented
        return self._keys == other._keys and self._values == other._values

    def __hash__(self) -> int:
        return hash(self._keys) ^ hash(self._values)

    def __repr__(self) -> str:
        return f"<bottomless.dbapi.Row object at {id(self):#x}>"


Sequence.register(Row)


Date = datetime.date
Time = datetime.time
Timestamp = datetime.datetime
Binary = memoryview


def DateFromTicks(ticks: float) -> datetime.date:  # noqa: N802 - PEP 249 name
    """The local date of a POSIX timestamp (PEP 249)."""
    return Date(*time.localtime(ticks)[:3])


def TimeFromTicks(ticks: float) -> datetime.time:  # noqa: N802 - PEP 249 name
    """The local time of a POSIX timestamp (PEP 249)."""
    return Time(*time.localtime(ticks)[3:6])


def TimestampFromTicks(ticks: float) -> datetime.datetime:  # noqa: N802 - PEP 249 name
    """The local date and time of a POSIX timestamp (PEP 249)."""
    return Timestamp(*time.localtime(ticks)[:6])


def _deprecated(name: str) -> None:
    if SINCE_3_12:
        default_adapter_used(name)


def _adapt_date(value: datetime.date) -> str:
    _deprecated("date adapter")
    return value.isoformat()


def _adapt_datetime(value: datetime.datetime) -> str:
    _deprecated("datetime adapter")
    return value.isoformat(" ")


def _convert_date(value: bytes) -> datetime.date:
    _deprecated("date converter")
    return datetime.date(*map(int, value.split(b"-")))


def _convert_timestamp(value: bytes) -> datetime.datetime:
    _deprecated("timestamp converter")
    day, clock = value.split(b" ")
    year, month, date = map(int, day.split(b"-"))
    parts = clock.split(b".")
    hours, minutes, seconds = map(int, parts[0].split(b":"))
    micro = int(f"{parts[1].decode():0<6.6}") if len(parts) == 2 else 0
    return datetime.datetime(year, month, date, hours, minutes, seconds, micro)


_DEFAULTS = frozenset({_adapt_date, _adapt_datetime, _convert_date, _convert_timestamp})


def register_defaults() -> None:
    """The default adapters and converters ``sqlite3`` registers (date, datetime, timestamp)."""
    register_adapter(datetime.date, _adapt_date)
    register_adapter(datetime.datetime, _adapt_datetime)
    register_converter("date", _convert_date)
    register_converter("timestamp", _convert_timestamp)

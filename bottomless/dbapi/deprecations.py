"""The warnings a newer Python's ``sqlite3`` gives, given here only on that Python.

Python 3.12 deprecates ``version`` and ``version_info``, the default date and datetime
adapters and converters, and binding a sequence to named placeholders. Python 3.13
deprecates passing ``connect``'s options by position and the callbacks of
``create_function`` and its kin by keyword, and warns about a connection nobody closed.
Each flag below is computed once, at import: a Python older than a warning pays one test of
a constant for it. A warning names the first frame outside this package, as ``sqlite3``'s
(given from C) name the caller.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from bottomless.dbapi.sqltext import placeholders

#: Python 3.12's deprecations are in force
SINCE_3_12 = sys.version_info >= (3, 12)
#: Python 3.13's deprecations, and its ResourceWarning for an unclosed connection
SINCE_3_13 = sys.version_info >= (3, 13)
#: 3.12.0 to 3.12.3 count ``?NNN`` as a named placeholder too (CPython gh-117995)
_NUMBERED_ARE_NAMED = sys.version_info < (3, 12, 4)
_PACKAGE = os.path.dirname(__file__) + os.sep
#: ``connect``'s and ``Connection``'s options, keyword-only from Python 3.15
CONNECT_OPTIONS = ("timeout", "detect_types", "isolation_level", "check_same_thread",
                   "factory", "cached_statements", "uri")
_F = TypeVar("_F", bound=Callable[..., Any])
_MAX_REMEMBERED = 1024


def warn(message: str, category: type[Warning] = DeprecationWarning,
         source: object = None) -> None:
    """Warn, naming the first caller outside ``bottomless.dbapi``."""
    if sys.version_info >= (3, 12):
        warnings.warn(message, category, source=source, skip_file_prefixes=(_PACKAGE,))
    else:  # never reached: every warning of this module is a 3.12 one or newer
        warnings.warn(message, category, stacklevel=2, source=source)


def deprecated_attribute(name: str) -> None:
    """``sqlite3.version`` and ``version_info`` (3.12): the module's own version."""
    warn(f"{name} is deprecated and will be removed in Python 3.14")


def default_adapter_used(name: str) -> None:
    """A default date or datetime adapter or converter ran (3.12)."""
    warn(f"The default {name} is deprecated as of Python 3.12; see the sqlite3"
         " documentation for suggested replacement recipes")


class NamedPlaceholders:
    """3.12's warning for named placeholders bound from a sequence. The SQL found to have
    none to warn about is remembered, so that ``execute`` pays a set lookup for it."""

    def __init__(self) -> None:
        #: SQL without a named placeholder to warn about (bounded: cleared when full)
        self.unnamed: set[str] = set()

    def _warned(self, sql: str) -> tuple[tuple[int, str], ...]:
        warned = tuple(
            (number, name) for number, name in placeholders(sql)[1]
            if _NUMBERED_ARE_NAMED or name[0] != "?"
        )
        if not warned:
            if len(self.unnamed) >= _MAX_REMEMBERED:
                self.unnamed.clear()
            self.unnamed.add(sql)
        return warned

    def check(self, sql: str, supplied: int) -> None:
        """Warn for each named placeholder of ``sql`` bound from a sequence of ``supplied``
        values. With the wrong number of values there is no warning: the error comes."""
        warned = self._warned(sql)
        if not warned or placeholders(sql)[0] != supplied:
            return
        for number, name in warned:
            warn(f"Binding {number} ({name!r}) is a named parameter, but you supplied a"
                 " sequence which requires nameless (qmark) placeholders. Starting with"
                 " Python 3.14 an sqlite3.ProgrammingError will be raised.")

    def checked_rows(self, sql: str, rows: Iterable[Any]) -> Iterable[Any]:
        """``executemany``'s rows, each checked as it is bound; ``rows`` itself when ``sql``
        has no name to warn about."""
        if sql in self.unnamed or not self._warned(sql):
            return rows
        return self._checked(sql, rows)

    def _checked(self, sql: str, rows: Iterable[Any]) -> Iterator[Any]:
        for row in rows:
            if not isinstance(row, dict) and hasattr(row, "__len__"):
                self.check(sql, len(row))
            yield row


named_placeholders = NamedPlaceholders()


def unclosed(connection: object) -> None:
    """A connection is collected while still open (3.13): a ResourceWarning."""
    if not sys.is_finalizing():
        warn(f"unclosed database in {connection!r}", ResourceWarning, source=connection)


def _quoted(names: tuple[str, ...]) -> str:
    """``'a'``, ``'a' and 'b'``, ``'a', 'b' and 'c'``."""
    quoted = [f"'{name}'" for name in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _unchanged(function: _F) -> _F:
    return function


def options_by_position(where: str) -> None:
    """``where`` (``"sqlite3.connect()"``) got more than the database by position (3.13)."""
    warn(f"Passing more than 1 positional argument to {where} is deprecated. Parameters"
         f" {_quoted(CONNECT_OPTIONS)} will become keyword-only parameters in Python 3.15.")


def positional_options(where: str, *, allowed: int) -> Callable[[_F], _F]:
    """From 3.13, ``where`` (``"_sqlite3.Connection()"``) warns when more than ``allowed``
    arguments (``self`` counts) come by position; before, the function is left as it is."""
    if not SINCE_3_13:
        return _unchanged

    def decorate(function: _F) -> _F:
        @functools.wraps(function)
        def checked(*args: Any, **kwargs: Any) -> Any:
            if len(args) > allowed:
                options_by_position(where)
            return function(*args, **kwargs)

        return checked  # type: ignore[return-value]

    return decorate


def positional_callbacks(where: str, names: tuple[str, ...]) -> Callable[[_F], _F]:
    """From 3.13, ``where`` (``"_sqlite3.Connection.create_function()"``) warns when one of
    ``names`` comes by keyword; before, the function is left as it is."""
    if not SINCE_3_13:
        return _unchanged
    if len(names) == 1:
        message = (f"Passing keyword argument {_quoted(names)} to {where} is deprecated."
                   f" Parameter {_quoted(names)} will become positional-only in Python 3.15.")
    else:
        message = (f"Passing keyword arguments {_quoted(names)} to {where} is deprecated."
                   f" Parameters {_quoted(names)} will become positional-only in Python 3.15.")
    deprecated = frozenset(names)

    def decorate(function: _F) -> _F:
        @functools.wraps(function)
        def checked(*args: Any, **kwargs: Any) -> Any:
            if not deprecated.isdisjoint(kwargs):
                warn(message)
            return function(*args, **kwargs)

        return checked  # type: ignore[return-value]

    return decorate

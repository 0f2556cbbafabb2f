"""Reading SQL text as ``sqlite3`` does before it compiles it: comments, statement ends and
the names SQLite gives the parameters."""

from __future__ import annotations

import functools

import apsw

_QUOTE_ENDS = {"'": "'", '"': '"', "`": "`", "[": "]"}
_MARKERS = ":@$#"


def skip_blank(sql: str, index: int = 0) -> int:
    """The index of the first character after white space and comments from ``index``."""
    end = len(sql)
    while index < end:
        char = sql[index]
        if char.isspace():
            index += 1
        elif sql.startswith("--", index):
            newline = sql.find("\n", index)
            index = end if newline < 0 else newline + 1
        elif sql.startswith("/*", index):
            close = sql.find("*/", index + 2)
            index = end if close < 0 else close + 2
        else:
            break
    return index


def first_statement_end(sql: str) -> int:
    """The index just after the ``;`` that ends the first statement (``len(sql)`` if none)."""
    start = 0
    while True:
        semicolon = sql.find(";", start)
        if semicolon < 0:
            return len(sql)
        if apsw.complete(sql[: semicolon + 1]):
            return semicolon + 1
        start = semicolon + 1


def is_single_statement(sql: str) -> bool:
    """True when nothing but white space and comments follows the first statement."""
    return skip_blank(sql, first_statement_end(sql)) == len(sql)


def _is_id_char(char: str) -> bool:
    """A character SQLite lets into an identifier (and a parameter's name)."""
    return not char.isascii() or char.isalnum() or char in "_$"


@functools.lru_cache(maxsize=1024)
def placeholders(sql: str) -> tuple[int, tuple[tuple[int, str], ...]]:
    """How many parameters SQLite counts in ``sql`` (one statement), and the name of each
    numbered one that has a name (``':a'``, ``'?2'``), as ``sqlite3_bind_parameter_name``
    reports it: ``?`` takes the next number, ``?NNN`` number NNN, and a name keeps the
    number of its first appearance. Text SQLite would reject gives a guess, never an error.
    """
    count = 0
    names: dict[int, str] = {}
    numbers: dict[str, int] = {}
    index, end = 0, len(sql)
    while index < end:
        char = sql[index]
        if char in _QUOTE_ENDS:
            close = _QUOTE_ENDS[char]
            index = sql.find(close, index + 1)
            while index >= 0 and close != "]" and sql.startswith(close * 2, index):
                index = sql.find(close, index + 2)  # a doubled quote is part of the text
            index = end if index < 0 else index + 1
        elif sql.startswith(("--", "/*"), index):
            index = skip_blank(sql, index)
        elif char == "?":
            stop = index + 1
            while stop < end and sql[stop].isdigit() and sql[stop].isascii():
                stop += 1
            if stop == index + 1:
                count += 1
            else:
                number = int(sql[index + 1 : stop])
                count = max(count, number)
                names.setdefault(number, sql[index:stop])
            index = stop
        elif char in _MARKERS:
            stop = index + 1
            while stop < end and (_is_id_char(sql[stop]) or sql.startswith("::", stop)):
                stop += 2 if sql[stop] == ":" else 1
            if stop < end and sql[stop] == "(" and stop > index + 1:  # Tcl's $name(key)
                paren = sql.find(")", stop)
                stop = end if paren < 0 else paren + 1
            name = sql[index:stop]
            # "#1" is SQLite's own, for SQL it parses inside; "#a" is an ordinary name
            if len(name) > 1 and name not in numbers and not (char == "#" and name[1].isdigit()):
                count += 1
                numbers[name] = count
                names[count] = name
            index = max(stop, index + 1)
        elif _is_id_char(char):
            index += 1  # a word or a number: a marker inside it ($ in a name) is no parameter
            while index < end and _is_id_char(sql[index]):
                index += 1
        else:
            index += 1
    return count, tuple(sorted(names.items()))

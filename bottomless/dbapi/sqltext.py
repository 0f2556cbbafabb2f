"""Reading SQL text as ``sqlite3`` does before it compiles it: comments and statement ends."""

from __future__ import annotations

import apsw


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

"""Bookmarks: an opaque string naming one replicated commit, for read-your-writes.

The writer's side takes one from its status (``bottomless.position(conn)``); a replica waits
until it has applied that commit (:meth:`bottomless.Replica.wait_for`). The text is
``1:<generation>:<seq>``; treat it as opaque, it may change in a later version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bottomless.errors import BottomlessError, ConfigError
from bottomless.format import is_generation_id

_VERSION = "1"


@dataclass(frozen=True, order=True)
class Bookmark:
    """A commit of a generation."""

    generation: str
    seq: int

    def __str__(self) -> str:
        return format_bookmark(self.generation, self.seq)


def format_bookmark(generation: str, seq: int) -> str:
    """The bookmark text of commit ``seq`` of ``generation``."""
    return f"{_VERSION}:{generation}:{seq}"


def parse_bookmark(text: str) -> Bookmark:
    """Parse a bookmark; raise ConfigError if ``text`` is not one."""
    pieces = text.split(":") if isinstance(text, str) else []
    if (len(pieces) != 3 or pieces[0] != _VERSION or not is_generation_id(pieces[1])
            or not pieces[2].isdigit()):
        raise ConfigError(f"not a bottomless bookmark: {text!r} (expected what"
                          " bottomless.position() returns)")
    return Bookmark(pieces[1], int(pieces[2]))


def bookmark_from_status(status: Mapping[str, Any]) -> str:
    """The bookmark of the last replicated commit in a writer's status (``bottomless.status``,
    ``PRAGMA bottomless_status``). In async mode that is the last *uploaded* commit: call
    ``bottomless.wait_durable`` first to include every commit made so far.

    Raises BottomlessError if the status names no replicated commit (replication paused).
    """
    generation, seq = status.get("generation"), status.get("last_replicated_commit")
    if not isinstance(generation, str) or not isinstance(seq, int):
        raise BottomlessError(
            f"{status.get('db_name')}: this connection has no replicated commit to bookmark"
            " (replication is paused or has not started)"
        )
    return format_bookmark(generation, seq)

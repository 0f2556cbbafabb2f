"""Read replicas that follow the bucket.

:class:`Replica` keeps a local SQLite file up to date with a database's commits as the writer
uploads them; readers open that file read-only with any SQLite library.
:func:`bookmark_from_status` and :func:`parse_bookmark` are the two halves of read-your-writes.

The names are imported on first use, so that the CLI can register ``bottomless follow``
(:mod:`bottomless.replica.command`) without loading apsw and the follower.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bottomless.replica.bookmark import Bookmark, bookmark_from_status, parse_bookmark
    from bottomless.replica.follower import Replica

#: the module each public name is imported from, on first use
_HOMES = {
    "Bookmark": "bottomless.replica.bookmark",
    "bookmark_from_status": "bottomless.replica.bookmark",
    "parse_bookmark": "bottomless.replica.bookmark",
    "Replica": "bottomless.replica.follower",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


__all__ = ["Bookmark", "Replica", "bookmark_from_status", "parse_bookmark"]

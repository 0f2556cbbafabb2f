"""Read replicas that follow the bucket.

:class:`Replica` keeps a local SQLite file up to date with a database's commits as the writer
uploads them; readers open that file read-only with any SQLite library.
:func:`bookmark_from_status` and :func:`parse_bookmark` are the two halves of read-your-writes.
"""

from __future__ import annotations

from bottomless.replica.bookmark import Bookmark, bookmark_from_status, parse_bookmark
from bottomless.replica.follower import Replica

__all__ = ["Bookmark", "Replica", "bookmark_from_status", "parse_bookmark"]

"""SQLite's write lock on a database, taken from outside any connection of the application.

The async uploader and a database's open hold it to keep commits out while they settle the
spool against the local file; they take it through a private connection on SQLite's default
VFS, which shares the locks of the ``bottomless`` VFS's files (that VFS inherits its files).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import apsw


@contextlib.contextmanager
def sqlite_write_lock(db_path: str, *, wait: bool = True) -> Iterator[bool]:
    """Hold SQLite's write lock on ``db_path``; yield whether it is held: always, unless
    ``wait`` is false and another connection holds it (waiting gives up after a minute).

    The file must exist: a database removed while open is not created anew, empty, to be
    locked (and uploaded) in its place; apsw's CantOpenError says so instead."""
    flags = apsw.SQLITE_OPEN_READWRITE
    with contextlib.closing(apsw.Connection(db_path, flags=flags)) as connection:
        connection.set_busy_timeout(60_000 if wait else 0)
        try:
            connection.execute("BEGIN IMMEDIATE")
        except apsw.BusyError:
            if wait:
                raise
            yield False
            return
        try:
            yield True
        finally:
            connection.execute("ROLLBACK")

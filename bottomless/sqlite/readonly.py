"""The file of a database opened read-only through the bottomless VFS.

Such a connection cannot commit, so nothing is replicated for it (no lease, no upload, no
restore): the VFS hands it SQLite's own file, through :class:`ReadOnlyFile`.
"""

from __future__ import annotations

import apsw


class ReadOnlyFile(apsw.VFSFile):
    """A main database opened read-only: SQLite's own file, but for the exclusive lock.

    SQLite asks for it at the last close of a WAL database, to checkpoint; the read-only
    descriptor cannot take it and SQLite goes on, but apsw would raise the I/O error from
    ``close()``. Busy says the same without an error to raise."""

    def xLock(self, level: int) -> None:  # noqa: N802
        """Take lock ``level``; the exclusive one is always busy."""
        if level >= apsw.SQLITE_LOCK_EXCLUSIVE:
            raise apsw.BusyError("a read-only connection takes no exclusive lock")
        super().xLock(level)

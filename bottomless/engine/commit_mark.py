"""A commit mark left behind by a killed async committer, settled by a process that lives on.

An async commit marks the spool before its commit point and clears the mark when it appends
the commit (:meth:`~bottomless.engine.spool.Spool.begin_commit`), both under SQLite's write
lock. A committer killed between the two leaves the mark, and a commit that is in the local
file but not in the spool. The next holder of the write lock that looks at the spool (a commit,
an open) turns the mark into the resync mark: a new generation from the local file comes next.
A process that only reads, or writes no more, never holds that lock, so its uploader looks for
a mark that stays put and, if the write lock is free, settles it: the lost commit then reaches
the bucket within about ``max_lag``, not at some later commit.

Whether that commit is in the local file depends on SQLite: its recovery keeps it, but while
another connection has the WAL open it was never published in the wal-index, and SQLite reads
without it. Such a commit is dropped from the WAL (:func:`drop_unpublished`) before a new
generation without it is made, so that no later recovery brings it back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Protocol

from bottomless.engine.spool import Spool
from bottomless.local.files import WAL_FRAME_HEADER_SIZE, unpublished_commit
from bottomless.osutil import pwrite_all

logger = logging.getLogger(__name__)

#: seconds a mark must stay put before SQLite's write lock is tried: a live committer clears
#: its own within one page write, unless back-pressure holds it, and then it holds the lock
STALE_SECONDS = 0.2
#: seconds before the write lock is tried again after a try failed (not merely found busy)
RETRY_SECONDS = 10.0


class WriteLock(Protocol):
    """SQLite's write lock on the database, as a context manager that yields whether it is
    held (always when ``wait``; waiting is bounded, then it raises)."""

    def __call__(self, *, wait: bool = True) -> contextlib.AbstractContextManager[bool]:
        """Take the lock (``wait``: until it is free), for the ``with`` block."""
        ...


def drop_unpublished(db_path: str) -> bool:
    """Call under SQLite's write lock, outside any commit: make a commit a killed writer left
    in the WAL, unpublished, unrecoverable, as the next writer's frames would (the header of
    its first frame is zeroed, and the WAL synced). SQLite reads without it already; left
    there, a recovery once every process is gone would bring it back, on top of a new
    generation made without it. Returns whether there was one."""
    offset = unpublished_commit(db_path)
    if offset is None:
        return False
    fd = os.open(db_path + "-wal", os.O_WRONLY)
    try:
        pwrite_all(fd, bytes(WAL_FRAME_HEADER_SIZE), offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    logger.warning("%s: dropped from the WAL a commit a killed writer never published (SQLite"
                   " does not read it; a recovery would have brought it back)", db_path)
    return True


def settle_left_mark(spool: Spool, db_path: str) -> None:
    """Call under SQLite's write lock, outside any commit: turn a commit mark a killed process
    left into the resync mark. Either mark means a new generation from the local file comes
    next, so a commit left unpublished is dropped first (:func:`drop_unpublished`): the new
    generation and any later recovery then agree."""
    marked = spool.commit_mark() is not None
    if marked or spool.resync_needed():
        drop_unpublished(db_path)
    if marked:
        spool.settle_interrupted_commit()


class CommitMarkWatch:
    """Watches one spool's commit mark from the uploader thread and settles a stale one."""

    def __init__(self, spool: Spool, write_lock: WriteLock, db_path: str) -> None:
        self._spool = spool
        self._db_path = db_path
        self._write_lock = write_lock
        self._seen: tuple[int, float] | None = None  # the marked number, when first seen
        self._retry_at = 0.0  # after a failed try, when to try again

    def settle(self) -> None:
        """Turn the commit mark into the resync mark if it has stayed put for
        :data:`STALE_SECONDS` and SQLite's write lock is free, so that no committer is
        between its commit point and its append: the one that marked it was killed."""
        marked = self._spool.commit_mark()
        now = time.monotonic()
        if marked is None or self._seen is None or self._seen[0] != marked:
            self._seen = None if marked is None else (marked, now)
            return
        if now - self._seen[1] < STALE_SECONDS or now < self._retry_at:
            return
        self._seen = None
        try:
            with self._write_lock(wait=False) as held:
                if held:
                    settle_left_mark(self._spool, self._db_path)
        except Exception as e:  # noqa: BLE001 - uploads must go on: the next commit or open
            # settles the mark instead (the database removed, read-only for this process …)
            self._retry_at = now + RETRY_SECONDS
            logger.warning("%s: a commit mark a killed process may have left stays for now;"
                           " SQLite's write lock could not be tried (%s)", self._spool.path, e)

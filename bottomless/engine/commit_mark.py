"""A commit mark left behind by a killed async committer, settled by a process that lives on.

An async commit marks the spool before its commit point and clears the mark when it appends
the commit (:meth:`~bottomless.engine.spool.Spool.begin_commit`), both under SQLite's write
lock. A committer killed between the two leaves the mark, and a commit that is in the local
file but not in the spool. The next holder of the write lock that looks at the spool (a commit,
an open) turns the mark into the resync mark: a new generation from the local file comes next.
A process that only reads, or writes no more, never holds that lock, so its uploader looks for
a mark that stays put and, if the write lock is free, settles it: the lost commit then reaches
the bucket within about ``max_lag``, not at some later commit.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Protocol

from bottomless.engine.spool import Spool
from bottomless.local.files import unpublished_commit

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


def settle_if_decided(spool: Spool, db_path: str) -> bool:
    """Call under SQLite's write lock, with no commit under way: turn a commit mark a killed
    process left into the resync mark, unless the WAL still holds a commit SQLite has not
    published (see :func:`~bottomless.local.files.unpublished_commit`). A new generation from
    the local file would leave that commit out, and a recovery could bring it back later, on
    top of a bucket that never gets it; the mark waits instead for what decides its fate: the
    next commit (which overwrites it and settles the mark itself) or an open after recovery.
    Returns False if the mark was left for that reason."""
    if spool.commit_mark() is None:
        return True
    if unpublished_commit(db_path):
        logger.info("%s: a killed process's commit is in the WAL but not published; its"
                    " mark stays until a commit or a recovery decides it", db_path)
        return False
    spool.settle_interrupted_commit()
    return True


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
        between its commit point and its append: the one that marked it was killed (unless
        its commit's fate is still open: :func:`settle_if_decided`)."""
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
                if held and not settle_if_decided(self._spool, self._db_path):
                    self._retry_at = now + RETRY_SECONDS  # nothing decides it meanwhile
        except Exception as e:  # noqa: BLE001 - uploads must go on: the next commit or open
            # settles the mark instead (the database removed, read-only for this process …)
            self._retry_at = now + RETRY_SECONDS
            logger.warning("%s: a commit mark a killed process may have left stays for now;"
                           " SQLite's write lock could not be tried (%s)", self._spool.path, e)

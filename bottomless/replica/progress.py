"""Where a follower is and what it has done, shared by its thread and the callers of
:meth:`~bottomless.replica.Replica.status` and :meth:`~bottomless.replica.Replica.wait_for`.

The follower's thread reports (a poll, an apply, a restore, an error); callers read a
consistent copy, or wait under the same lock until a bookmark is reached.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from bottomless import format as fmt
from bottomless.errors import BottomlessError, ReplicaTimeoutError
from bottomless.ops.restore import RestoreResult
from bottomless.replica.bookmark import Bookmark, parse_bookmark
from bottomless.replica.position import Point


class Progress:
    """The commit a replica holds, its counters, and what stopped it (if anything)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._cond = threading.Condition()
        self.point: Point | None = None
        self.error: BaseException | None = None
        self._stats: dict[str, Any] = {
            "newest_known_seq": None, "lag_seconds": None, "last_applied_time": None,
            "last_poll_time": None, "last_error": None, "last_error_time": None,
            "last_restore": None, "restores": 0, "commits_applied": 0, "errors": 0,
        }

    def polled(self, newest_seen: int | None) -> None:
        """A poll worked; ``newest_seen``: the last object it found, if any. The store
        answers again, so an error of an earlier poll is over (``errors`` keeps the count)."""
        with self._cond:
            self._stats["last_poll_time"] = time.time()
            self._stats["last_error"] = None
            known = self._stats["newest_known_seq"]
            if newest_seen is not None and (known is None or known < newest_seen):
                self._stats["newest_known_seq"] = newest_seen

    def applied(self, target: Point, commits: int, *, new_generation: bool = False) -> None:
        """The file now holds ``target``, ``commits`` commits later."""
        now = time.time()
        with self._cond:
            self.point = target
            self._stats["commits_applied"] += commits
            self._stats["last_applied_time"] = now
            self._stats["lag_seconds"] = round(max(0.0, now - target.created_ms / 1000), 3)
            known = None if new_generation else self._stats["newest_known_seq"]
            self._stats["newest_known_seq"] = max(known or 0, target.seq)
            self._cond.notify_all()

    def restored(self, reason: str, result: RestoreResult,
                 pages_written: int | None = None) -> None:
        """The file was restored (whole, or into the WAL: ``pages_written`` pages)."""
        with self._cond:
            self._stats["restores"] += 1
            self._stats["last_restore"] = {
                "reason": reason, "generation": result.generation, "seq": result.seq,
                "time": time.time(), "seconds": round(result.seconds, 3),
                "db_pages": result.db_size, "pages_written": pages_written,
            }

    def noted(self, error: BaseException, *, fatal: bool = False) -> None:
        """An error: retried, or (``fatal``) the one that stopped the follower."""
        with self._cond:
            self._stats["last_error"] = str(error)
            self._stats["errors"] += 1
            self._stats["last_error_time"] = time.time()
            if fatal:
                self.error = error
                self._cond.notify_all()

    def wake_waiters(self) -> None:
        """Let waiters look again (the follower stopped)."""
        with self._cond:
            self._cond.notify_all()

    def fields(self) -> dict[str, Any]:
        """The status fields this object knows, copied under its lock."""
        with self._cond:
            point = self.point
            return {
                "generation": point.generation if point else None,
                "seq": point.seq if point else None,
                "last_commit_time": fmt.iso_time(point.created_ms) if point else None,
                **self._stats,
                "stopped_by": str(self.error) if self.error else None,
            }

    def reached(self, mark: Bookmark) -> bool:
        """Whether the file holds ``mark``'s commit, a later one, or a newer generation."""
        point = self.point
        return point is not None and (
            point.generation > mark.generation
            or (point.generation == mark.generation and point.seq >= mark.seq))

    def wait_for(self, bookmark: str, timeout: float | None, *, running: Callable[[], bool],
                 nudge: Callable[[Bookmark], None]) -> None:
        """Block until ``bookmark`` is reached (see :meth:`Replica.wait_for`); ``nudge`` is
        called once, under the lock, when it is not reached yet."""
        mark = parse_bookmark(bookmark)
        deadline = None if timeout is None else time.monotonic() + timeout
        nudged = False
        with self._cond:
            while not self.reached(mark):
                if self.error is not None:
                    raise BottomlessError(f"{self.path}: the follower stopped: {self.error}"
                                          ) from self.error
                if not running():
                    raise BottomlessError(f"{self.path}: the replica is not running")
                if not nudged:
                    nudged = True
                    nudge(mark)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    point = self.point
                    applied = str(Bookmark(point.generation, point.seq)) if point else None
                    raise ReplicaTimeoutError(
                        f"{self.path}: commit {mark.seq} of generation {mark.generation} not"
                        f" applied after {timeout}s (the replica holds {applied})",
                        bookmark=bookmark, applied=applied)
                self._cond.wait(1.0 if remaining is None else min(remaining, 1.0))

"""Counters of one database's replication, shared by the commit path, the async uploader and
the snapshot threads (so they are updated under a lock)."""

from __future__ import annotations

import bisect
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

#: upper bounds, in seconds, of the upload-latency histogram's buckets (then +Inf)
UPLOAD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Histogram:
    """Observations counted by bucket, with their sum: what a Prometheus histogram holds,
    without needing Prometheus. Not thread-safe by itself (:class:`Stats` locks it)."""

    bounds: tuple[float, ...] = UPLOAD_BUCKETS
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; last: +Inf
    sum: float = 0.0

    def __post_init__(self) -> None:
        self.counts = self.counts or [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        """Count one observation of ``value``."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def figures(self) -> dict[str, Any]:
        """``count``, ``sum`` and ``buckets``: upper bound (``math.inf`` last) to the number
        of observations at or below it, cumulative, as Prometheus reports them."""
        buckets: dict[float, int] = {}
        total = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += count
            buckets[bound] = total
        return {"count": total, "sum": self.sum, "buckets": buckets}


@dataclass
class Stats:
    """Counters reported by ``PRAGMA bottomless_status``."""

    commits: int = 0
    objects_written: int = 0
    bytes_written: int = 0
    last_commit_seq: int | None = None
    last_commit_time: float | None = None
    last_error: str | None = None
    last_error_time: float | None = None
    generations_started: list[str] = field(default_factory=list)
    #: errors reported through :meth:`error` (failed commits, uploads, snapshots)
    errors: int = 0
    #: how long the PUT of each commit object took, in seconds
    upload_seconds: Histogram = field(default_factory=Histogram)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count_object(self, data: bytes) -> None:
        """An object of ``data`` was written (called from pool threads too)."""
        with self._lock:
            self.objects_written += 1
            self.bytes_written += len(data)

    def count_objects(self, objects: int, nbytes: int) -> None:
        """``objects`` objects of ``nbytes`` bytes in all were written (by a child process)."""
        with self._lock:
            self.objects_written += objects
            self.bytes_written += nbytes

    def commit_recorded(self, seq: int) -> None:
        """Commit ``seq`` is in the bucket and recorded."""
        with self._lock:
            self.commits += 1
            self.last_commit_seq = seq
            self.last_commit_time = time.time()

    def error_over(self, message: str) -> None:
        """The failure ``message`` is over: clear it, if it is still the latest error (not, say,
        a snapshot's failure since)."""
        with self._lock:
            if self.last_error == message:
                self.last_error = None

    def error(self, message: str | None) -> None:
        """Remember the latest error (``None`` clears it)."""
        with self._lock:
            self.last_error = message
            if message is not None:
                self.last_error_time = time.time()
                self.errors += 1

    def upload_took(self, seconds: float) -> None:
        """The PUT of a commit object took ``seconds``."""
        with self._lock:
            self.upload_seconds.observe(seconds)

    def generation_started(self, generation: str) -> None:
        """A new generation was started."""
        with self._lock:
            self.generations_started.append(generation)

    def figures(self) -> dict[str, Any]:
        """A consistent copy of the counters, for metrics: ``commits``, ``objects_written``,
        ``bytes_written``, ``errors``, ``generations_started`` (a count), ``last_commit_seq``,
        ``last_commit_time`` and ``upload_seconds`` (see :meth:`Histogram.figures`)."""
        with self._lock:
            return {
                "commits": self.commits, "objects_written": self.objects_written,
                "bytes_written": self.bytes_written, "errors": self.errors,
                "generations_started": len(self.generations_started),
                "last_commit_seq": self.last_commit_seq,
                "last_commit_time": self.last_commit_time,
                "upload_seconds": self.upload_seconds.figures(),
            }

"""Counters of one database's replication, shared by the commit path, the async uploader and
the snapshot threads (so they are updated under a lock)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


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
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count_object(self, data: bytes) -> None:
        """An object of ``data`` was written (called from pool threads too)."""
        with self._lock:
            self.objects_written += 1
            self.bytes_written += len(data)

    def commit_recorded(self, seq: int, *, clear_error: bool = False) -> None:
        """Commit ``seq`` is in the bucket and recorded."""
        with self._lock:
            self.commits += 1
            self.last_commit_seq = seq
            self.last_commit_time = time.time()
            if clear_error:
                self.last_error = None

    def error(self, message: str | None) -> None:
        """Remember the latest error (``None`` clears it)."""
        with self._lock:
            self.last_error = message
            self.last_error_time = time.time() if message is not None else self.last_error_time

    def generation_started(self, generation: str) -> None:
        """A new generation was started."""
        with self._lock:
            self.generations_started.append(generation)

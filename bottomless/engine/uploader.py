"""The uploader thread of async durability: when to ship the spool, trading requests for lag.

It decides only *when*; :class:`~bottomless.engine.shipper.AsyncShipper` does the shipping
(its ``drain_once``) and says what is waiting (a :class:`Backlog`).
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backlog:
    """What is waiting in the spool, as the uploader sees it."""

    #: seconds since the oldest entry was spooled (``bound`` if stamped in the future)
    age: float
    #: number of the oldest entry: it grows whenever any process uploads
    head: int
    #: bytes of the spooled entries (0: nothing is spooled)
    size: int


class Uploader(threading.Thread):
    """Background thread that ships the spool by calling ``drain_once``.

    When to upload is a trade of requests against lag. Uploads take turns (*slots*) at least
    ``interval`` seconds apart, so that while commits keep coming, a burst or a steady stream
    shares objects. A commit after a quiet spell finds its slot open and waits only ``gather``
    seconds for company. Whatever the interval, an upload starts early enough to end before
    the oldest commit is ``bound`` (``max_lag``) seconds old, allowing twice the slowest
    recent upload. ``hurry`` ships at once; so do ``full`` bytes of spooled pages. A failed
    turn goes to ``failed`` (default: a warning), and the thread goes on after a pause.
    ``tidy`` runs before each look at the spool (it settles a killed committer's mark).
    """

    def __init__(
        self, name: str, drain_once: Callable[[], bool], backlog: Callable[[], Backlog], *,
        interval: float, bound: float, gather: float, full: int,
        failed: Callable[[Exception], None] | None = None,
        tidy: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._drain_once = drain_once
        self._backlog = backlog
        self._failed = failed or (
            lambda e: logger.warning("%s: upload failed, will retry: %s", name, e))
        self.interval = interval
        self.bound = bound
        self.gather = gather
        self._full = full
        self._tidy = tidy
        self.wake = threading.Event()
        self.hurry = threading.Event()
        self.stopping = threading.Event()
        # time.monotonic() of the last slot used: when the last upload was due (not when it
        # began: a late start would push every later slot back), of any process as far as seen
        self._last_slot = -math.inf
        self._slot = 0.0  # the slot of the upload about to start
        self._own_start = -math.inf  # when this thread's last upload began
        self._head: int | None = None  # the spool's head when last seen (None: look again)
        self._durations: collections.deque[float] = collections.deque(maxlen=16)

    def ship_by(self) -> float:
        """The age of the oldest commit at which an upload starts, interval or not: a fifth
        of ``bound`` before it, or twice the slowest recent upload if that is more (at most
        half of it). A thinner margin lost commits in the crash soak: on a loaded machine the
        thread's wake-up and the object's encoding alone can take tens of milliseconds."""
        slowest = max(self._durations, default=0.0)
        return self.bound - min(self.bound / 2, max(self.bound / 5, 2 * slowest))

    def delay(self) -> float:
        """Seconds until the next upload is due (0: now, and its slot is noted)."""
        now = self._slot = time.monotonic()
        if self.hurry.is_set():
            return 0.0
        backlog = self._backlog()
        if self._head is None:
            self._head = backlog.head
        elif backlog.head != self._head:  # another process uploaded: its turn counts as ours
            self._head, self._last_slot = backlog.head, now
        if not backlog.size:
            return self.gather  # nothing spooled: look again soon
        if backlog.age >= now - self._own_start or backlog.size >= self._full:
            return 0.0  # left over by this thread's last upload, or enough to ship now
        spooled = now - backlog.age
        due = max(spooled + self.gather,
                  min(self._last_slot + self.interval, spooled + self.ship_by()))
        self._slot = min(now, due)
        return max(0.0, due - now)

    def run(self) -> None:
        """Upload whenever :meth:`delay` says so, until stopped."""
        while not self.stopping.is_set():
            try:
                self._tidy()
                delay = self.delay()
                if delay > 0:
                    self.wake.wait(delay)
                    self.wake.clear()
                    continue
                self.hurry.clear()  # a hurry from now on asks for another upload after this
                started = time.monotonic()
                if self._drain_once():
                    self._last_slot, self._own_start, self._head = self._slot, started, None
                    self._durations.append(time.monotonic() - started)
                else:  # nothing to upload, or another process is uploading
                    self.wake.wait(self.gather)
                    self.wake.clear()
            except Exception as e:  # noqa: BLE001 - the thread must outlive any one failure
                self._failed(e)
                self.stopping.wait(min(1.0, self.bound / 2))

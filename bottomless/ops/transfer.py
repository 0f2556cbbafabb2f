"""Bounded concurrent transfers: at most ``window`` objects in flight, results in order."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def one_at_a_time(callback: Callable[[T], None] | None) -> Callable[[T], None] | None:
    """``callback`` behind a lock of its own (``None`` stays ``None``).

    Transfers report what they move from their pool's threads; wrapped, a callback such as a
    counter that does ``total += n`` never runs in two of them at once.
    """
    if callback is None:
        return None
    lock = threading.Lock()
    target = callback

    def call(value: T) -> None:
        with lock:
            target(value)

    return call


def in_order(
    pool: ThreadPoolExecutor, jobs: Iterable[Callable[[], T]], window: int
) -> Iterator[T]:
    """Run ``jobs`` on ``pool`` with at most ``window`` in flight; yield results in order.

    Jobs are pulled lazily, so a generator of jobs that reads local pages keeps memory bounded
    to ``window`` jobs' worth.
    """
    queue: deque[Future[T]] = deque()
    pending = iter(jobs)
    for job in pending:
        queue.append(pool.submit(job))
        if len(queue) >= window:
            break
    while queue:
        result = queue.popleft().result()
        for job in pending:
            queue.append(pool.submit(job))
            break
        yield result


#: how many bytes of parts may be in flight at once, whatever the parallelism
MEMORY_BUDGET = 96 * 1024 * 1024
#: a part in flight is held about this many times over (pages, encoded object, copies)
_COPIES = 3
#: what a part decoded as it downloads holds at once (pieces in and out, the zstd window)
STREAMED_PART_BYTES = 2 * 1024 * 1024


def window_for(parallelism: int, object_bytes: int) -> int:
    """How many objects of ``object_bytes`` to keep in flight: ``parallelism``, but never more
    than fit in :data:`MEMORY_BUDGET` (at least one)."""
    return max(1, min(parallelism, MEMORY_BUDGET // max(object_bytes * _COPIES, 1)))

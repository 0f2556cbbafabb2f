"""The replicas following in this process, for :mod:`bottomless.metrics` to report on.

:data:`live_replicas` is their one owner: a :class:`~bottomless.replica.Replica` adds itself
when it starts and leaves when it stops. It holds them weakly, so a replica dropped without
``stop()`` leaves too. Tests forget them all with :meth:`LiveReplicas.clear`.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Protocol

from bottomless.backends.base import PageStore


class Followed(Protocol):
    """What is read of a live replica (:class:`~bottomless.replica.Replica` is one)."""

    db_name: str

    @property
    def store(self) -> PageStore:
        """The store it reads through."""

    def status(self) -> dict[str, Any]:
        """Its JSON-ready status (see :meth:`bottomless.replica.Replica.status`)."""


class LiveReplicas:
    """The started, not yet stopped, replicas of this process; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._replicas: weakref.WeakSet[Followed] = weakref.WeakSet()

    def add(self, replica: Followed) -> None:
        """``replica`` started following."""
        with self._lock:
            self._replicas.add(replica)

    def discard(self, replica: Followed) -> None:
        """``replica`` stopped (nothing happens if it was not here)."""
        with self._lock:
            self._replicas.discard(replica)

    def replicas(self) -> list[Followed]:
        """The live replicas, sorted by database name."""
        with self._lock:
            found = list(self._replicas)
        return sorted(found, key=lambda replica: replica.db_name)

    def clear(self) -> None:
        """Forget every replica (a hook for tests)."""
        with self._lock:
            self._replicas.clear()


#: the process's live replicas
live_replicas = LiveReplicas()

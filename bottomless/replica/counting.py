"""The counting store a follower reads through: :class:`~bottomless.backends.counting.
CountingStore`, which lives with the backends because the writer counts its requests too."""

from __future__ import annotations

from bottomless.backends.counting import CountingStore

__all__ = ["CountingStore"]

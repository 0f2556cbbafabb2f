"""The abstract object store that replicas live in.

A :class:`PageStore` sees opaque keys and bytes; it knows nothing of SQLite or of the storage
format. Backends implement six primitives for the data (``put_if_absent``, ``get``,
``get_range``, ``list_keys``, ``list_children``, ``delete``), two for the writer's lease
(``get_versioned``, ``put_if_match``) and a ``location``; everything else is built on them.
Which name opens which backend is the registry's business (:mod:`bottomless.backends.registry`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Generator
from typing import TYPE_CHECKING

from bottomless.errors import ObjectExistsError, ObjectNotFoundError, StoreError

if TYPE_CHECKING:
    pass


class PageStore(ABC):
    """A flat namespace of immutable objects.

    Keys are ``/``-separated strings without a leading slash. Every method raises
    :class:`~bottomless.errors.StoreError` (an ``OSError``) when the store fails; the
    original exception is kept as ``__cause__``.
    """

    #: name of the backend, as in ``Settings.backend``
    backend: str = ""
    #: True when another process opening the same settings would not see these objects
    #: (the memory backend); such a store is never handed to a child process
    process_local: bool = False

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the objects live, for messages (never contains a secret)."""

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> None:
        """Create ``key`` holding ``data`` atomically, only if it does not exist.

        Raises :class:`~bottomless.errors.ObjectExistsError` if it exists. Readers never see a
        partial object.
        """

    @abstractmethod
    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """Return the object and an opaque version token (an ETag).

        Raises ObjectNotFoundError if it does not exist.
        """

    @abstractmethod
    def put_if_match(self, key: str, data: bytes, version: str) -> str:
        """Replace ``key`` only if it is still at ``version``; return the new version.

        Raises :class:`~bottomless.errors.ObjectChangedError` if the object changed (or is
        gone). Only used for the small writer-lease object; data objects are never replaced.
        """

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Return the whole object; raise ObjectNotFoundError if it does not exist."""

    @abstractmethod
    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Return bytes ``[start, end)`` of the object (fewer at its end).

        Raises ObjectNotFoundError if it does not exist.
        """

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """Return every key that starts with ``prefix``, sorted; an empty list if none."""

    @abstractmethod
    def list_children(self, prefix: str) -> list[str]:
        """Return the names one level below ``prefix`` (which ends with ``/``), sorted.

        ``list_children("a/")`` for keys ``a/b/c`` and ``a/d`` returns ``["b", "d"]``.
        """

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete ``key``; deleting a missing key is not an error."""

    def get_chunks(
        self, key: str, chunk_size: int = 1024 * 1024
    ) -> Generator[bytes, None, None]:
        """Yield the whole object in pieces of at most ``chunk_size`` bytes, as they arrive.

        Raises ObjectNotFoundError if it does not exist, StoreError if the transfer fails
        (maybe after some pieces were yielded). This version fetches the object whole; backends
        that can stream override it.
        """
        data = self.get(key)
        for start in range(0, len(data), chunk_size):
            yield data[start : start + chunk_size]

    def put_once(self, key: str, data: bytes) -> None:
        """Create ``key`` like :meth:`put_if_absent`, but idempotently.

        When the request fails, or reports that the key exists, and the stored object holds
        exactly ``data``, the write did happen (a reply lost on the way, a retry that found its
        own earlier attempt): that is success, not an error. Raises ObjectExistsError only when
        the key holds other bytes.
        """
        try:
            self.put_if_absent(key, data)
            return
        except ObjectExistsError:
            if self._holds(key, data):
                return
            raise
        except StoreError:
            if self._holds(key, data, after_failure=True):
                return
            raise

    def _holds(self, key: str, data: bytes, *, after_failure: bool = False) -> bool:
        """Whether ``key`` holds ``data``; ``after_failure``: asked because the PUT failed
        (not because the key exists), once its requests budget is spent."""
        try:
            return self.get(key) == data
        except StoreError:
            return False

    def exists(self, key: str) -> bool:
        """Tell whether ``key`` exists."""
        try:
            self.get_range(key, 0, 1)
        except ObjectNotFoundError:
            return False
        return True

    def stale_temporaries(self, prefix: str, *, older_than: float, now: float) -> list[str]:
        """Leftovers of writes killed half-way under ``prefix``, older than ``older_than``
        seconds; they can be passed to :meth:`delete`. Stores with atomic PUTs have none."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the store is unusable afterwards."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.location}>"

"""A PageStore wrapper that counts the requests a follower makes, by kind, and the bytes."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Generator

from bottomless.backends.base import PageStore
from bottomless.errors import ObjectNotFoundError


class CountingStore(PageStore):
    """Hands every call to ``inner`` and counts it.

    Kinds: ``get`` (whole objects, found), ``get_missing`` (a GET answered 404: "nothing new"),
    ``get_range``, ``list`` (``list_keys`` and ``list_children``), ``put`` and ``delete``
    (a follower makes none). ``bytes`` is what the GETs returned.
    """

    def __init__(self, inner: PageStore) -> None:
        self.inner = inner
        self.backend = inner.backend
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.bytes = 0

    def _count(self, kind: str, size: int = 0) -> None:
        with self._lock:
            self.requests[kind] += 1
            self.bytes += size

    def counts(self) -> tuple[dict[str, int], int]:
        """A copy of the request counts and the bytes read."""
        with self._lock:
            return dict(self.requests), self.bytes

    @property
    def location(self) -> str:
        """Where the objects live."""
        return self.inner.location

    def put_if_absent(self, key: str, data: bytes) -> None:
        """Forwarded (counted as ``put``)."""
        self._count("put")
        self.inner.put_if_absent(key, data)

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """Forwarded (counted as ``get``)."""
        data, version = self.inner.get_versioned(key)
        self._count("get", len(data))
        return data, version

    def put_if_match(self, key: str, data: bytes, version: str) -> str:
        """Forwarded (counted as ``put``)."""
        self._count("put")
        return self.inner.put_if_match(key, data, version)

    def get(self, key: str) -> bytes:
        """Forwarded; a 404 is counted as ``get_missing``."""
        try:
            data = self.inner.get(key)
        except ObjectNotFoundError:
            self._count("get_missing")
            raise
        self._count("get", len(data))
        return data

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Forwarded (counted as ``get_range``)."""
        data = self.inner.get_range(key, start, end)
        self._count("get_range", len(data))
        return data

    def get_chunks(
        self, key: str, chunk_size: int = 1024 * 1024
    ) -> Generator[bytes, None, None]:
        """Forwarded, streaming (one ``get``)."""
        self._count("get")
        for chunk in self.inner.get_chunks(key, chunk_size):
            with self._lock:
                self.bytes += len(chunk)
            yield chunk

    def list_keys(self, prefix: str) -> list[str]:
        """Forwarded (counted as ``list``)."""
        self._count("list")
        return self.inner.list_keys(prefix)

    def list_children(self, prefix: str) -> list[str]:
        """Forwarded (counted as ``list``)."""
        self._count("list")
        return self.inner.list_children(prefix)

    def delete(self, key: str) -> None:
        """Forwarded (counted as ``delete``)."""
        self._count("delete")
        self.inner.delete(key)

    def close(self) -> None:
        """Close the wrapped store."""
        self.inner.close()

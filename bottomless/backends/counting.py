"""A PageStore wrapper that counts the requests made through it, by kind, and the bytes read.

The writer's replicator and every follower wrap their store in one, for ``status()`` and for
:mod:`bottomless.metrics`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Generator, Iterator
from contextlib import contextmanager

from bottomless.backends.base import PageStore
from bottomless.errors import (
    ObjectChangedError,
    ObjectExistsError,
    ObjectNotFoundError,
    StoreError,
)

#: answers rather than failures: a request that raises one of these is not a failed request
_ANSWERS = (ObjectNotFoundError, ObjectExistsError, ObjectChangedError)


class CountingStore(PageStore):
    """Hands every call to ``inner`` and counts it.

    Kinds: ``get`` (whole objects, found), ``get_missing`` (a GET answered 404: for a follower,
    "nothing new"), ``get_range``, ``head`` (:meth:`exists`), ``list`` (``list_keys``,
    ``list_children`` and ``stale_temporaries``), ``put`` (``put_if_absent``, ``put_once``
    and ``put_if_match``) and ``delete``. ``bytes`` is what the GETs returned. A request that
    raises a :class:`~bottomless.errors.StoreError` other than not-found, exists or changed
    (which are answers) is also counted in ``failures``, by kind.
    """

    def __init__(self, inner: PageStore) -> None:
        self.inner = inner
        self.backend = inner.backend
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.bytes = 0

    def _count(self, kind: str, size: int = 0) -> None:
        with self._lock:
            self.requests[kind] += 1
            self.bytes += size

    @contextmanager
    def _request(self, kind: str) -> Iterator[None]:
        """Count a request of ``kind`` and, if it fails, a failure."""
        self._count(kind)
        try:
            yield
        except _ANSWERS:
            raise
        except StoreError:
            with self._lock:
                self.failures[kind] += 1
            raise

    def counts(self) -> tuple[dict[str, int], int]:
        """A copy of the request counts and the bytes read."""
        with self._lock:
            return dict(self.requests), self.bytes

    def merge(self, requests: dict[str, int], failures: dict[str, int], nbytes: int) -> None:
        """Add requests made on this store's behalf elsewhere (a snapshot child process)."""
        with self._lock:
            self.requests.update(requests)
            self.failures.update(failures)
            self.bytes += nbytes

    def failed(self) -> dict[str, int]:
        """A copy of the failed request counts, by kind."""
        with self._lock:
            return dict(self.failures)

    @property
    def location(self) -> str:
        """Where the objects live."""
        return self.inner.location

    def put_if_absent(self, key: str, data: bytes) -> None:
        """Forwarded (counted as ``put``)."""
        with self._request("put"):
            self.inner.put_if_absent(key, data)

    def put_once(self, key: str, data: bytes) -> None:
        """Forwarded, so that a backend's own version is used (counted as one ``put``; the
        requests it makes to settle a lost reply are not seen)."""
        with self._request("put"):
            self.inner.put_once(key, data)

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """Forwarded (counted as ``get``)."""
        with self._request("get"):
            data, version = self.inner.get_versioned(key)
        self._add_bytes(len(data))
        return data, version

    def put_if_match(self, key: str, data: bytes, version: str) -> str:
        """Forwarded (counted as ``put``)."""
        with self._request("put"):
            return self.inner.put_if_match(key, data, version)

    def get(self, key: str) -> bytes:
        """Forwarded; a 404 is counted as ``get_missing``."""
        try:
            data = self.inner.get(key)
        except ObjectNotFoundError:
            self._count("get_missing")
            raise
        except StoreError:
            with self._lock:
                self.requests["get"] += 1
                self.failures["get"] += 1
            raise
        self._count("get", len(data))
        return data

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Forwarded (counted as ``get_range``)."""
        with self._request("get_range"):
            data = self.inner.get_range(key, start, end)
        self._add_bytes(len(data))
        return data

    def get_chunks(
        self, key: str, chunk_size: int = 1024 * 1024
    ) -> Generator[bytes, None, None]:
        """Forwarded, streaming (one ``get``)."""
        with self._request("get"):
            for chunk in self.inner.get_chunks(key, chunk_size):
                self._add_bytes(len(chunk))
                yield chunk

    def _add_bytes(self, size: int) -> None:
        with self._lock:
            self.bytes += size

    def exists(self, key: str) -> bool:
        """Forwarded (counted as ``head``)."""
        with self._request("head"):
            return self.inner.exists(key)

    def list_keys(self, prefix: str) -> list[str]:
        """Forwarded (counted as ``list``)."""
        with self._request("list"):
            return self.inner.list_keys(prefix)

    def list_children(self, prefix: str) -> list[str]:
        """Forwarded (counted as ``list``)."""
        with self._request("list"):
            return self.inner.list_children(prefix)

    def stale_temporaries(self, prefix: str, *, older_than: float, now: float) -> list[str]:
        """Forwarded (counted as ``list``)."""
        with self._request("list"):
            return self.inner.stale_temporaries(prefix, older_than=older_than, now=now)

    def delete(self, key: str) -> None:
        """Forwarded (counted as ``delete``)."""
        with self._request("delete"):
            self.inner.delete(key)

    def close(self) -> None:
        """Close the wrapped store."""
        self.inner.close()

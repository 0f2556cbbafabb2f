"""In-memory backend on fsspec's memory filesystem: one process, gone when it exits."""

from __future__ import annotations

import hashlib
import threading
from typing import TYPE_CHECKING

import fsspec

from bottomless.backends._fsspec import FsspecPageStore
from bottomless.errors import ObjectExistsError

if TYPE_CHECKING:
    from bottomless.settings import Settings

# fsspec's memory filesystem keeps one global store; this lock makes create-only writes atomic
# across every MemoryPageStore in the process.
_CREATE_LOCK = threading.Lock()


class MemoryPageStore(FsspecPageStore):
    """Objects live in process memory under ``/<namespace>``; useful for tests and demos."""

    backend = "memory"
    process_local = True

    def __init__(self, namespace: str) -> None:
        super().__init__(fsspec.filesystem("memory", skip_instance_cache=True), f"/{namespace}")
        self.namespace = namespace

    @classmethod
    def from_settings(cls, settings: Settings) -> MemoryPageStore:
        """Build the store that ``settings`` describes (``bucket`` is the namespace)."""
        return cls(settings.bucket.strip("/") or "libsql")

    @property
    def location(self) -> str:
        """Where the objects live."""
        return f"memory://{self.namespace}"

    def put_if_absent(self, key: str, data: bytes) -> None:
        """Create ``key`` only if it does not exist."""
        path = self._path(key)
        with _CREATE_LOCK:
            if self.fs.exists(path):
                raise ObjectExistsError(f"{self.location}: {key} already exists", key=key)
            self.fs.pipe_file(path, bytes(data))

    def put_if_match(self, key: str, data: bytes, version: str) -> str:
        """Replace ``key`` only if its content still hashes to ``version``."""
        path = self._path(key)
        with _CREATE_LOCK:
            self._check_version(key, version)
            self.fs.pipe_file(path, bytes(data))
        return hashlib.sha256(data).hexdigest()

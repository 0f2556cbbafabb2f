"""Local-directory backend: one file per object, written atomically and durably."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
from typing import TYPE_CHECKING

import fsspec

from bottomless.backends._fsspec import FsspecPageStore
from bottomless.errors import (
    BucketNotFoundError,
    ObjectChangedError,
    ObjectExistsError,
    StoreError,
)
from bottomless.osutil import fsync_dir

if TYPE_CHECKING:
    from bottomless.settings import Settings


class FilePageStore(FsspecPageStore):
    """Objects are files under a local directory (``bucket`` is its path).

    A write goes to a temporary file, is fsynced, and is then linked into place; the link fails
    if the key exists, so create-only writes are atomic, and readers never see a partial file.
    """

    backend = "file"

    def __init__(self, directory: str) -> None:
        directory = os.path.abspath(directory)
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create replica directory {directory}: {e}") from e
        super().__init__(fsspec.filesystem("file", skip_instance_cache=True), directory)

    @classmethod
    def from_settings(cls, settings: Settings) -> FilePageStore:
        """Build the store that ``settings`` describes (``bucket`` is the directory, created
        if missing unless ``create_bucket`` is off)."""
        if not settings.create_bucket and not os.path.isdir(settings.bucket):
            raise BucketNotFoundError(
                f"replica directory {os.path.abspath(settings.bucket)} does not exist (check"
                " the bucket setting; a writer creates it unless create_bucket is off, env"
                " LIBSQL_BOTTOMLESS_CREATE_BUCKET, URI parameter create_bucket)"
            )
        return cls(settings.bucket)

    @property
    def location(self) -> str:
        """Where the objects live."""
        return f"file://{self.root}"

    def put_if_absent(self, key: str, data: bytes) -> None:
        """Create ``key`` only if it does not exist, durably."""
        path = self._path(key)
        directory = os.path.dirname(path)
        tmp = os.path.join(directory, f".tmp-{secrets.token_hex(8)}")
        try:
            os.makedirs(directory, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise ObjectExistsError(f"{self.location}: {key} already exists", key=key) from None
            fsync_dir(directory)
        except ObjectExistsError:
            raise
        except OSError as e:
            raise StoreError(f"{self.location}: PUT {key} failed: {e}") from e
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


    def put_if_match(self, key: str, data: bytes, version: str) -> str:
        """Replace ``key`` only if its content still hashes to ``version`` (under flock)."""
        path = self._path(key)
        directory = os.path.dirname(path)
        if not os.path.isfile(path):
            raise ObjectChangedError(f"{self.location}: {key} is gone", key=key)
        try:
            lock = os.open(os.path.join(directory, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(f"{self.location}: PUT {key} failed: {e}") from e
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._check_version(key, version)
            tmp = os.path.join(directory, f".tmp-{secrets.token_hex(8)}")
            try:
                with open(tmp, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
                fsync_dir(directory)
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise StoreError(f"{self.location}: PUT {key} failed: {e}") from e
        finally:
            os.close(lock)
        return hashlib.sha256(data).hexdigest()

    def stale_temporaries(self, prefix: str, *, older_than: float, now: float) -> list[str]:
        """Temporary files of writes that were killed before they were linked into place."""
        base = self._path(prefix.rstrip("/"))
        found = []
        for directory, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(".tmp-"):
                    path = os.path.join(directory, name)
                    with contextlib.suppress(FileNotFoundError):
                        if now - os.stat(path).st_mtime > older_than:
                            found.append(self._key(path))
        return sorted(found)

    def delete(self, key: str) -> None:
        """Delete ``key`` and the directories it leaves empty."""
        super().delete(key)
        directory = os.path.dirname(self._path(key))
        while directory.startswith(self.root + os.sep):
            try:
                os.rmdir(directory)
            except OSError:  # not empty (or gone): stop climbing
                break
            directory = os.path.dirname(directory)

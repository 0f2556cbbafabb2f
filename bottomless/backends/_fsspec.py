"""Shared plumbing for backends built on an fsspec filesystem."""

from __future__ import annotations

import hashlib
from collections.abc import Generator
from typing import Any

from bottomless.backends.base import PageStore
from bottomless.errors import ObjectChangedError, ObjectNotFoundError, StoreError


class FsspecPageStore(PageStore):
    """A PageStore whose objects are files under ``root`` in an fsspec filesystem.

    Subclasses provide :meth:`put_if_absent` and may override :meth:`_translate` to turn their
    filesystem's errors into :class:`~bottomless.errors.StoreError`.
    """

    def __init__(self, fs: Any, root: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def _key(self, path: str) -> str:
        path = path.lstrip("/")
        root = self.root.lstrip("/")
        return path[len(root) + 1 :] if path.startswith(root + "/") else path

    def _translate(self, error: Exception, action: str, key: str) -> Exception:
        if isinstance(error, (FileNotFoundError, IsADirectoryError)):
            return ObjectNotFoundError(f"{self.location}: {key} does not exist", key=key)
        return StoreError(f"{self.location}: {action} {key} failed: {error}", key=key or None)

    def get(self, key: str) -> bytes:
        """Return the whole object; raise ObjectNotFoundError if it does not exist."""
        try:
            data: bytes = self.fs.cat_file(self._path(key))
        except Exception as e:
            raise self._translate(e, "GET", key) from e
        return data

    def get_chunks(
        self, key: str, chunk_size: int = 1024 * 1024
    ) -> Generator[bytes, None, None]:
        """Yield the object in pieces of at most ``chunk_size`` bytes, read from an open file."""
        try:
            handle = self.fs.open(self._path(key), "rb")
        except Exception as e:
            raise self._translate(e, "GET", key) from e
        with handle:
            while True:
                try:
                    chunk: bytes = handle.read(chunk_size)
                except Exception as e:
                    raise self._translate(e, "GET", key) from e
                if not chunk:
                    return
                yield chunk

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """Return the object and its version (the SHA-256 of its content)."""
        data = self.get(key)
        return data, hashlib.sha256(data).hexdigest()

    def _check_version(self, key: str, version: str) -> None:
        """Raise ObjectChangedError unless ``key`` is at ``version`` (caller holds a lock)."""
        try:
            _, current = self.get_versioned(key)
        except ObjectNotFoundError:
            raise ObjectChangedError(f"{self.location}: {key} is gone", key=key) from None
        if current != version:
            raise ObjectChangedError(f"{self.location}: {key} changed", key=key)

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Return bytes ``[start, end)`` of the object."""
        try:
            data: bytes = self.fs.cat_file(self._path(key), start=start, end=end)
        except Exception as e:
            raise self._translate(e, "GET", key) from e
        return data

    def list_keys(self, prefix: str) -> list[str]:
        """Return every key that starts with ``prefix``, sorted."""
        base, _, _ = prefix.rpartition("/")
        directory = self._path(base) if base else self.root
        try:
            paths = self.fs.find(directory)
        except FileNotFoundError:
            return []
        except Exception as e:
            raise self._translate(e, "LIST", prefix) from e
        keys = (self._key(p) for p in paths)
        return sorted(
            k for k in keys if k.startswith(prefix) and not k.rsplit("/", 1)[-1].startswith(".tmp-")
        )

    def list_children(self, prefix: str) -> list[str]:
        """Return the names one level below ``prefix``."""
        directory = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        try:
            entries = self.fs.ls(directory, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except Exception as e:
            raise self._translate(e, "LIST", prefix) from e
        if len(entries) == 1 and entries[0].get("type") == "file" and (
            str(entries[0]["name"]).strip("/") == directory.strip("/")
        ):
            return []  # ``prefix`` names an object, which has no children
        names = {str(p["name"]).rstrip("/").rsplit("/", 1)[-1] for p in entries}
        names.discard("")
        return sorted(n for n in names if not n.startswith(".tmp-"))

    def delete(self, key: str) -> None:
        """Delete ``key``; a missing key is not an error."""
        try:
            self.fs.rm_file(self._path(key))
        except (FileNotFoundError, IsADirectoryError):
            return
        except Exception as e:
            raise self._translate(e, "DELETE", key) from e

    def exists(self, key: str) -> bool:
        """Tell whether ``key`` is an object (a prefix of other keys is not)."""
        try:
            return bool(self.fs.isfile(self._path(key)))
        except Exception as e:
            raise self._translate(e, "HEAD", key) from e

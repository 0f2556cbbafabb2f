"""Incremental BLOB I/O (``Connection.blobopen``), as ``sqlite3.Blob`` behaves."""

from __future__ import annotations

from typing import Any

import apsw

from bottomless.dbapi.exceptions import ProgrammingError, raise_translated


class Blob:
    """An open BLOB: file-like ``read``/``write``/``seek``/``tell``, ``len()`` and indexing.

    Its size is fixed; writing past the end raises ValueError. Use it as a context manager or
    ``close()`` it.
    """

    def __init__(self, connection: Any, blob: apsw.Blob) -> None:
        self._connection = connection
        self._blob: apsw.Blob | None = blob

    def _open(self) -> apsw.Blob:
        self._connection._check()
        if self._blob is None:
            raise ProgrammingError("Cannot operate on a closed blob.")
        return self._blob

    def close(self) -> None:
        """Close the blob; using it afterwards raises ProgrammingError."""
        self._connection._check()
        if self._blob is not None:
            self._blob.close()
            self._blob = None

    def __len__(self) -> int:
        return int(self._open().length())

    def read(self, length: int = -1, /) -> bytes:
        """Read up to ``length`` bytes (all that remain if negative) from the offset."""
        blob = self._open()
        remaining = blob.length() - blob.tell()
        if length < 0 or length > remaining:
            length = remaining
        try:
            return bytes(blob.read(length))
        except apsw.Error as e:
            raise_translated(e)

    def write(self, data: Any, /) -> None:
        """Write ``data`` at the offset; a blob cannot grow."""
        blob = self._open()
        data = bytes(data)
        if len(data) > blob.length() - blob.tell():
            raise ValueError("data longer than blob length")
        try:
            blob.write(data)
        except apsw.Error as e:
            raise_translated(e)

    def tell(self) -> int:
        """The current offset."""
        return int(self._open().tell())

    def seek(self, offset: int, origin: int = 0, /) -> None:
        """Move to ``offset`` from the start (0), the current offset (1) or the end (2)."""
        blob = self._open()
        base = {0: 0, 1: blob.tell(), 2: blob.length()}.get(origin)
        if base is None:
            raise ValueError("'origin' should be os.SEEK_SET, os.SEEK_CUR, or os.SEEK_END")
        target = base + offset
        if not 0 <= target <= blob.length():
            raise ValueError("offset out of blob range")
        blob.seek(target)

    def _index(self, key: int, length: int) -> int:
        index = key + length if key < 0 else key
        if not 0 <= index < length:
            raise IndexError("Blob index out of range")
        return index

    def __getitem__(self, key: int | slice) -> Any:
        blob = self._open()
        length = blob.length()
        here = blob.tell()
        try:
            if isinstance(key, slice):
                blob.seek(0)
                return bytes(blob.read(length))[key]
            index = self._index(key, length)
            blob.seek(index)
            return bytes(blob.read(1))[0]
        finally:
            blob.seek(here)

    def __setitem__(self, key: int | slice, value: Any) -> None:
        blob = self._open()
        length = blob.length()
        here = blob.tell()
        try:
            if isinstance(key, slice):
                blob.seek(0)
                content = bytearray(blob.read(length))
                start, stop, step = key.indices(length)
                data = bytes(value)
                if len(range(start, stop, step)) != len(data):
                    raise IndexError("Blob slice assignment is wrong size")
                content[key] = data
                blob.seek(0)
                blob.write(bytes(content))
                return
            if not isinstance(value, int) or not 0 <= value <= 255:
                raise ValueError("byte must be in range(0, 256)")
            blob.seek(self._index(key, length))
            blob.write(bytes([value]))
        finally:
            blob.seek(here)

    def __enter__(self) -> Blob:
        self._open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

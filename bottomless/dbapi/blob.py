"""Incremental BLOB I/O (``Connection.blobopen``), as ``sqlite3.Blob`` behaves."""

from __future__ import annotations

import operator
import sys
from typing import Any, NoReturn

import apsw

from bottomless.dbapi.exceptions import ProgrammingError, raise_translated

_INT_MAX = 2**31 - 1  # SQLite addresses a blob with C ints


def _not_contiguous() -> NoReturn:
    raise BufferError("underlying buffer is not C-contiguous")


class Blob:
    """An open BLOB: file-like ``read``/``write``/``seek``/``tell``, ``len()`` and indexing.

    Its size is fixed; writing past the end raises ValueError. Use it as a context manager or
    ``close()`` it. Only ``Connection.blobopen`` makes one.
    """

    _connection: Any
    _blob: apsw.Blob | None
    __iter__ = None  # indexable, but not a sequence: ``in`` and iteration raise TypeError

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"cannot create '{type(self).__module__}.{type(self).__name__}' instances")

    @classmethod
    def _wrap(cls, connection: Any, blob: apsw.Blob) -> Blob:
        made = cls.__new__(cls)
        made._connection = connection
        made._blob = blob
        return made

    def _open(self) -> apsw.Blob:
        self._connection._check()
        if self._blob is None:
            raise ProgrammingError("Cannot operate on a closed blob.")
        return self._blob

    def close(self) -> None:
        """Close the blob; using it afterwards raises ProgrammingError."""
        self._connection._check()
        if self._blob is not None:
            blob, self._blob = self._blob, None
            try:  # outside a transaction, this is the commit of what was written
                blob.close(True)  # like sqlite3: an error already raised is not raised again
            except apsw.Error as e:
                raise_translated(e)

    def _discard(self) -> None:
        """Close the blob as its connection closes. An error it already raised (a write to a
        read-only blob) is not raised again, as in ``sqlite3``; the failed commit of what was
        written outside a transaction is (apsw's own error: the caller translates it)."""
        blob, self._blob = self._blob, None
        if blob is not None:
            blob.close(True)

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
        view = memoryview(data)
        if not view.c_contiguous:
            _not_contiguous()
        if view.nbytes > blob.length() - blob.tell():
            raise ValueError("data longer than blob length")
        try:
            blob.write(view)
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
        if base and offset > _INT_MAX - base:
            raise OverflowError("seek offset results in overflow")
        if not 0 <= target <= blob.length():
            raise ValueError("offset out of blob range")
        blob.seek(target)

    def _index(self, key: Any, length: int) -> int:
        if not hasattr(type(key), "__index__"):
            raise TypeError("Blob indices must be integers")
        index = operator.index(key)
        if not -sys.maxsize - 1 <= index <= sys.maxsize:
            raise IndexError("cannot fit 'int' into an index-sized integer")
        if index < 0:
            index += length
        if not 0 <= index < length:
            raise IndexError("Blob index out of range")
        return index

    def _read_all(self, blob: apsw.Blob) -> bytes:
        here = blob.tell()
        try:
            blob.seek(0)
            return bytes(blob.read(blob.length()))
        except apsw.Error as e:
            raise_translated(e)
        finally:
            blob.seek(here)

    def _write_at(self, blob: apsw.Blob, offset: int, data: bytes) -> None:
        here = blob.tell()
        try:
            blob.seek(offset)
            blob.write(data)
        except apsw.Error as e:
            raise_translated(e)
        finally:
            blob.seek(here)

    def __getitem__(self, key: Any) -> Any:
        blob = self._open()
        if isinstance(key, slice):
            key.indices(0)  # TypeError for non-integer bounds, ValueError for a zero step
            return self._read_all(blob)[key]
        index = self._index(key, blob.length())
        here = blob.tell()
        try:
            blob.seek(index)
            return bytes(blob.read(1))[0]
        except apsw.Error as e:
            raise_translated(e)
        finally:
            blob.seek(here)

    def __setitem__(self, key: Any, value: Any) -> None:
        blob = self._open()
        length = blob.length()
        if isinstance(key, slice):
            start, stop, step = key.indices(length)
            view = memoryview(value)
            if not view.c_contiguous:
                _not_contiguous()
            if len(range(start, stop, step)) != view.nbytes:
                raise IndexError("Blob slice assignment is wrong size")
            if step == 1:
                self._write_at(blob, start, view.tobytes())
                return
            content = bytearray(self._read_all(blob))
            content[key] = view.tobytes()
            self._write_at(blob, 0, bytes(content))
            return
        index = self._index(key, length)
        byte = operator.index(value)
        if not 0 <= byte <= 255:
            raise ValueError("byte must be in range(0, 256)")
        self._write_at(blob, index, bytes((byte,)))

    def __delitem__(self, key: Any) -> None:
        self._open()
        kind = "slice" if isinstance(key, slice) else "item"
        raise TypeError(f"Blob doesn't support {kind} deletion")

    def __enter__(self) -> Blob:
        self._open()
        return self

    def __exit__(self, *exc: object) -> None:
        self._open()
        self.close()

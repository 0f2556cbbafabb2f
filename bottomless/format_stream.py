"""Decoding a page batch while it downloads: the streaming half of :mod:`bottomless.format`.

A restore writes a snapshot part's pages as their bytes arrive instead of holding the whole
object (and its decompressed pages) in memory, so many parts can be in flight at once in a
small, fixed amount of memory. Every check :func:`bottomless.format.decode_raw` makes is made
here too, but the verdict on the checksum comes only at the end: the caller must write into a
file that is thrown away unless :func:`decode_stream` returns.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import IO, cast

import zstandard

from bottomless import format as fmt
from bottomless.errors import CorruptObjectError

#: largest piece of decompressed pages handed to ``write`` at a time
OUTPUT_CHUNK = 1024 * 1024
#: the longest zstd frame header (magic number included)
_FRAME_HEADER_MAX = 18
#: the largest zstd window a part may ask for: bottomless writes level 3 (a 2 MiB window at
#: most); the bound keeps a damaged or hostile frame from reserving more memory
_MAX_WINDOW = 32 * 1024 * 1024

Begin = Callable[[fmt.BatchHeader, list[int]], None]
Write = Callable[[int, memoryview], None]


class _Source:
    """The object's bytes as they arrive, minus its last ``DIGEST_SIZE`` (the trailer), hashed
    as they are consumed; a ``read`` method for zstandard. Each byte is copied once, into the
    piece a read returns (zstandard must be given ``bytes``: a view crashed it)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._queue: deque[memoryview] = deque()
        self._buffered = 0
        self._ended = False
        self.hasher = hashlib.sha256()

    def _fill(self, wanted: int) -> None:
        while not self._ended and self._buffered < wanted + fmt.DIGEST_SIZE:
            chunk = next(self._chunks, None)
            if chunk is None:
                self._ended = True
            elif chunk:
                self._queue.append(memoryview(chunk))
                self._buffered += len(chunk)

    def _take(self, size: int) -> list[memoryview]:
        taken: list[memoryview] = []
        while size:
            first = self._queue[0]
            if len(first) <= size:
                taken.append(self._queue.popleft())
                size -= len(first)
            else:
                taken.append(first[:size])
                self._queue[0] = first[size:]
                size = 0
        return taken

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of the body (all that is left for -1); b"" at its end."""
        self._fill(size if size >= 0 else 1 << 62)
        available = max(0, self._buffered - fmt.DIGEST_SIZE)
        count = available if size < 0 else min(size, available)
        data = b"".join(self._take(count))
        self._buffered -= count
        self.hasher.update(data)
        return data

    def peek(self, size: int) -> bytes:
        """Up to ``size`` bytes of the body, left to be read."""
        self._fill(size)
        count = min(size, max(0, self._buffered - fmt.DIGEST_SIZE))
        out = bytearray()
        for piece in self._queue:
            if len(out) >= count:
                break
            out += piece[: count - len(out)]
        return bytes(out)

    def exactly(self, size: int, key: str, what: str) -> bytes:
        """``size`` bytes, or CorruptObjectError naming ``what`` was cut short."""
        data = self.read(size)
        if len(data) != size:
            raise CorruptObjectError(f"{key}: object is truncated (in its {what})")
        return data

    def trailer(self, key: str) -> bytes:
        """The trailer, once the body has been read whole."""
        self._fill(1 << 62)
        if self._buffered != fmt.DIGEST_SIZE:
            raise CorruptObjectError(f"{key}: object is truncated (no room for its checksum)")
        return b"".join(self._queue)


def decode_stream(chunks: Iterable[bytes], key: str, begin: Begin, write: Write) -> bytes:
    """Decode the page batch arriving as ``chunks``; return its digest.

    ``begin(header, page_numbers)`` is called once the index is read, before any page;
    ``write(offset, data)`` then receives the pages, back to back in index order, ``offset``
    counting from the first page's first byte. Raises CorruptObjectError on any defect, maybe
    after some pages were written. Version 1 objects are decoded whole, then written.
    """
    source = _Source(chunks)
    header = source.exactly(fmt.HEADER_SIZE, key, "header")
    head = fmt.decode_header(header, key)
    if head.version == 1:
        rest = source.read()
        raw = fmt.decode_raw(b"".join([header, rest, _check_trailer(source, key)]), key)
        begin(raw.head, raw.numbers)
        write(0, memoryview(raw.payload))
        return raw.digest
    index = source.exactly(4 * head.page_count, key, "page index")
    numbers = list(struct.unpack(f"<{head.page_count}I", index))
    if any(b <= a for a, b in itertools.pairwise(numbers)) or (numbers and numbers[0] == 0):
        raise CorruptObjectError(f"{key}: page index is not ascending page numbers")
    begin(head, numbers)
    expected = head.page_count * head.page_size
    if head.compression == fmt.COMPRESSION_ZSTD:
        pieces: Iterator[bytes] = _decompressed(source, key, expected)
    else:
        pieces = _stored(source)
    written = 0
    for piece in pieces:
        if written + len(piece) > expected:
            raise CorruptObjectError(f"{key}: pages decompress to more than the {expected}"
                                     " bytes its header declares")
        write(written, memoryview(piece))
        written += len(piece)
    if written != expected:
        raise CorruptObjectError(
            f"{key}: holds {written} bytes of pages, expected {head.page_count} pages of"
            f" {head.page_size} bytes"
        )
    return _check_trailer(source, key)


def _stored(source: _Source) -> Iterator[bytes]:
    while piece := source.read(OUTPUT_CHUNK):
        yield piece


def _decompressed(source: _Source, key: str, expected: int) -> Iterator[bytes]:
    try:
        declared = zstandard.frame_content_size(source.peek(_FRAME_HEADER_MAX))
    except zstandard.ZstdError as e:
        raise CorruptObjectError(f"{key}: pages do not decompress: {e}") from e
    if declared != expected:
        raise CorruptObjectError(f"{key}: compressed pages declare {declared} bytes, expected"
                                 f" {expected}")
    try:
        yield from zstandard.ZstdDecompressor(max_window_size=_MAX_WINDOW).read_to_iter(
            cast(IO[bytes], source),  # only its read() is used
            read_size=256 * 1024, write_size=OUTPUT_CHUNK,
        )
    except zstandard.ZstdError as e:
        raise CorruptObjectError(f"{key}: pages do not decompress: {e}") from e


def _check_trailer(source: _Source, key: str) -> bytes:
    trailer = source.trailer(key)
    actual = source.hasher.digest()
    if actual != trailer:
        raise CorruptObjectError(
            f"{key}: checksum mismatch (trailer says {trailer.hex()[:16]}…, content hashes to"
            f" {actual.hex()[:16]}…): the object is truncated or corrupted"
        )
    return trailer

"""Decoding a page batch while it downloads: the streaming half of :mod:`bottomless.format`.

A restore writes a snapshot part's pages as their bytes arrive instead of holding the whole
object (and its decompressed pages) in memory, so many parts can be in flight at once in a
small, fixed amount of memory. Every check :func:`bottomless.format.decode_raw` makes is made
here too, but the verdict on the checksum comes only at the end: the caller must write into a
file that is thrown away unless :func:`decode_stream` returns.

Two kinds of malformed zstd frames, which no encoder writes, are refused here although zstd's
one-shot decoding (and so ``decode_raw``) lets them pass: a raw or RLE block larger than the
frame's window allows, and anything after the header of a frame that declares no content.
"""

from __future__ import annotations

import contextlib
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

Begin = Callable[[fmt.BatchHeader, list[int]], None]
Write = Callable[[int, memoryview], None]

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_BLOCK_HEADER = 3
_BLOCK_RLE, _BLOCK_RESERVED = 1, 3
_CHECKSUM_SIZE = 4


class _Source:
    """The object's bytes as they arrive, minus its last ``DIGEST_SIZE`` (the trailer). Each
    byte is copied once, into the piece a read returns.

    The body is hashed as it arrives, one call per chunk the store hands over, but for the
    last ``DIGEST_SIZE`` bytes received (the trailer, if no more come). Each call lets go of
    the GIL and must take it back behind the other download threads: hashing the pieces reads
    take instead (a read straddles chunks, and the block headers are read apart) made several
    such round trips per chunk; with the larger zstd reads below, hashing by chunk saves a
    restore of 1 GiB about a tenth of its CPU, most of it in the kernel. Whatever is read has
    been hashed; the digest is complete once the body is read whole (``trailer`` checks that).
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._queue: deque[memoryview] = deque()
        self._buffered = 0
        self._ended = False
        self._unhashed = b""  # the last DIGEST_SIZE bytes received
        self.hasher = hashlib.sha256()

    def _fill(self, wanted: int) -> None:
        while not self._ended and self._buffered < wanted + fmt.DIGEST_SIZE:
            chunk = next(self._chunks, None)
            if chunk is None:
                self._ended = True
            elif chunk:
                view = memoryview(chunk)
                self._queue.append(view)
                self._buffered += len(view)
                self._hash_all_but_tail(view)

    def _hash_all_but_tail(self, view: memoryview) -> None:
        """Hash what came before ``view`` and ``view`` itself, but for the last DIGEST_SIZE
        bytes of them, kept back."""
        if len(view) >= fmt.DIGEST_SIZE:
            if self._unhashed:
                self.hasher.update(self._unhashed)
            self.hasher.update(view[: len(view) - fmt.DIGEST_SIZE])
            self._unhashed = bytes(view[len(view) - fmt.DIGEST_SIZE :])  # not the whole chunk
        else:
            joined = bytes(self._unhashed) + view
            self.hasher.update(joined[: max(0, len(joined) - fmt.DIGEST_SIZE)])
            self._unhashed = joined[-fmt.DIGEST_SIZE :]

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

    def views(self, size: int) -> list[memoryview]:
        """Up to ``size`` bytes of the body (all that is left for -1) as views of the chunks
        they arrived in (hashed already); an empty list at its end."""
        self._fill(size if size >= 0 else 1 << 62)
        available = max(0, self._buffered - fmt.DIGEST_SIZE)
        count = available if size < 0 else min(size, available)
        taken = self._take(count)
        self._buffered -= count
        return taken

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of the body (all that is left for -1); b"" at its end."""
        return b"".join(self.views(size))

    def exactly(self, size: int, key: str, what: str) -> bytes:
        """``size`` bytes, or CorruptObjectError naming ``what`` was cut short."""
        data = self.read(size)
        if len(data) != size:
            raise CorruptObjectError(f"{key}: object is truncated (in its {what})", key=key)
        return data

    def trailer(self, key: str) -> bytes:
        """The trailer, once the body has been read whole."""
        self._fill(1 << 62)
        if self._buffered != fmt.DIGEST_SIZE:
            raise CorruptObjectError(f"{key}: object is truncated (no room for its checksum)",
                                     key=key)
        return b"".join(self._queue)


class _Frame:
    """The bytes of exactly one zstd frame from ``source``: a ``read`` method for zstandard
    that follows the frame's block headers (RFC 8878) and ends where the frame does, so that
    anything after it stays in ``source`` to be found. The frame header is checked on the way:
    the content size it declares must be ``expected`` bytes."""

    def __init__(self, source: _Source, key: str, expected: int) -> None:
        self._source = source
        self._key = key
        magic_and_descriptor = source.exactly(5, key, "compressed pages")
        if magic_and_descriptor[:4] != _ZSTD_MAGIC:
            raise CorruptObjectError(f"{key}: pages do not decompress: not a zstd frame", key=key)
        try:
            size = zstandard.frame_header_size(magic_and_descriptor)
            header = magic_and_descriptor + source.exactly(size - 5, key, "compressed pages")
            declared = zstandard.frame_content_size(header)
            self.window_size = zstandard.get_frame_parameters(header).window_size
        except zstandard.ZstdError as e:
            raise CorruptObjectError(f"{key}: pages do not decompress: {e}", key=key) from e
        if declared != expected:
            raise CorruptObjectError(f"{key}: compressed pages declare {declared} bytes,"
                                     f" expected {expected}", key=key)
        self._pending = header  # read but not yet handed to zstandard
        self._left = 0  # bytes of the current block still to hand on
        self._last = False  # the current block is the frame's last
        self._checksum = bool(magic_and_descriptor[4] & 0x04)
        self._done = False

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of the frame (b"" once it is over), across block boundaries:
        few large reads keep the download threads from trading the GIL at every block."""
        want = size if size > 0 else OUTPUT_CHUNK
        out: list[bytes | memoryview] = [self._pending] if self._pending else []
        got = len(self._pending)
        self._pending = b""
        while got < want and not self._done:
            if not self._left:
                if self._last:  # after the last block: its checksum, if it has one
                    self._done = True
                    if self._checksum:
                        out.append(self._source.exactly(_CHECKSUM_SIZE, self._key,
                                                        "compressed pages"))
                    break
                header = self._source.exactly(_BLOCK_HEADER, self._key, "compressed pages")
                value = int.from_bytes(header, "little")
                kind, length = (value >> 1) & 3, value >> 3
                if kind == _BLOCK_RESERVED:
                    raise CorruptObjectError(f"{self._key}: pages do not decompress: reserved"
                                             " block type", key=self._key)
                self._last = bool(value & 1)
                self._left = 1 if kind == _BLOCK_RLE else length
                out.append(header)
                got += _BLOCK_HEADER
                continue
            views = self._source.views(min(self._left, want - got))
            length = sum(len(v) for v in views)
            if not length:
                raise CorruptObjectError(f"{self._key}: object is truncated (in its compressed"
                                         " pages)", key=self._key)
            self._left -= length
            out.extend(views)
            got += length
        return b"".join(out)  # one copy; zstandard must be given bytes (a view crashed it)


def decode_stream(
    chunks: Iterable[bytes], key: str, begin: Begin, write: Write, *,
    max_pages: int | None = None,
    buffering: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
) -> bytes:
    """Decode the page batch arriving as ``chunks``; return its digest.

    ``begin(header, page_numbers)`` is called once the index is read, before any page;
    ``write(offset, data)`` then receives the pages, back to back in index order, ``offset``
    counting from the first page's first byte. Raises CorruptObjectError on any defect, maybe
    after some pages were written. A header declaring more than ``max_pages`` pages is refused
    before its index is read. Version 1 objects, and frames asking for a zstd window over
    ``MAX_WINDOW``, are decoded whole inside ``buffering()`` (a caller bounds how many are held
    at once with it), then written.
    """
    source = _Source(chunks)
    header = source.exactly(fmt.HEADER_SIZE, key, "header")
    head = fmt.decode_header(header, key)
    if max_pages is not None and head.page_count > max_pages:
        raise CorruptObjectError(f"{key}: declares {head.page_count} pages, more than the"
                                 f" {max_pages} expected", key=key)
    if head.version == 1:
        with buffering():
            rest = source.read()
            raw = fmt.decode_raw(b"".join([header, rest, _check_trailer(source, key)]), key)
            begin(raw.head, raw.numbers)
            write(0, memoryview(raw.payload))
        return raw.digest
    index = source.exactly(4 * head.page_count, key, "page index")
    numbers = list(struct.unpack(f"<{head.page_count}I", index))
    if any(b <= a for a, b in itertools.pairwise(numbers)) or (numbers and numbers[0] == 0):
        raise CorruptObjectError(f"{key}: page index is not ascending page numbers", key=key)
    begin(head, numbers)
    expected = head.page_count * head.page_size
    if head.compression == fmt.COMPRESSION_ZSTD:
        frame = _Frame(source, key, expected)
        if frame.window_size > fmt.MAX_WINDOW:  # not bottomless's own: decode it whole
            with buffering():
                write(0, memoryview(fmt.payload_v2(frame.read() + source.read(), head, key)))
            return _check_trailer(source, key)
        pieces = _decompressed(frame, key)
    else:
        pieces = _stored(source, expected)
    written = 0
    for piece in pieces:
        if written + len(piece) > expected:
            raise CorruptObjectError(f"{key}: pages decompress to more than the {expected}"
                                     " bytes its header declares", key=key)
        write(written, memoryview(piece))
        written += len(piece)
    if written != expected or source.read(1):
        raise CorruptObjectError(
            f"{key}: holds {written} bytes of pages (or bytes after them), expected"
            f" {head.page_count} pages of {head.page_size} bytes",
            key=key,
        )
    return _check_trailer(source, key)


def _stored(source: _Source, expected: int) -> Iterator[bytes]:
    left = expected
    while left and (piece := source.read(min(OUTPUT_CHUNK, left))):
        left -= len(piece)
        yield piece


def _decompressed(frame: _Frame, key: str) -> Iterator[bytes]:
    try:
        yield from zstandard.ZstdDecompressor(max_window_size=fmt.MAX_WINDOW).read_to_iter(
            cast(IO[bytes], frame),  # only its read() is used
            # large reads: each piece out is a pwrite, and each call a round trip of the GIL
            read_size=OUTPUT_CHUNK, write_size=OUTPUT_CHUNK,
        )
    except zstandard.ZstdError as e:
        raise CorruptObjectError(f"{key}: pages do not decompress: {e}", key=key) from e


def _check_trailer(source: _Source, key: str) -> bytes:
    trailer = source.trailer(key)
    fmt.check_trailer(source.hasher.digest(), trailer, key)
    return trailer

"""Page batches: the objects that hold pages (a commit, or one part of a snapshot).

A batch is a fixed header, a page index (the page numbers, ascending), the pages (zstd
compressed as one frame in version 2; one by one in version 1, still readable) and the
checksum trailer of :mod:`bottomless.format.seal`.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import zstandard

from bottomless.errors import CorruptObjectError
from bottomless.format.seal import ZERO_DIGEST, unseal

#: version written in new page batches; version 1 batches (pages compressed one by one) stay
#: readable
BATCH_VERSION = 2
BATCH_VERSIONS = (1, 2)

KIND_SNAPSHOT = 1
KIND_COMMIT = 2
#: the end of a generation, at the position after its last commit: the header's generation
#: field names the generation that continues the database (see docs/format.md)
KIND_SUCCESSOR = 3
COMPRESSION_NONE = 0
COMPRESSION_ZSTD = 1
COMPRESSION_CODES = {"none": COMPRESSION_NONE, "zstd": COMPRESSION_ZSTD}

_BATCH_MAGIC = b"BTLS"
# magic, version, kind, compression, page size, db size, page count, seq, time, gen, prev, writer
_HEADER = struct.Struct("<4sHBBIIIQQ32s32s16s")
HEADER_SIZE = _HEADER.size
_INDEX_ENTRY_V1 = struct.Struct("<II")  # page number, stored length
_PGNO = struct.Struct("<I")

# zstandard (de)compressor objects must not be shared between threads
_local = threading.local()
#: the largest zstd window a page batch is decoded with as it streams in: bottomless writes
#: level 3 (a 2 MiB window at most); a frame asking for more is decoded whole instead
MAX_WINDOW = 32 * 1024 * 1024
#: SQLite's pending byte: the page holding this file offset is the lock-byte page
_PENDING_BYTE = 0x40000000


def lock_byte_page(page_size: int) -> int:
    """The number of the lock-byte page of a database of ``page_size`` pages.

    SQLite never writes the page that holds byte 2**30 of the file (its locks live there), so
    no commit of a database larger than 1 GiB holds it; it reads as zeros, which is what a
    restore leaves there (the file is extended past it).
    """
    return _PENDING_BYTE // page_size + 1


def _compressor() -> zstandard.ZstdCompressor:
    found: zstandard.ZstdCompressor | None = getattr(_local, "compressor", None)
    if found is None:
        found = _local.compressor = zstandard.ZstdCompressor(level=3)
    return found


def _decompressor() -> zstandard.ZstdDecompressor:
    found: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if found is None:
        found = _local.decompressor = zstandard.ZstdDecompressor()
    return found


@dataclass
class PageBatch:
    """A set of pages plus the database size they produce: a commit or a snapshot part."""

    kind: int
    generation: str
    seq: int
    page_size: int
    db_size: int
    pages: dict[int, bytes]
    prev: bytes = ZERO_DIGEST
    writer: bytes = bytes(16)
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    digest: bytes = ZERO_DIGEST


def encode_batch(
    batch: PageBatch, compression: str = "zstd", version: int = BATCH_VERSION
) -> bytes:
    """Serialize ``batch`` into a sealed object; sets ``batch.digest``.

    ``version`` 1 writes the layout of bottomless 0.1 (each page compressed on its own); it is
    kept so that tests can prove such objects stay readable.
    """
    code = COMPRESSION_CODES[compression]
    numbers = sorted(batch.pages)
    header = _HEADER.pack(
        _BATCH_MAGIC,
        version,
        batch.kind,
        code,
        batch.page_size,
        batch.db_size,
        len(numbers),
        batch.seq,
        batch.created_ms,
        batch.generation.encode().ljust(32, b"\0"),
        batch.prev,
        batch.writer,
    )
    pages = [batch.pages[n] for n in numbers]
    if version == 1:
        stored = [_compressor().compress(p) for p in pages] if code == COMPRESSION_ZSTD else pages
        index = b"".join(
            _INDEX_ENTRY_V1.pack(p, len(s)) for p, s in zip(numbers, stored, strict=True)
        )
    else:
        index = struct.pack(f"<{len(numbers)}I", *numbers)
        payload = b"".join(pages)
        stored = [_compressor().compress(payload) if code == COMPRESSION_ZSTD else payload]
    hasher = hashlib.sha256(header)
    hasher.update(index)
    for chunk in stored:
        hasher.update(chunk)
    batch.digest = hasher.digest()
    return b"".join([header, index, *stored, batch.digest])  # one copy, whatever the size


@dataclass
class BatchHeader:
    """The fixed header of a page batch, without its pages."""

    kind: int
    compression: int
    page_size: int
    db_size: int
    page_count: int
    seq: int
    created_ms: int
    generation: str
    prev: bytes
    writer: bytes
    version: int = BATCH_VERSION


def decode_header(body: bytes | memoryview, key: str) -> BatchHeader:
    """Parse the fixed header of a page batch (no checksum check)."""
    if len(body) < HEADER_SIZE:
        raise CorruptObjectError(f"{key}: object is truncated (header needs {HEADER_SIZE} bytes)",
                                 key=key)
    (magic, version, kind, comp, page_size, db_size, count, seq, created, gen, prev, writer) = (
        _HEADER.unpack_from(body, 0)
    )
    if magic != _BATCH_MAGIC:
        raise CorruptObjectError(f"{key}: not a bottomless page batch (magic {magic!r})",
                                 key=key)
    if version not in BATCH_VERSIONS:
        raise CorruptObjectError(
            f"{key}: format version {version} is not supported (this bottomless reads versions"
            f" {', '.join(map(str, BATCH_VERSIONS))}); upgrade bottomless to read it",
            key=key,
        )
    if kind not in (KIND_SNAPSHOT, KIND_COMMIT, KIND_SUCCESSOR) or (
        comp not in COMPRESSION_CODES.values()
    ):
        raise CorruptObjectError(f"{key}: unknown object kind {kind} or compression {comp}",
                                 key=key)
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        raise CorruptObjectError(f"{key}: invalid page size {page_size}", key=key)
    return BatchHeader(
        kind, comp, page_size, db_size, count, seq, created,
        gen.rstrip(b"\0").decode("ascii", "replace"), prev, writer, version,
    )


@dataclass
class RawBatch:
    """A verified page batch as laid out in memory: its pages back to back in one buffer.

    Restores write :meth:`runs` straight to the file, with no object per page.
    """

    head: BatchHeader
    numbers: list[int]  #: page numbers, ascending
    payload: bytes  #: the pages, in ``numbers`` order, ``page_size`` bytes each
    digest: bytes

    def runs(self) -> Iterator[tuple[int, memoryview]]:
        """``(first page number, bytes)`` for each run of consecutive page numbers."""
        view, size, numbers = memoryview(self.payload), self.head.page_size, self.numbers
        start = 0
        for i in range(1, len(numbers) + 1):
            if i == len(numbers) or numbers[i] != numbers[i - 1] + 1:
                yield numbers[start], view[start * size : i * size]
                start = i

    def to_batch(self) -> PageBatch:
        """The batch with one ``bytes`` object per page."""
        head, size, payload = self.head, self.head.page_size, self.payload
        pages = {n: payload[i * size : (i + 1) * size] for i, n in enumerate(self.numbers)}
        return PageBatch(
            kind=head.kind, generation=head.generation, seq=head.seq, page_size=head.page_size,
            db_size=head.db_size, pages=pages, prev=head.prev, writer=head.writer,
            created_ms=head.created_ms, digest=self.digest,
        )


def decode_raw(data: bytes, key: str) -> RawBatch:
    """Verify and parse a sealed page batch, keeping its pages in one buffer.

    Raises CorruptObjectError on any defect.
    """
    body, object_digest = unseal(data, key)
    head = decode_header(body, key)
    entry = _INDEX_ENTRY_V1.size if head.version == 1 else _PGNO.size
    start = HEADER_SIZE + entry * head.page_count
    if start > len(body):
        raise CorruptObjectError(f"{key}: page index runs past the end of the object", key=key)
    if head.version == 1:
        numbers, payload = _pages_v1(body, head, key)
    else:
        numbers = list(struct.unpack_from(f"<{head.page_count}I", body, HEADER_SIZE))
        payload = payload_v2(body[start:], head, key)
    if any(b <= a for a, b in itertools.pairwise(numbers)) or (numbers and numbers[0] == 0):
        raise CorruptObjectError(f"{key}: page index is not ascending page numbers", key=key)
    return RawBatch(head, numbers, payload, object_digest)


def payload_v2(stored: bytes | memoryview, head: BatchHeader, key: str) -> bytes:
    """The pages of a version 2 batch from its stored (maybe compressed) bytes, checked."""
    expected = head.page_count * head.page_size
    if head.compression != COMPRESSION_ZSTD:
        if len(stored) != expected:
            raise CorruptObjectError(
                f"{key}: holds {len(stored)} bytes of pages, expected {head.page_count} pages of"
                f" {head.page_size} bytes",
                key=key,
            )
        return bytes(stored)
    try:
        declared = zstandard.frame_content_size(stored)
        if declared != expected:
            raise CorruptObjectError(
                f"{key}: compressed pages declare {declared} bytes, expected {head.page_count}"
                f" pages of {head.page_size} bytes",
                key=key,
            )
        payload: bytes = _decompressor().decompress(
            stored, max_output_size=expected, allow_extra_data=False
        )
    except zstandard.ZstdError as e:
        raise CorruptObjectError(f"{key}: pages do not decompress: {e}", key=key) from e
    if len(payload) != expected:
        raise CorruptObjectError(f"{key}: pages decompress to {len(payload)} bytes, expected"
                                 f" {expected}", key=key)
    return payload


def _pages_v1(body: memoryview, head: BatchHeader, key: str) -> tuple[list[int], bytes]:
    numbers: list[int] = []
    pages: list[bytes] = []
    cursor = HEADER_SIZE + _INDEX_ENTRY_V1.size * head.page_count
    for i in range(head.page_count):
        pgno, length = _INDEX_ENTRY_V1.unpack_from(body, HEADER_SIZE + i * _INDEX_ENTRY_V1.size)
        raw = bytes(body[cursor : cursor + length])
        cursor += length
        if len(raw) != length or pgno == 0:
            raise CorruptObjectError(f"{key}: page index entry {i} (page {pgno}) is invalid",
                                     key=key)
        if head.compression == COMPRESSION_ZSTD:
            try:
                raw = _decompressor().decompress(
                    raw, max_output_size=head.page_size, allow_extra_data=False
                )
            except zstandard.ZstdError as e:
                raise CorruptObjectError(f"{key}: page {pgno} does not decompress: {e}",
                                         key=key) from e
        if len(raw) != head.page_size:
            raise CorruptObjectError(
                f"{key}: page {pgno} has {len(raw)} bytes, expected page size {head.page_size}",
                key=key,
            )
        numbers.append(pgno)
        pages.append(raw)
    if cursor != len(body):
        raise CorruptObjectError(f"{key}: {len(body) - cursor} unexpected bytes after the pages",
                                 key=key)
    return numbers, b"".join(pages)


def decode_batch(data: bytes, key: str) -> PageBatch:
    """Verify and parse a sealed page batch; raise CorruptObjectError on any defect."""
    return decode_raw(data, key).to_batch()


def encode_successor(
    successor: str, *, seq: int, prev: bytes, writer: bytes, page_size: int, db_size: int
) -> bytes:
    """The object that ends a generation at position ``seq`` (right after its last commit,
    whose digest is ``prev``) and names ``successor``, the generation that continues it. It
    holds no pages; ``page_size`` and ``db_size`` repeat the last commit's."""
    return encode_batch(PageBatch(
        KIND_SUCCESSOR, successor, seq, page_size, db_size, {}, prev=prev, writer=writer,
    ), "none")

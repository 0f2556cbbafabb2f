"""The storage format: object keys, page-batch objects, manifests and their checksums.

This module is the only place that knows how bytes are laid out in the store; it is documented
in ``docs/format.md``. It has no I/O of its own.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import itertools
import json
import os
import re
import secrets
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import zstandard

from bottomless.errors import ConfigError, CorruptObjectError

#: version written in new page batches; version 1 batches (pages compressed one by one) stay
#: readable
BATCH_VERSION = 2
BATCH_VERSIONS = (1, 2)
#: version of snapshot manifests
MANIFEST_VERSION = 1
DIGEST_SIZE = 32
ZERO_DIGEST = bytes(DIGEST_SIZE)

KIND_SNAPSHOT = 1
KIND_COMMIT = 2
COMPRESSION_NONE = 0
COMPRESSION_ZSTD = 1
COMPRESSION_CODES = {"none": COMPRESSION_NONE, "zstd": COMPRESSION_ZSTD}

_BATCH_MAGIC = b"BTLS"
_MANIFEST_MAGIC = b"BTLM"
# magic, version, kind, compression, page size, db size, page count, seq, time, gen, prev, writer
_HEADER = struct.Struct("<4sHBBIIIQQ32s32s16s")
HEADER_SIZE = _HEADER.size
_INDEX_ENTRY_V1 = struct.Struct("<II")  # page number, stored length
_PGNO = struct.Struct("<I")

_DB_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_GENERATION_RE = re.compile(r"\d{8}T\d{9}Z-[0-9a-f]{8}")

# zstandard (de)compressor objects must not be shared between threads
_local = threading.local()
#: the largest zstd window a page batch is decoded with as it streams in: bottomless writes
#: level 3 (a 2 MiB window at most); a frame asking for more is decoded whole instead
MAX_WINDOW = 32 * 1024 * 1024


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


def validate_db_name(name: str) -> str:
    """Return ``name`` if it is a valid database name, else raise :class:`ConfigError`."""
    if not isinstance(name, str) or not _DB_NAME_RE.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"invalid db_name {name!r}: use 1-200 characters from [A-Za-z0-9._-], starting with a"
            " letter or digit, without '/' or '..'"
        )
    return name


def default_db_name(path: str) -> str:
    """The db_name a database file gets when none is configured: its base name if that is a
    valid db_name, else one derived from it that always comes out the same.

    A base name with other characters (``données.db``, ``my app.db``) keeps its valid ones,
    with ``_`` for the rest, and gains 8 hex digits of its SHA-256, so two names that clean up
    alike stay apart: ``donn_es.db-6b1f0c2e``.
    """
    base = os.path.basename(path)
    if _DB_NAME_RE.fullmatch(base) and ".." not in base:
        return base
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", base).replace("..", "__").lstrip("._-")
    digest = hashlib.sha256(base.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{cleaned[:180] or 'db'}-{digest}"


def new_generation_id(now: float | None = None) -> str:
    """Return a new generation id that sorts after every id created earlier on this clock."""
    moment = _dt.datetime.fromtimestamp(time.time() if now is None else now, tz=_dt.UTC)
    stamp = moment.strftime("%Y%m%dT%H%M%S") + f"{moment.microsecond // 1000:03d}Z"
    return f"{stamp}-{secrets.token_hex(4)}"


def is_generation_id(text: str) -> bool:
    """Tell whether ``text`` has the shape of a generation id."""
    return bool(_GENERATION_RE.fullmatch(text))


def new_writer_id() -> bytes:
    """Return a fresh random writer id."""
    return secrets.token_bytes(16)


# ---------------------------------------------------------------- keys


def db_prefix(db_name: str) -> str:
    """Prefix under which every object of ``db_name`` lives."""
    return f"{db_name}/"


def generations_prefix(db_name: str) -> str:
    """Prefix whose children are the generation ids of ``db_name``."""
    return f"{db_name}/generations/"


def snapshots_prefix(db_name: str, generation: str) -> str:
    """Prefix under which a generation's snapshot manifests live."""
    return f"{db_name}/generations/{generation}/snapshots/"


def snapshot_key(db_name: str, generation: str, seq: int) -> str:
    """Key of the manifest of the snapshot taken at commit ``seq`` (0: the generation's base)."""
    return f"{snapshots_prefix(db_name, generation)}{seq:016d}"


def part_key(db_name: str, generation: str, seq: int, part: int) -> str:
    """Key of part ``part`` written for the snapshot at commit ``seq``."""
    return f"{db_name}/generations/{generation}/parts/{seq:016d}-{part:06d}"


def generation_of_key(key: str) -> str:
    """The generation id inside a key under ``<db>/generations/<id>/``."""
    pieces = key.split("/")
    return pieces[2] if len(pieces) > 3 and pieces[1] == "generations" else ""


def commits_prefix(db_name: str, generation: str) -> str:
    """Prefix under which a generation's commits live."""
    return f"{db_name}/generations/{generation}/commits/"


def commit_key(db_name: str, generation: str, seq: int) -> str:
    """Key of commit ``seq`` of a generation."""
    return f"{commits_prefix(db_name, generation)}{seq:016d}"


def seqs_of(keys: list[str]) -> list[int]:
    """The sequence numbers that ``keys`` (commit or snapshot keys) end with, ascending."""
    return sorted(n for n in (seq_from_key(k) for k in keys) if n is not None)


def seq_from_key(key: str) -> int | None:
    """Return the sequence number a commit or snapshot key ends with, or ``None``."""
    tail = key.rsplit("/", 1)[-1]
    return int(tail) if len(tail) == 16 and tail.isdigit() else None


# ---------------------------------------------------------------- checksums


def digest(body: bytes | memoryview) -> bytes:
    """SHA-256 of ``body``."""
    return hashlib.sha256(body).digest()


def seal(body: bytes) -> bytes:
    """Append the checksum trailer to ``body``."""
    return body + digest(body)


def unseal(data: bytes, key: str) -> tuple[memoryview, bytes]:
    """Check an object's trailer; return its body and digest, or raise CorruptObjectError."""
    if len(data) < DIGEST_SIZE + 4:
        raise CorruptObjectError(f"{key}: object is truncated ({len(data)} bytes)")
    view = memoryview(data)
    body, trailer = view[:-DIGEST_SIZE], bytes(view[-DIGEST_SIZE:])
    check_trailer(digest(body), trailer, key)
    return body, trailer


def check_trailer(actual: bytes, trailer: bytes, key: str) -> None:
    """Raise CorruptObjectError unless the body's digest ``actual`` is the ``trailer``."""
    if actual != trailer:
        raise CorruptObjectError(
            f"{key}: checksum mismatch (trailer says {trailer.hex()[:16]}…, content hashes to"
            f" {actual.hex()[:16]}…): the object is truncated or corrupted"
        )


# ---------------------------------------------------------------- page batches


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
        raise CorruptObjectError(f"{key}: object is truncated (header needs {HEADER_SIZE} bytes)")
    (magic, version, kind, comp, page_size, db_size, count, seq, created, gen, prev, writer) = (
        _HEADER.unpack_from(body, 0)
    )
    if magic != _BATCH_MAGIC:
        raise CorruptObjectError(f"{key}: not a bottomless page batch (magic {magic!r})")
    if version not in BATCH_VERSIONS:
        raise CorruptObjectError(
            f"{key}: format version {version} is not supported (this bottomless reads versions"
            f" {', '.join(map(str, BATCH_VERSIONS))}); upgrade bottomless to read it"
        )
    if kind not in (KIND_SNAPSHOT, KIND_COMMIT) or comp not in COMPRESSION_CODES.values():
        raise CorruptObjectError(f"{key}: unknown object kind {kind} or compression {comp}")
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        raise CorruptObjectError(f"{key}: invalid page size {page_size}")
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
        raise CorruptObjectError(f"{key}: page index runs past the end of the object")
    if head.version == 1:
        numbers, payload = _pages_v1(body, head, key)
    else:
        numbers = list(struct.unpack_from(f"<{head.page_count}I", body, HEADER_SIZE))
        payload = payload_v2(body[start:], head, key)
    if any(b <= a for a, b in itertools.pairwise(numbers)) or (numbers and numbers[0] == 0):
        raise CorruptObjectError(f"{key}: page index is not ascending page numbers")
    return RawBatch(head, numbers, payload, object_digest)


def payload_v2(stored: bytes | memoryview, head: BatchHeader, key: str) -> bytes:
    """The pages of a version 2 batch from its stored (maybe compressed) bytes, checked."""
    expected = head.page_count * head.page_size
    if head.compression != COMPRESSION_ZSTD:
        if len(stored) != expected:
            raise CorruptObjectError(
                f"{key}: holds {len(stored)} bytes of pages, expected {head.page_count} pages of"
                f" {head.page_size} bytes"
            )
        return bytes(stored)
    try:
        declared = zstandard.frame_content_size(stored)
        if declared != expected:
            raise CorruptObjectError(
                f"{key}: compressed pages declare {declared} bytes, expected {head.page_count}"
                f" pages of {head.page_size} bytes"
            )
        payload: bytes = _decompressor().decompress(
            stored, max_output_size=expected, allow_extra_data=False
        )
    except zstandard.ZstdError as e:
        raise CorruptObjectError(f"{key}: pages do not decompress: {e}") from e
    if len(payload) != expected:
        raise CorruptObjectError(f"{key}: pages decompress to {len(payload)} bytes, expected"
                                 f" {expected}")
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
            raise CorruptObjectError(f"{key}: page index entry {i} (page {pgno}) is invalid")
        if head.compression == COMPRESSION_ZSTD:
            try:
                raw = _decompressor().decompress(
                    raw, max_output_size=head.page_size, allow_extra_data=False
                )
            except zstandard.ZstdError as e:
                raise CorruptObjectError(f"{key}: page {pgno} does not decompress: {e}") from e
        if len(raw) != head.page_size:
            raise CorruptObjectError(
                f"{key}: page {pgno} has {len(raw)} bytes, expected page size {head.page_size}"
            )
        numbers.append(pgno)
        pages.append(raw)
    if cursor != len(body):
        raise CorruptObjectError(f"{key}: {len(body) - cursor} unexpected bytes after the pages")
    return numbers, b"".join(pages)


def decode_batch(data: bytes, key: str) -> PageBatch:
    """Verify and parse a sealed page batch; raise CorruptObjectError on any defect."""
    return decode_raw(data, key).to_batch()


# ---------------------------------------------------------------- manifests


@dataclass
class Manifest:
    """A snapshot: the whole database as of commit ``seq`` of a generation.

    ``parts`` lists the page-batch objects that hold it: ``{"key", "first", "pages",
    "digest"}``, part ``i`` covering pages ``first .. first + pages - 1``. A part may live under
    an older snapshot or generation when its pages did not change. ``commit_digest`` is the
    digest of commit ``seq`` (``None`` for a generation's base snapshot, seq 0), so commits
    after the snapshot can be chained from it. ``base`` records the (generation, seq) a branched
    generation started from.
    """

    db_name: str
    generation: str
    seq: int
    page_size: int
    db_size: int
    part_pages: int
    writer: str
    reason: str
    parts: list[dict[str, Any]]
    commit_digest: str | None = None
    base: dict[str, Any] | None = None
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    digest: bytes = ZERO_DIGEST

    def to_json(self) -> dict[str, Any]:
        """The manifest's JSON document."""
        return {
            "db_name": self.db_name,
            "generation": self.generation,
            "seq": self.seq,
            "created_ms": self.created_ms,
            "page_size": self.page_size,
            "db_size": self.db_size,
            "part_pages": self.part_pages,
            "writer": self.writer,
            "reason": self.reason,
            "parts": self.parts,
            "commit_digest": self.commit_digest,
            "base": self.base,
        }

    @property
    def chain_digest(self) -> bytes:
        """What the first commit after this snapshot names as its ``prev``."""
        return bytes.fromhex(self.commit_digest) if self.commit_digest else self.digest


def encode_manifest(manifest: Manifest) -> bytes:
    """Serialize a manifest into a sealed object; sets ``manifest.digest``."""
    doc = json.dumps(manifest.to_json(), sort_keys=True).encode()
    sealed = seal(_MANIFEST_MAGIC + struct.pack("<H", MANIFEST_VERSION) + doc)
    manifest.digest = sealed[-DIGEST_SIZE:]
    return sealed


def decode_manifest(data: bytes, key: str) -> Manifest:
    """Verify and parse a sealed manifest."""
    body, object_digest = unseal(data, key)
    if len(body) < 6 or bytes(body[:4]) != _MANIFEST_MAGIC:
        raise CorruptObjectError(f"{key}: not a bottomless manifest")
    (version,) = struct.unpack_from("<H", body, 4)
    if version != MANIFEST_VERSION:
        raise CorruptObjectError(f"{key}: manifest format version {version} is not supported")
    try:
        doc: Mapping[str, Any] = json.loads(bytes(body[6:]))
        manifest = Manifest(
            db_name=str(doc["db_name"]), generation=str(doc["generation"]),
            seq=int(doc["seq"]), page_size=int(doc["page_size"]), db_size=int(doc["db_size"]),
            part_pages=int(doc["part_pages"]), writer=str(doc["writer"]),
            reason=str(doc["reason"]), parts=[dict(p) for p in doc["parts"]],
            commit_digest=doc.get("commit_digest"), base=doc.get("base"),
            created_ms=int(doc["created_ms"]),
        )
        for part in manifest.parts:
            str(part["key"]), int(part["first"]), int(part["pages"])
            bytes.fromhex(part["digest"])
        if manifest.commit_digest is not None:
            bytes.fromhex(manifest.commit_digest)
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as e:
        raise CorruptObjectError(f"{key}: manifest JSON is invalid: {e}") from e
    manifest.digest = object_digest
    return manifest

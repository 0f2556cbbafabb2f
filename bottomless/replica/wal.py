"""SQLite's WAL file and wal-index (``-shm``), written the way SQLite's own writer writes them.

The follower appends commits to ``<db>-wal`` as frames and publishes them in the wal-index,
so that any SQLite library reading the database sees each one appear at once, as if another
process had committed it. The layouts are SQLite's (``src/wal.c``, documented at
https://www.sqlite.org/walformat.html):

* WAL: a 32-byte big-endian header (magic, version, page size, checkpoint sequence, two salts,
  checksum), then frames: a 24-byte header (page number, database size in pages on a commit
  frame, else 0, the two salts, the running checksum) and the page.
* wal-index: 32 KiB blocks. Block 0 starts with two copies of a 48-byte header (written copy
  2 first, read copy 1 first) and the 40-byte checkpoint info; each block then holds the page
  numbers of its frames (4062 in block 0, 4096 in the others) and a hash table of 8192 u16
  slots (``slot = pgno * 383 & 8191``, linear probing) whose values are frame numbers relative
  to the block. Integers are in native byte order.

Nothing here takes SQLite's locks: the caller holds the WAL write lock (through an SQLite
connection's ``BEGIN IMMEDIATE``) around :meth:`WalFile.append` and :meth:`WalFile.publish`.
The ``-shm`` file is written with ``pwrite`` on a descriptor that is never closed: a write
lands in the same page-cache pages other processes map, and closing any descriptor of a file
would drop every POSIX lock this process holds on it, SQLite's included. (``mmap.mmap``
duplicates the descriptor and closes its copy when unmapped, which has the same effect.)
"""

from __future__ import annotations

import array
import os
import secrets
import struct
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from bottomless.local.files import (
    WAL_FRAME_HEADER_SIZE,
    WAL_HEADER_SIZE,
    FileIdentity,
    file_identity,
    still_named,
    wal_checksum,
)

WAL_MAGIC = 0x377F0682  # | 1 when checksums are computed big-endian
WAL_VERSION = 3007000
INDEX_VERSION = 3007000
INDEX_HEADER_SIZE = 48
INDEX_RESERVED = 136  # two index headers and the checkpoint info
BLOCK_SIZE = 32768
BLOCK_PAGES = 4096
FIRST_BLOCK_PAGES = BLOCK_PAGES - INDEX_RESERVED // 4
HASH_SLOTS = 8192
HASH_OFFSET = BLOCK_PAGES * 4  # where a block's hash table starts
_HASH_MULTIPLIER = 383
_MASK = 0xFFFFFFFF
_NATIVE_BIG = sys.byteorder == "big"
# iVersion, unused, iChange, isInit, bigEndCksum, szPage, mxFrame, nPage, aFrameCksum[2],
# aSalt (8 raw bytes, as in the WAL header), aCksum[2]
_INDEX_HEADER = struct.Struct("=IIIBBHII2I8s2I")
_WAL_HEADER = struct.Struct(">IIII8s")
_FRAME_HEADER = struct.Struct(">II8s")
#: frames written with one pwrite
_FRAMES_PER_WRITE = 64


@dataclass(frozen=True)
class WalEnd:
    """Where a committed state ends in the WAL: the salts of the WAL's current cycle, the
    number of its frames, and the running checksum after the last of them."""

    salt: bytes
    frames: int
    checksum: tuple[int, int]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {"salt": self.salt.hex(), "frames": self.frames, "checksum": list(self.checksum)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> WalEnd:
        """Parse :meth:`to_json`'s form (raises KeyError, ValueError or TypeError)."""
        first, second = doc["checksum"]
        return cls(bytes.fromhex(doc["salt"]), int(doc["frames"]), (int(first), int(second)))


@dataclass(frozen=True)
class Appended:
    """Frames written to the WAL but not yet published: where they end, their page numbers in
    frame order, and what the index header will say about them."""

    end: WalEnd
    pgnos: list[int]
    db_size: int
    page_size: int
    big_endian: bool


@dataclass
class IndexHeader:
    """The wal-index header: what every reader starts a transaction from."""

    change: int
    big_endian: bool
    page_size: int
    max_frame: int
    db_size: int
    frame_checksum: tuple[int, int]
    salt: bytes

    @classmethod
    def parse(cls, raw: bytes) -> IndexHeader | None:
        """The header from the first 96 bytes of ``-shm``; ``None`` unless both copies are the
        same, initialized and checksum-valid (then SQLite would run its recovery)."""
        if len(raw) < 2 * INDEX_HEADER_SIZE or raw[:INDEX_HEADER_SIZE] != raw[48:96]:
            return None
        version, _, change, is_init, big, size, max_frame, db_size, c0, c1, salt, k0, k1 = (
            _INDEX_HEADER.unpack_from(raw, 0)
        )
        if not is_init or version != INDEX_VERSION:
            return None
        if wal_checksum(raw[:40], 0, 0, _NATIVE_BIG) != (k0, k1):
            return None
        page_size = (size & 0xFE00) + ((size & 1) << 16)
        return cls(change, bool(big), page_size, max_frame, db_size, (c0, c1), salt)

    def encode(self) -> bytes:
        """The 48 bytes SQLite's ``walIndexWriteHdr`` writes, checksum included."""
        size = (self.page_size & 0xFF00) | (self.page_size >> 16)
        body = _INDEX_HEADER.pack(
            INDEX_VERSION, 0, self.change & _MASK, 1, int(self.big_endian), size, self.max_frame,
            self.db_size, *self.frame_checksum, self.salt, 0, 0,
        )[:40]
        return body + struct.pack("=2I", *wal_checksum(body, 0, 0, _NATIVE_BIG))


def block_of(frame: int) -> int:
    """The wal-index block that indexes ``frame`` (SQLite's ``walFramePage``)."""
    return (frame + BLOCK_PAGES - FIRST_BLOCK_PAGES - 1) // BLOCK_PAGES


def _first_frame_before(block: int) -> int:
    """The frame number just before the first one ``block`` indexes (``iZero``)."""
    return 0 if block == 0 else FIRST_BLOCK_PAGES + (block - 1) * BLOCK_PAGES


@dataclass
class WalScan:
    """What a WAL file holds, read from the file alone: its salts, and the end of every commit
    in its valid prefix of frames (checksums checked, as SQLite's recovery does)."""

    salt: bytes
    page_size: int
    big_endian: bool
    commits: dict[int, tuple[int, int]]  # frame count at each commit frame -> checksum
    db_sizes: dict[int, int]  # frame count at each commit frame -> database size in pages

    def holds(self, end: WalEnd | None) -> bool:
        """Whether a commit of this WAL ends exactly at ``end``."""
        return end is not None and end.salt == self.salt and (
            self.commits.get(end.frames) == end.checksum
        )


class _KeptDescriptors:
    """Descriptors of ``-shm`` files, one per file, never closed (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fds: dict[str, tuple[int, FileIdentity]] = {}

    def get(self, path: str) -> int:
        """A read-write descriptor of ``path``, reopened if the file was replaced. Raises
        FileNotFoundError if there is none (SQLite creates it; this never does)."""
        with self._lock:
            entry = self._fds.get(path)
            if entry is None or not still_named(entry[0], entry[1], path):
                # a replaced file's descriptor stays open: SQLite may hold locks through it
                fd = os.open(path, os.O_RDWR)
                entry = (fd, file_identity(fd))
                self._fds[path] = entry
            return entry[0]


_shm_descriptors = _KeptDescriptors()


class WalFile:
    """The WAL and wal-index of one database, for the process that writes its commits."""

    def __init__(self, db_path: str) -> None:
        self.db_path = db_path
        self.wal_path = db_path + "-wal"
        self.shm_path = db_path + "-shm"

    # ------------------------------------------------------------ wal-index

    def index_header(self) -> IndexHeader | None:
        """The current wal-index header, ``None`` if there is no valid one."""
        try:
            fd = _shm_descriptors.get(self.shm_path)
        except FileNotFoundError:
            return None
        return IndexHeader.parse(os.pread(fd, 96, 0))

    def indexed_pages(self, header: IndexHeader) -> dict[int, int]:
        """Page number -> the newest frame holding it, for frames ``1..header.max_frame``."""
        fd = _shm_descriptors.get(self.shm_path)
        newest: dict[int, int] = {}
        for block in range(block_of(header.max_frame) + 1 if header.max_frame else 0):
            zero = _first_frame_before(block)
            base = INDEX_RESERVED if block == 0 else 0
            count = min(header.max_frame - zero, (HASH_OFFSET - base) // 4)
            numbers = array.array("I", os.pread(fd, count * 4, block * BLOCK_SIZE + base))
            for index, pgno in enumerate(numbers, start=zero + 1):
                newest[pgno] = index
        return newest

    def publish(self, header: IndexHeader, appended: Appended) -> IndexHeader:
        """Index the frames of ``appended`` and publish them: readers see the commit once this
        returns. ``header`` is the current header; returns the new one.

        Like ``walIndexAppend``: a block's first frame clears the block, and entries past the
        current end (left by an append that never got published) are removed first.
        """
        fd = _shm_descriptors.get(self.shm_path)
        end, pgnos = appended.end, appended.pgnos
        first = end.frames - len(pgnos) + 1
        last = end.frames
        needed = (block_of(last) + 1) * BLOCK_SIZE
        size = os.fstat(fd).st_size
        while size < needed:  # extend with real zeros, as SQLite does, never a sparse hole
            os.pwrite(fd, bytes(BLOCK_SIZE - size % BLOCK_SIZE), size)
            size += BLOCK_SIZE - size % BLOCK_SIZE
        frame = first
        while frame <= last:
            block = block_of(frame)
            zero = _first_frame_before(block)
            count = min(last, _first_frame_before(block + 1)) - frame + 1
            self._index_block(fd, block, zero, header.max_frame, frame, pgnos[:count])
            pgnos, frame = pgnos[count:], frame + count
        new = IndexHeader(
            header.change + 1, appended.big_endian, appended.page_size, end.frames,
            appended.db_size, end.checksum, end.salt,
        )
        encoded = new.encode()
        os.pwrite(fd, encoded, INDEX_HEADER_SIZE)  # copy 2 first: readers read copy 1 first
        os.pwrite(fd, encoded, 0)
        return new

    def _index_block(self, fd: int, block: int, zero: int, max_frame: int, frame: int,
                     pgnos: list[int]) -> None:
        base = INDEX_RESERVED if block == 0 else 0  # never rewrite the headers or read marks
        offset = block * BLOCK_SIZE + base
        raw = os.pread(fd, BLOCK_SIZE - base, offset)
        numbers = array.array("I", raw[: HASH_OFFSET - base])
        slots = array.array("H", raw[HASH_OFFSET - base :])
        if frame - zero == 1:
            numbers = array.array("I", bytes(len(numbers) * 4))
            slots = array.array("H", bytes(HASH_SLOTS * 2))
        else:  # walCleanupHash: forget frames past the published end
            limit = max_frame - zero
            if any(numbers[limit:]):
                slots = array.array("H", [0 if v > limit else v for v in slots])
                numbers[limit:] = array.array("I", bytes((len(numbers) - limit) * 4))
        for idx, pgno in enumerate(pgnos, start=frame - zero):
            key = (pgno * _HASH_MULTIPLIER) & (HASH_SLOTS - 1)
            while slots[key]:
                key = (key + 1) & (HASH_SLOTS - 1)
            numbers[idx - 1] = pgno
            slots[key] = idx
        os.pwrite(fd, numbers.tobytes() + slots.tobytes(), offset)

    # ------------------------------------------------------------ WAL file

    def append(self, header: IndexHeader, pages: Iterable[tuple[int, bytes | memoryview]],
               db_size: int, page_size: int) -> Appended:
        """Write ``pages`` as frames after the published end (the last one a commit frame
        saying the database has ``db_size`` pages) and ``fsync`` the WAL. Nothing is visible
        to readers until :meth:`publish`. When the WAL holds no published frame, it starts a
        new cycle: a fresh WAL header with new salts (and maybe a new page size). Raises
        ValueError if ``pages`` is empty, or if the page size differs from the WAL's while
        it holds frames.
        """
        fd = os.open(self.wal_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if header.max_frame:
                if page_size != header.page_size:
                    raise ValueError(f"the WAL holds pages of {header.page_size} bytes, not"
                                     f" {page_size}")
                start = WalEnd(header.salt, header.max_frame, header.frame_checksum)
                big = header.big_endian
            else:
                start, big = self._new_cycle(fd, header, page_size), _NATIVE_BIG
            end, pgnos = self._write_frames(fd, start, pages, db_size, page_size, big)
            os.fsync(fd)
        finally:
            os.close(fd)  # SQLite keeps no lock on the WAL file itself
        return Appended(end, pgnos, db_size, page_size, big)

    def _new_cycle(self, fd: int, header: IndexHeader, page_size: int) -> WalEnd:
        """Write a fresh WAL header; return where its first frame chains from."""
        # like walRestartHdr: salt-1 one more than before, salt-2 random, so no frame left from
        # an earlier cycle can pass for one of this cycle
        salt1 = (int.from_bytes(header.salt[:4], "big") + 1) & _MASK
        salt = salt1.to_bytes(4, "big") + secrets.token_bytes(4)
        previous = os.pread(fd, 16, 0)
        sequence = struct.unpack(">I", previous[12:16])[0] + 1 if len(previous) == 16 else 0
        head = _WAL_HEADER.pack(WAL_MAGIC | int(_NATIVE_BIG), WAL_VERSION, page_size,
                                sequence & _MASK, salt)
        checksum = wal_checksum(head, 0, 0, _NATIVE_BIG)
        os.pwrite(fd, head + struct.pack(">2I", *checksum), 0)
        return WalEnd(salt, 0, checksum)

    def _write_frames(
        self, fd: int, start: WalEnd, pages: Iterable[tuple[int, bytes | memoryview]],
        db_size: int, page_size: int, big: bool,
    ) -> tuple[WalEnd, list[int]]:
        checksum, frame = start.checksum, start.frames
        pgnos: list[int] = []
        chunk: list[bytes] = []
        offset = WAL_HEADER_SIZE + frame * (WAL_FRAME_HEADER_SIZE + page_size)
        for (pgno, page), is_last in _mark_last(pages):
            if len(page) != page_size:
                raise ValueError(f"page {pgno} has {len(page)} bytes, not {page_size}")
            head = _FRAME_HEADER.pack(pgno, db_size if is_last else 0, start.salt)
            checksum = wal_checksum(head[:8], *checksum, big)
            checksum = wal_checksum(bytes(page), *checksum, big)
            chunk.append(head + struct.pack(">2I", *checksum))
            chunk.append(bytes(page))
            pgnos.append(pgno)
            frame += 1
            if len(chunk) >= 2 * _FRAMES_PER_WRITE or is_last:
                data = b"".join(chunk)
                _pwrite_all(fd, data, offset)
                offset += len(data)
                chunk = []
        if not pgnos:
            raise ValueError("a commit needs at least one page")
        return WalEnd(start.salt, frame, checksum), pgnos

    def scan(self, through: int | None = None) -> WalScan | None:
        """Read the WAL file's valid frames (at most ``through``); ``None`` if it has no valid
        header. Frames stop at the first with other salts or a wrong checksum."""
        try:
            fd = os.open(self.wal_path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            head = os.pread(fd, WAL_HEADER_SIZE, 0)
            if len(head) < WAL_HEADER_SIZE:
                return None
            magic, _version, page_size, _seq, salt = _WAL_HEADER.unpack_from(head)
            big = bool(magic & 1)
            if magic | 1 != WAL_MAGIC | 1 or page_size < 512 or page_size & (page_size - 1):
                return None
            checksum = wal_checksum(head[:24], 0, 0, big)
            if checksum != struct.unpack(">2I", head[24:]):
                return None
            scan = WalScan(salt, page_size, big, {}, {})
            size = WAL_FRAME_HEADER_SIZE + page_size
            frame = 0
            while through is None or frame < through:
                raw = os.pread(fd, size, WAL_HEADER_SIZE + frame * size)
                if len(raw) < size or raw[8:16] != salt:
                    break
                checksum = wal_checksum(raw[:8], *checksum, big)
                checksum = wal_checksum(raw[WAL_FRAME_HEADER_SIZE:], *checksum, big)
                if checksum != struct.unpack(">2I", raw[16:24]):
                    break
                frame += 1
                db_size = struct.unpack(">I", raw[4:8])[0]
                if db_size:
                    scan.commits[frame] = checksum
                    scan.db_sizes[frame] = db_size
            return scan
        finally:
            os.close(fd)

    def frame_pages(self, first: int, last: int, page_size: int) -> list[int]:
        """Page numbers of frames ``first..last`` of the WAL file."""
        size = WAL_FRAME_HEADER_SIZE + page_size
        with open(self.wal_path, "rb") as handle:
            numbers = []
            for frame in range(first, last + 1):
                handle.seek(WAL_HEADER_SIZE + (frame - 1) * size)
                numbers.append(struct.unpack(">I", handle.read(4))[0])
        return numbers

    @staticmethod
    def frame_offset(frame: int, page_size: int) -> int:
        """Where the page of ``frame`` (1-based) starts in the WAL file."""
        return (WAL_HEADER_SIZE + (frame - 1) * (WAL_FRAME_HEADER_SIZE + page_size)
                + WAL_FRAME_HEADER_SIZE)

    def truncate(self, frames: int, page_size: int) -> None:
        """Cut the WAL file after ``frames`` frames (to nothing for 0)."""
        if not os.path.exists(self.wal_path):
            return
        size = WAL_HEADER_SIZE + frames * (WAL_FRAME_HEADER_SIZE + page_size) if frames else 0
        if os.path.getsize(self.wal_path) > size:
            os.truncate(self.wal_path, size)


def _mark_last(items: Iterable[Any]) -> Iterator[tuple[Any, bool]]:
    """Each item with whether it is the last one."""
    iterator = iter(items)
    try:
        previous = next(iterator)
    except StopIteration:
        return
    for item in iterator:
        yield previous, False
        previous = item
    yield previous, True


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written

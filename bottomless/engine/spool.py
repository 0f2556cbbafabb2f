"""Asynchronous durability: a local spool of committed transactions.

With ``durability="async"`` a commit only appends its pages to ``<db>-bottomless-queue``
(after SQLite committed locally, under SQLite's write lock, so entries are numbered in commit
order across processes). An uploader thread merges consecutive entries into one commit object
(the restore then lands on the last of them: still a commit boundary), uploads it, records it,
and deletes the entries. Before the PUT it writes the exact object to an *intent* file, so an
upload interrupted by a crash is finished, byte for byte, by whoever opens the database next.
One process uploads at a time (``flock`` on the spool's lock file); when, is the
:mod:`uploader <bottomless.engine.uploader>`'s business.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from bottomless import format as fmt
from bottomless.engine.intent import IntentFile
from bottomless.engine.transaction import Transaction
from bottomless.errors import CorruptObjectError
from bottomless.local.files import FileIdentity, file_identity, still_named
from bottomless.local.lockfile import try_flock
from bottomless.osutil import pwrite_all

logger = logging.getLogger(__name__)


class DamagedSpoolError(CorruptObjectError):
    """The queue file fails its own checks: a header or record that cannot be what was
    written (the database's local file still holds every commit it spooled)."""


# The queue file: a fixed header, then records appended back to back.
_MAGIC = b"BTLQ"
#: written while the resync mark is set, so that a bottomless older than the mark refuses the
#: spool instead of shipping it, and the mark with it, unseen
_VERSION_RESYNC = 2
_VERSION = 1
# magic, version, flags, head offset, end offset, number at head, next number
_HEADER = struct.Struct("<4sHHQQQQ")
#: flag: a commit reached the local file but not the spool (or was spooled, then reported
#: failed): what is uploaded next must be a new generation from the local file
_RESYNC = 1
#: flag: a commit to be spooled is passing its commit point (set under SQLite's write lock,
#: cleared by its append). Found by the next holder of that lock, its committer was killed
#: between the two, so the local file may hold a commit the spool lacks: it becomes _RESYNC
_IN_COMMIT = 2
#: flag: the entries of a bottomless 0.1 spool were carried over; its files are to be removed
CARRIED_OVER = 4
_DATA_START = 64
# body length, number, created (Unix seconds), CRC-32 of the body
_RECORD = struct.Struct("<IQdI")
# page size, database size, page count; then the page numbers (u32) and the pages
_BODY = struct.Struct("<III")
#: compact the file once this many consumed bytes sit before the live records
_COMPACT_BYTES = 4 * 1024 * 1024
#: the file is grown by at least this much at a time, ahead of the appends: an append that
#: grows the file measured slower commits (on ext4) than one into space allocated in advance
_PREALLOCATE = 4 * 1024 * 1024


@dataclass
class _Header:
    head: int
    end: int
    head_number: int
    next_number: int
    flags: int = 0


class Spool:
    """The spool of one database: an append-only queue file beside it, ``<db>-bottomless-queue``.

    Appending a commit is two ``pwrite`` calls: the record after the last one, then the header
    that makes it visible, so a process killed between them leaves nothing half-visible. The
    file is allocated ahead of the appends, in steps of a few MiB. Every
    header update happens under an exclusive ``flock`` on the file (and a thread lock in the
    process); committers append under SQLite's write lock, so records are numbered in commit
    order across processes. Records carry a CRC-32. Consumed records are dropped by moving the
    head; the file is truncated once it is empty, or compacted once the consumed bytes dwarf the
    live ones. Nothing is fsynced: entries survive a process crash, not a power cut (nor would
    the local database's own unsynced WAL tail).
    """

    def __init__(self, db_path: str) -> None:
        self.path = db_path + "-bottomless-queue"
        self.intent = IntentFile(self.path + ".intent")
        self.legacy_path = db_path + "-bottomless-spool"
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._identity: FileIdentity = 0
        self._size = 0  # size of the file when last looked at (it only shrinks under flock)

    def exists(self) -> bool:
        """Whether there is a spool at all."""
        return os.path.exists(self.path)

    # ---------------------------------------------------------------- the locked file

    @contextlib.contextmanager
    def _locked(self, create: bool = True, checked: bool = False) -> Iterator[int | None]:
        """The queue file, locked against other threads and processes (``None``: no file);
        ``checked``: the descriptor is known to be the file's (see :meth:`append`)."""
        with self._lock:
            fd = self._open(create, checked)
            if fd is None:
                yield None
                return
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield fd
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _open(self, create: bool, checked: bool = False) -> int | None:
        if (self._fd is not None and not checked
                and not still_named(self._fd, self._identity, self.path)):
            os.close(self._fd)  # the file was removed (its database is gone): start afresh
            self._fd = None
        if self._fd is None:
            if not create and not os.path.exists(self.path):
                return None
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            self._identity = file_identity(self._fd)
            self._size = 0
        return self._fd

    def _reserve(self, fd: int, end: int) -> None:
        """Make sure the file is allocated up to ``end``, growing it in big steps. Raises
        OSError (ENOSPC, EFBIG …) if not even ``end`` can be: then the append must fail."""
        if end <= self._size:
            return
        self._size = os.fstat(fd).st_size
        needed = end - self._size
        for length in (needed + _PREALLOCATE, needed) if needed > 0 else ():
            try:
                os.posix_fallocate(fd, self._size, length)
            except OSError as e:
                if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    return  # not supported here: the append grows the file instead
                if e.errno in (errno.ENOSPC, errno.EFBIG) and length > needed:
                    continue  # no room for the step ahead: the record alone may still fit
                raise
            self._size += length
            return

    def _header(self, fd: int) -> _Header:
        raw = os.pread(fd, _HEADER.size, 0)
        if not raw:
            header = _Header(_DATA_START, _DATA_START, 1, 1)
            self._write_header(fd, header)
            return header
        if len(raw) < _HEADER.size:
            raise DamagedSpoolError(f"{self.path}: spool header is truncated")
        magic, version, flags, head, end, head_number, next_number = _HEADER.unpack(raw)
        if magic == _MAGIC and version not in (_VERSION, _VERSION_RESYNC):
            raise CorruptObjectError(f"{self.path}: spool format {version} is not one this"
                                     " bottomless reads (written by a newer version)")
        if magic != _MAGIC or not _DATA_START <= head <= end or head_number > next_number:
            raise DamagedSpoolError(f"{self.path}: not a bottomless spool (or a damaged one)")
        return _Header(head, end, head_number, next_number, flags)

    def _record_at(self, fd: int, header: _Header) -> tuple[int, float]:
        """Length and creation time of the record at the header's head, checked to end
        within the live records."""
        raw = os.pread(fd, _RECORD.size, header.head)
        if len(raw) == _RECORD.size:
            length, _, created, _ = _RECORD.unpack(raw)
            if header.head + _RECORD.size + length <= header.end:
                return length, created
        raise DamagedSpoolError(f"{self.path}: record at {header.head} runs past the end"
                                f" of the spooled entries ({header.end})")

    def _write_header(self, fd: int, header: _Header) -> None:
        version = _VERSION_RESYNC if header.flags & _RESYNC else _VERSION
        pwrite_all(fd, _HEADER.pack(
            _MAGIC, version, header.flags, header.head, header.end, header.head_number,
            header.next_number,
        ), 0)

    def mark_resync(self, needed: bool = True) -> None:
        """Record (``needed``) or clear, in the header, that what is uploaded next must be a new
        generation from the local file: a commit reached the local file but not the spool. The
        header is rewritten in place, so a full disk does not stop it; it outlives a crash.
        Either way the mark of :meth:`begin_commit` goes: clearing means that a generation from
        the local file, under SQLite's write lock, holds every commit."""
        resync = _RESYNC if needed else 0
        self._change_flags(lambda flags: flags & ~(_IN_COMMIT | _RESYNC) | resync, create=needed)

    def begin_commit(self) -> bool:
        """Call under SQLite's write lock, before the commit point of a commit to be spooled;
        returns whether the resync mark is set. If it is not, the header is marked, so that a
        process killed between the commit point and :meth:`append` (which clears the mark)
        leaves a spool that says so. A mark found already set was left by such a process (only
        a holder of the write lock sets one): it becomes the resync mark."""
        def marked(flags: int) -> int:
            flags = self._settled(flags)
            return flags if flags & _RESYNC else flags | _IN_COMMIT

        return bool(self._change_flags(marked, create=True) & _RESYNC)

    def end_commit(self) -> None:
        """The commit :meth:`begin_commit` marked did not pass its commit point: unmark."""
        self.clear_flag(_IN_COMMIT)

    def settle_interrupted_commit(self) -> None:
        """Call under SQLite's write lock, with no commit under way (an open): a mark of
        :meth:`begin_commit` left by a killed process becomes the resync mark."""
        self._change_flags(self._settled)

    def _change_flags(self, change: Callable[[int], int], *, create: bool = False) -> int:
        """Apply ``change`` to the header's flags, writing the header only if they change;
        returns the flags now (0: no spool, unless ``create``)."""
        with self._locked(create=create) as fd:
            if fd is None:
                return 0
            header = self._header(fd)
            flags = change(header.flags)
            if flags != header.flags:
                header.flags = flags
                self._write_header(fd, header)
            return flags

    def _settled(self, flags: int) -> int:
        if not flags & _IN_COMMIT:
            return flags
        logger.warning("%s: a process was killed between a commit and its spooling; a new"
                       " generation from the local file, which holds that commit, comes next",
                       self.path)
        return flags & ~_IN_COMMIT | _RESYNC

    def commit_mark(self) -> int | None:
        """The number the commit :meth:`begin_commit` marked would take, while the mark is
        there (``None`` otherwise). Outside SQLite's write lock it may be a live commit's."""
        header = self._peek()
        return header.next_number if header is not None and header.flags & _IN_COMMIT else None

    def resync_needed(self) -> bool:
        """Whether :meth:`mark_resync` recorded that a new generation must come next."""
        header = self._peek()
        return header is not None and bool(header.flags & _RESYNC)

    # ---------------------------------------------------------------- entries

    def append(self, txn: Transaction, *, marked: bool = False) -> int:
        """Spool a committed transaction; call with SQLite's write lock held. Raises OSError
        if the record cannot be written whole (a full disk): the spool is then unchanged.
        ``marked``: :meth:`begin_commit` marked the spool for it under the write lock held
        since, so the file cannot have been replaced (only an open, under that lock, does
        it): the check that it was not is skipped."""
        return self.append_all([txn], checked=marked)[0]

    def append_all(self, txns: list[Transaction], flags: int = 0, *,
                   checked: bool = False) -> list[int]:
        """Spool transactions, all visible at once (one header write, which also sets
        ``flags``); returns their numbers. Raises OSError as :meth:`append` does."""
        with self._locked(checked=checked) as fd:
            assert fd is not None
            header = self._header(fd)
            numbers = list(range(header.next_number, header.next_number + len(txns)))
            records = b"".join(_record(txn, number) for txn, number in zip(txns, numbers,
                                                                           strict=True))
            self._reserve(fd, header.end + len(records))
            pwrite_all(fd, records, header.end)
            header.end += len(records)
            header.next_number += len(txns)
            header.flags = header.flags & ~_IN_COMMIT | flags
            self._write_header(fd, header)  # the records exist from here on
        return numbers

    def flags(self) -> int:
        """The header's flags (0: no spool)."""
        header = self._peek()
        return 0 if header is None else header.flags

    def clear_flag(self, flag: int) -> None:
        """Clear one of the header's flags."""
        self._change_flags(lambda flags: flags & ~flag)

    def _peek(self) -> _Header | None:
        with self._locked(create=False) as fd:
            return None if fd is None else self._header(fd)

    def entries(self) -> list[int]:
        """Numbers of the spooled transactions, oldest first."""
        header = self._peek()
        return [] if header is None else list(range(header.head_number, header.next_number))

    def head_number(self) -> int:
        """Number of the oldest entry still spooled (or of the next one when empty); 0 if there
        is no spool, -1 if it is damaged. It grows as entries are uploaded."""
        with contextlib.suppress(DamagedSpoolError):
            return 0 if (header := self._peek()) is None else header.head_number
        return -1

    def last_number(self) -> int:
        """Number of the newest entry ever spooled (0 if none)."""
        header = self._peek()
        return 0 if header is None else header.next_number - 1

    def oldest_age(self, *, if_future: float = 0.0) -> float:
        """Seconds since the oldest entry was spooled (0: none is, or see :meth:`size_bytes`);
        ``if_future`` if it is stamped later than now, the wall clock having stepped back."""
        with self._locked(create=False) as fd:
            if fd is None:
                return 0.0
            header = self._header(fd)
            if header.head == header.end:
                return 0.0
            created = self._record_at(fd, header)[1]
        age = time.time() - created
        return age if age >= 0 else if_future

    def size_bytes(self) -> int:
        """Bytes held by the spooled entries."""
        header = self._peek()
        return 0 if header is None else header.end - header.head

    def read_group(self, max_bytes: int) -> list[tuple[int, fmt.PageBatch]]:
        """The oldest entries, in order, up to about ``max_bytes`` (at least one); none while
        the resync mark is set (read with them: nothing spooled after it may ship)."""
        group: list[tuple[int, fmt.PageBatch]] = []
        with self._locked(create=False) as fd:
            if fd is None:
                return group
            header = self._header(fd)
            if header.flags & _RESYNC:
                return group
            # one read for the whole group (the uploader runs beside commits: keep it lean)
            head = header.head
            data = memoryview(os.pread(fd, min(header.end - head, max_bytes + _RECORD.size), head))
            pos = total = 0
            while head + pos < header.end:
                if pos + _RECORD.size > len(data):
                    if group:
                        break  # the rest is for the next group
                    raise DamagedSpoolError(f"{self.path}: record at {head} is truncated")
                length, number, created, crc = _RECORD.unpack_from(data, pos)
                if head + pos + _RECORD.size + length > header.end:
                    raise DamagedSpoolError(f"{self.path}: record at {head + pos} runs past the"
                                            f" end of the spooled entries ({header.end})")
                if group and total + length > max_bytes:
                    break
                start = pos + _RECORD.size
                if start + length > len(data):
                    if group:
                        break
                    # a first entry larger than the read: read it whole
                    data = memoryview(os.pread(fd, _RECORD.size + length, head))
                body = data[start : start + length]
                if len(body) != length or zlib.crc32(body) != crc:
                    raise DamagedSpoolError(
                        f"{self.path}#{number}: spooled commit is damaged (CRC mismatch)"
                    )
                group.append((number, _decode_body(body, self.path, number, created)))
                pos = start + length
                total += length
        return group

    def remove_through(self, number: int) -> None:
        """Delete every entry up to ``number``."""
        with self._locked(create=False) as fd:
            if fd is None:
                return
            header = self._header(fd)
            while header.head < header.end and header.head_number <= number:
                header.head += _RECORD.size + self._record_at(fd, header)[0]
                header.head_number += 1
            live = header.end - header.head
            keep = _DATA_START + _PREALLOCATE  # what an idle spool keeps allocated
            if live == 0:
                header.head = header.end = _DATA_START
                self._write_header(fd, header)
                if os.fstat(fd).st_size > keep:
                    os.ftruncate(fd, keep)
                    self._size = min(self._size, keep)
            elif header.head - _DATA_START >= max(live, _COMPACT_BYTES):
                # move the live records to the front. The copy overwrites consumed records, so
                # the header stops naming them first; the copy does not overlap where the live
                # records are, so a crash before the header names their new place leaves the
                # old copy in force
                self._write_header(fd, header)
                pwrite_all(fd, os.pread(fd, live, header.head), _DATA_START)
                header.head, header.end = _DATA_START, _DATA_START + live
                self._write_header(fd, header)
                if os.fstat(fd).st_size > header.end + keep:
                    os.ftruncate(fd, header.end + keep)
                    self._size = min(self._size, header.end + keep)
            else:
                self._write_header(fd, header)

    # ---------------------------------------------------------------- upload coordination

    def upload_lock(self, wait: float = 0.0) -> contextlib.AbstractContextManager[bool]:
        """Try to become the (only) uploader, for up to ``wait`` seconds; yields whether it
        succeeded."""
        return try_flock(self.path + ".lock", wait)

    # ---------------------------------------------------------------- lifecycle

    def sync(self) -> None:
        """Make the queue file durable (``fsync``)."""
        with self._locked(create=False) as fd:
            if fd is not None:
                os.fsync(fd)

    def close(self) -> None:
        """Close the spool's file."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def set_aside(self) -> str:
        """Move a damaged queue file out of the way, kept as ``…-queue.damaged`` for a look,
        and forget the intent (call with the upload lock held); returns the new name."""
        self.close()
        aside = self.path + ".damaged"
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.path, aside)
        self.intent.clear()
        return aside

    def destroy(self) -> None:
        """Remove the whole spool (its database is gone)."""
        self.close()
        for path in (self.path, self.path + ".lock", self.intent.path, self.legacy_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _record(txn: Transaction, number: int) -> bytes:
    pgnos = sorted(txn.pages)
    body = b"".join([
        _BODY.pack(txn.page_size, txn.db_size, len(pgnos)),
        struct.pack(f"<{len(pgnos)}I", *pgnos),
        *(txn.pages[n] for n in pgnos),
    ])
    return _RECORD.pack(len(body), number, time.time(), zlib.crc32(body)) + body


def _decode_body(
    body: bytes | memoryview, path: str, number: int, created: float
) -> fmt.PageBatch:
    page_size, db_size, count = _BODY.unpack_from(body)
    start = _BODY.size + 4 * count
    if len(body) != start + count * page_size:
        raise DamagedSpoolError(f"{path}#{number}: spooled commit has the wrong length")
    numbers = struct.unpack_from(f"<{count}I", body, _BODY.size)
    pages = {
        n: bytes(body[start + i * page_size : start + (i + 1) * page_size])
        for i, n in enumerate(numbers)
    }
    return fmt.PageBatch(
        fmt.KIND_COMMIT, "spool", 0, page_size, db_size, pages, created_ms=int(created * 1000)
    )

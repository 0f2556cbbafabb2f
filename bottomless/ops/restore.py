"""Rebuilding a database file from the store, at the newest commit or at any point in time.

A restore picks the newest snapshot at or before the target commit, writes its parts, and
applies the commits after it in order (from the snapshot before it, if one of its parts is
damaged or missing). Every object is verified (checksum, generation,
sequence, chain). Snapshot parts are written as they download, several at once in a few MiB
each, and commits once verified, into a temporary file that replaces the target path, by a
rename, only once all of it is complete and verified.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime as dt
import fcntl
import functools
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from bottomless import format as fmt
from bottomless.backends.base import PageStore
from bottomless.errors import (
    CorruptObjectError,
    ObjectNotFoundError,
)
from bottomless.format.stream import decode_stream
from bottomless.ops.snapshots import (
    check_part_digest,
    check_part_layout,
    iter_commits,
    read_manifest,
    snapshot_seqs,
)
from bottomless.ops.targets import Target, resolve_target
from bottomless.ops.transfer import STREAMED_PART_BYTES, in_order, window_for
from bottomless.osutil import fsync_dir, pwrite_all, remove_abandoned

logger = logging.getLogger(__name__)


@dataclass
class RestoreResult:
    """Where a restore landed."""

    db_name: str
    generation: str
    seq: int
    digest: bytes
    page_size: int
    db_size: int
    created_ms: int
    objects: int
    bytes_read: int
    seconds: float


def restore_file(
    store: PageStore, db_name: str, path: str, *, generation: str | None = None,
    seq: int | None = None, timestamp: dt.datetime | None = None, parallelism: int = 8,
    progress: Callable[[int], None] | None = None,
    before_replace: Callable[[RestoreResult], None] | None = None,
) -> RestoreResult:
    """Write a replicated state of ``db_name`` to ``path`` (replacing it atomically).

    Without ``generation``/``seq``/``timestamp`` it is the newest commit. Raises
    ReplicaNotFoundError, CorruptObjectError or RestoreError; on error ``path`` is untouched.
    ``before_replace`` is called with the result once the restored file is durable, before it
    takes ``path``'s place (what records the restore goes first: a crash in between leaves
    ``path`` as it was, beside a record of what is about to replace it).
    """
    started = time.monotonic()
    target = resolve_target(store, db_name, generation=generation, seq=seq, timestamp=timestamp)
    tmp = f"{path}{_TMP_INFIX}{secrets.token_hex(4)}"
    tally = _Tally(progress)
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # alive: not to be taken for one a killed restore left
        for leftover in remove_abandoned(path + _TMP_INFIX, _ABANDONED_SECONDS):
            logger.info("removed %s, left by a restore that did not finish", leftover)
        while True:
            try:
                _write_snapshot(store, target.snapshot, fd, parallelism, tally)
                page_size, db_size, digest, created_ms = _apply_commits(
                    store, db_name, target, fd, parallelism, tally
                )
                break
            except (CorruptObjectError, ObjectNotFoundError) as e:
                target = _from_an_older_snapshot(store, target, e)  # or raises e
                os.ftruncate(fd, 0)
        os.ftruncate(fd, db_size * page_size)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    os.close(fd)
    result = RestoreResult(
        db_name, target.generation, target.seq, digest, page_size, db_size, created_ms,
        tally.objects, tally.bytes, 0.0,
    )
    try:
        if before_replace is not None:
            before_replace(result)
        _move_into_place(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    result.seconds = time.monotonic() - started
    logger.info(
        "restored %s generation %s commit %d (%d pages) into %s in %.2fs",
        db_name, target.generation, target.seq, db_size, path, result.seconds,
    )
    return result


def _from_an_older_snapshot(
    store: PageStore, target: Target, error: CorruptObjectError | ObjectNotFoundError
) -> Target:
    """``target`` from the snapshot before its own, if ``error`` is a damaged or missing part
    of its own (the commits after the older one reach the same point); else raise ``error``."""
    snapshot = target.snapshot
    if error.key not in {str(part["key"]) for part in snapshot.parts}:
        raise error
    older = [s for s in snapshot_seqs(store, snapshot.db_name, target.generation)
             if s < snapshot.seq]
    for seq in reversed(older):
        try:
            manifest = read_manifest(store, snapshot.db_name, target.generation, seq)
        except (CorruptObjectError, ObjectNotFoundError):
            continue
        logger.warning(
            "%s: snapshot %d of generation %s cannot be used (%s); restoring from snapshot %d"
            " and the commits after it", snapshot.db_name, snapshot.seq, target.generation,
            error, seq,
        )
        return replace(target, snapshot=manifest)
    raise error


class _Tally:
    """The objects and bytes a restore read (its snapshot's manifest counted), each also
    shown to ``progress``."""

    def __init__(self, progress: Callable[[int], None] | None) -> None:
        self.objects = 1
        self.bytes = 0
        self._progress = progress

    def __call__(self, size: int) -> None:
        self.objects += 1
        self.bytes += size
        if self._progress:
            self._progress(size)


def _write_snapshot(
    store: PageStore, snapshot: fmt.Manifest, fd: int, parallelism: int,
    count: Callable[[int], None],
) -> None:
    """Write every part of ``snapshot`` into ``fd``, several downloading at once."""
    # parts that cannot stream (format version 1, huge zstd windows) are decoded whole: as many
    # at once as the memory budget allows for whole parts
    whole_parts = threading.BoundedSemaphore(
        window_for(parallelism, snapshot.part_pages * snapshot.page_size)
    )
    with ThreadPoolExecutor(max_workers=parallelism) as pool:
        jobs = [
            functools.partial(_fetch_part, store, snapshot, p, fd, whole_parts)
            for p in snapshot.parts
        ]
        for size in in_order(pool, jobs, window_for(parallelism, STREAMED_PART_BYTES)):
            count(size)


def _fetch_part(
    store: PageStore, snapshot: fmt.Manifest, part: dict[str, Any], fd: int,
    whole_parts: threading.BoundedSemaphore,
) -> int:
    """Download one part of ``snapshot`` into ``fd`` at its place; return the bytes received.

    In a download thread, page by page as the object arrives: hashing, decompressing and
    pwrite release the GIL. Its pages are consecutive (checked before the first is written);
    nothing is trusted before the digest is, as the file is thrown away on error. A missing
    part raises ObjectNotFoundError naming the snapshot that lists it.
    """
    key = str(part["key"])
    page_size = snapshot.page_size
    base = (int(part["first"]) - 1) * page_size
    received = 0

    def chunks(stream: Iterator[bytes]) -> Iterator[bytes]:
        nonlocal received
        for chunk in stream:
            received += len(chunk)
            yield chunk

    def begin(head: fmt.BatchHeader, numbers: list[int]) -> None:
        check_part_layout(head, numbers, key, part, page_size)

    def write(offset: int, data: memoryview) -> None:
        pwrite_all(fd, data, base + offset)
        _start_writeback(fd, base + offset, len(data))

    try:
        # closing: a part that fails half-way lets go of its connection at once
        with contextlib.closing(store.get_chunks(key)) as stream:
            digest = decode_stream(chunks(stream), key, begin, write,
                                   max_pages=int(part["pages"]), buffering=lambda: whole_parts)
    except ObjectNotFoundError as e:
        raise ObjectNotFoundError(
            f"{store.location}: {key} does not exist, yet snapshot {snapshot.seq} of generation"
            f" {snapshot.generation} lists it (deleted by hand, or by a gc that ran while that"
            " snapshot was being built)",
            key=key,
        ) from e
    check_part_digest(digest, key, part)
    return received


def _apply_commits(
    store: PageStore, db_name: str, target: Target, fd: int, parallelism: int,
    count: Callable[[int], None],
) -> tuple[int, int, bytes, int]:
    """Write the commits from ``target``'s snapshot to its commit into ``fd``, over the
    snapshot; return the page size, database size (pages), digest and time they end on."""
    snapshot = target.snapshot
    page_size, db_size = snapshot.page_size, snapshot.db_size
    digest, created_ms = snapshot.chain_digest, snapshot.created_ms
    for raw in iter_commits(
        store, db_name, target.generation, snapshot.seq + 1, target.seq, digest, parallelism,
        count,
    ):
        head = raw.head
        if head.page_size != page_size:
            if len(raw.numbers) < head.db_size:
                key = fmt.commit_key(db_name, target.generation, head.seq)
                raise CorruptObjectError(
                    f"{key}: page size changes to {head.page_size} but the commit holds"
                    f" {len(raw.numbers)} of {head.db_size} pages",
                    key=key,
                )
            os.ftruncate(fd, 0)
            page_size = head.page_size
        for first, run in raw.runs():
            pwrite_all(fd, run, (first - 1) * page_size)
        db_size, digest, created_ms = head.db_size, raw.digest, head.created_ms
    return page_size, db_size, digest, created_ms


_TMP_INFIX = ".bottomless-restore-"
#: a temporary file this much older than now, and unlocked, was left by a killed restore
_ABANDONED_SECONDS = 60.0


def _move_into_place(tmp: str, path: str) -> None:
    """Replace ``path`` by the restored file ``tmp``, durably."""
    for suffix in ("-wal", "-shm", "-journal"):  # they belong to the file being replaced
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + suffix)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):  # not Linux
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range to disk now, without waiting (Linux), so that the
    final ``fsync`` has little left to do: the disk works while the next parts download."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


"""Rebuilding a database file from the store, at the newest commit or at any point in time.

A restore picks the newest snapshot at or before the target commit, writes its parts, and
applies the commits after it in order. Every object is verified (checksum, generation,
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
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from bottomless import format as fmt
from bottomless.backends.base import PageStore
from bottomless.errors import (
    CorruptObjectError,
    ObjectNotFoundError,
    ReplicaNotFoundError,
    RestoreError,
)
from bottomless.format.stream import decode_stream
from bottomless.ops.snapshots import (
    check_part_digest,
    check_part_layout,
    iter_commits,
    read_manifest,
    snapshot_seqs,
)
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


@dataclass
class Target:
    """A restorable point: a commit of a generation, and the snapshot to start from."""

    generation: str
    seq: int
    snapshot: fmt.Manifest


def generations(store: PageStore, db_name: str) -> list[str]:
    """Generation ids of ``db_name``, oldest first (including incomplete ones)."""
    children = store.list_children(fmt.generations_prefix(db_name))
    return sorted(c for c in children if fmt.is_generation_id(c))


def complete_generations(store: PageStore, db_name: str) -> list[str]:
    """Generations that have at least one snapshot (incomplete uploads excluded), oldest first."""
    return [g for g in generations(store, db_name) if snapshot_seqs(store, db_name, g)]


def latest_generation(store: PageStore, db_name: str) -> fmt.Manifest | None:
    """Oldest kept snapshot of the newest complete generation of ``db_name``, or ``None``.

    That is snapshot 0 unless gc removed the generation's early history.
    """
    for generation in reversed(generations(store, db_name)):
        seqs = snapshot_seqs(store, db_name, generation)
        if seqs:
            return read_manifest(store, db_name, generation, seqs[0])
        logger.debug("generation %s has no snapshot (incomplete), skipping", generation)
    return None


def commit_numbers(store: PageStore, db_name: str, generation: str) -> list[int]:
    """Sequence numbers of the commits stored for a generation, ascending."""
    return fmt.seqs_of(store.list_keys(fmt.commits_prefix(db_name, generation)))


def commit_header(store: PageStore, db_name: str, generation: str, seq: int) -> fmt.BatchHeader:
    """The header of one commit, with one ranged GET."""
    key = fmt.commit_key(db_name, generation, seq)
    return fmt.decode_header(store.get_range(key, 0, fmt.HEADER_SIZE), key)


def history(store: PageStore, db_name: str, generation: str, *, newest: str) -> list[int]:
    """The commit numbers of a generation, without the successor object that ends a
    superseded one (one ranged GET when ``generation`` is not ``newest``, the newest
    generation, which has none)."""
    return _without_successor(
        store, db_name, generation, commit_numbers(store, db_name, generation), newest
    )


def _without_successor(
    store: PageStore, db_name: str, generation: str, commits: list[int], newest: str
) -> list[int]:
    """``commits`` (listed) without a superseded generation's successor object."""
    if commits and generation != newest:
        with contextlib.suppress(ObjectNotFoundError):
            if commit_header(store, db_name, generation, commits[-1]).kind == fmt.KIND_SUCCESSOR:
                commits.pop()
    return commits


class _Listing:
    """What the store holds of one database, each prefix listed at most once while a target
    is resolved: the generation ids, then for each generation looked at its snapshots and
    commits, from one LIST of the generation's prefix.

    Resolving the newest commit lists twice (generations, then the newest one), where listing
    snapshots and commits apart, and again for each question asked, took five LISTs.
    """

    def __init__(self, store: PageStore, db_name: str) -> None:
        self.store = store
        self.db_name = db_name
        self._generations: list[str] | None = None
        self._seqs: dict[str, tuple[list[int], list[int]]] = {}

    def generations(self) -> list[str]:
        """Generation ids, oldest first (including incomplete ones)."""
        if self._generations is None:
            self._generations = generations(self.store, self.db_name)
        return self._generations

    def _listed(self, generation: str) -> tuple[list[int], list[int]]:
        if generation not in self._seqs:
            keys = self.store.list_keys(fmt.generation_prefix(self.db_name, generation))
            snapshots = fmt.snapshots_prefix(self.db_name, generation)
            commits = fmt.commits_prefix(self.db_name, generation)
            self._seqs[generation] = (
                fmt.seqs_of([k for k in keys if k.startswith(snapshots)]),
                fmt.seqs_of([k for k in keys if k.startswith(commits)]),
            )
        return self._seqs[generation]

    def snapshots(self, generation: str) -> list[int]:
        """Commit numbers at which ``generation`` has a snapshot, ascending."""
        return self._listed(generation)[0]

    def history(self, generation: str, newest: str) -> list[int]:
        """As :func:`history`, from this listing."""
        commits = list(self._listed(generation)[1])
        return _without_successor(self.store, self.db_name, generation, commits, newest)

    def complete(self) -> Iterator[str]:
        """Generations with at least one snapshot, newest first, each listed when reached."""
        return (g for g in reversed(self.generations()) if self.snapshots(g))


Span = tuple[int, int]  # first and last commit of a run of restorable commits


def _restorable(snapshots: list[int], commits: list[int]) -> list[Span]:
    """The restorable commits of a generation, given what is stored: each snapshot and the
    commits that follow it without a gap, as spans ``(first, last)``, ascending, apart from
    each other. Every commit in a span but its first is stored; its first is a snapshot."""
    stored = set(commits)
    spans: list[Span] = []
    for start in snapshots:
        if spans and start <= spans[-1][1]:
            continue  # within the previous span: its commits run on to the same end
        last = start
        while last + 1 in stored:
            last += 1
        spans.append((start, last))
    return spans


def _describe(spans: list[Span]) -> str:
    return ", ".join(f"{first}..{last}" for first, last in spans)


def resolve_target(
    store: PageStore, db_name: str, *, generation: str | None = None, seq: int | None = None,
    timestamp: dt.datetime | None = None,
) -> Target:
    """Find the snapshot and commit a restore should use; raise with the nearest valid points."""
    bucket = _Listing(store, db_name)
    newest = next(bucket.complete(), None)
    if newest is None:
        raise ReplicaNotFoundError(f"{store.location} holds no replica of {db_name!r}")
    if generation is not None and (
        generation not in bucket.generations() or not bucket.snapshots(generation)
    ):
        gens = reversed(list(bucket.complete()))
        raise RestoreError(
            f"{db_name}: no complete generation {generation}; generations: {', '.join(gens)}"
        )
    if timestamp is not None:
        return _target_at(bucket, timestamp, [generation] if generation else bucket.complete(),
                          newest)
    gen = generation or newest
    commits = bucket.history(gen, newest)
    spans = _restorable(bucket.snapshots(gen), commits)
    last = spans[-1][1]
    if seq is None:
        later = [c for c in commits if c > last]
        if later:
            raise RestoreError(
                f"{db_name}: generation {gen} is missing commit {last + 1} while later"
                f" commits exist; the last consistent point is commit {last}; pass"
                f" --commit {last} to restore it"
            )
        return _target(bucket, gen, last)
    if not any(first <= seq <= end for first, end in spans):
        raise RestoreError(
            f"{db_name}: commit {seq} of generation {gen} cannot be restored; restorable"
            f" commits are {_describe(spans)}"
        )
    return _target(bucket, gen, seq)


def _target_at(
    bucket: _Listing, timestamp: dt.datetime, candidates: Iterable[str], newest: str
) -> Target:
    """The last commit at or before ``timestamp`` in the newest of ``candidates`` (complete
    generations, newest first) that has one."""
    store, db_name = bucket.store, bucket.db_name
    wanted_ms = int(timestamp.timestamp() * 1000)
    oldest = newest
    for gen in candidates:
        oldest = gen
        seq = _commit_at(bucket, gen, bucket.history(gen, newest), wanted_ms, timestamp)
        if seq is not None:
            return _target(bucket, gen, seq)
    earliest = read_manifest(store, db_name, oldest, bucket.snapshots(oldest)[0])
    raise RestoreError(
        f"{db_name}: nothing restorable at or before {timestamp.isoformat()}; the earliest"
        f" restorable point is generation {oldest} as of {fmt.iso_time(earliest.created_ms)}"
    )


def _commit_at(
    bucket: _Listing, gen: str, commits: list[int], wanted_ms: int, timestamp: dt.datetime
) -> int | None:
    """The last restorable commit of ``gen`` made at or before ``wanted_ms``, found by
    bisection over commit headers; None if its first restorable point is later. Raises
    RestoreError if ``timestamp`` falls where commits are missing, or a commit is gone."""
    spans = _restorable(bucket.snapshots(gen), commits)
    for index in reversed(range(len(spans))):
        first, last = spans[index]
        if _point_ms(bucket, gen, first, commits) > wanted_ms:
            continue
        low, high = first, last  # last commit with created_ms <= wanted, by bisection
        while low < high:
            middle = (low + high + 1) // 2
            if _commit_ms(bucket, gen, middle, spans) <= wanted_ms:
                low = middle
            else:
                high = middle - 1
        missing = spans[index + 1][0] > last + 1 if index + 1 < len(spans) else (
            bool(commits) and commits[-1] > last
        )
        if low == last and missing:
            raise RestoreError(
                f"{bucket.db_name}: {timestamp.isoformat()} falls after commit {last} of"
                f" generation {gen}, where commit {last + 1} and maybe later ones are missing;"
                f" restorable commits are {_describe(spans)}"
            )
        return low
    return None


def _point_ms(bucket: _Listing, gen: str, seq: int, commits: list[int]) -> int:
    """When the state of commit ``seq`` began, for a span's first point: the commit's time, or
    its snapshot's once the commit is gone (gc deletes the commit an old snapshot stands
    for)."""
    if seq > 0 and seq in commits:
        with contextlib.suppress(ObjectNotFoundError):
            return commit_header(bucket.store, bucket.db_name, gen, seq).created_ms
    return read_manifest(bucket.store, bucket.db_name, gen, seq).created_ms


def _commit_ms(bucket: _Listing, gen: str, seq: int, spans: list[Span]) -> int:
    """The time of a commit a span holds; RestoreError if it is gone since it was listed."""
    try:
        return commit_header(bucket.store, bucket.db_name, gen, seq).created_ms
    except ObjectNotFoundError:
        raise RestoreError(
            f"{bucket.db_name}: commit {seq} of generation {gen} is gone (deleted by hand, or"
            f" by a gc running meanwhile); restorable commits were {_describe(spans)}"
        ) from None


def _target(bucket: _Listing, generation: str, seq: int) -> Target:
    start = max(s for s in bucket.snapshots(generation) if s <= seq)
    manifest = read_manifest(bucket.store, bucket.db_name, generation, start)
    return Target(generation, seq, manifest)


def restore_file(
    store: PageStore, db_name: str, path: str, *, generation: str | None = None,
    seq: int | None = None, timestamp: dt.datetime | None = None, parallelism: int = 8,
    progress: Callable[[int], None] | None = None,
) -> RestoreResult:
    """Write a replicated state of ``db_name`` to ``path`` (replacing it atomically).

    Without ``generation``/``seq``/``timestamp`` it is the newest commit. Raises
    ReplicaNotFoundError, CorruptObjectError or RestoreError; on error ``path`` is untouched.
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
        _write_snapshot(store, target.snapshot, fd, parallelism, tally)
        page_size, db_size, digest, created_ms = _apply_commits(
            store, db_name, target, fd, parallelism, tally
        )
        os.ftruncate(fd, db_size * page_size)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    os.close(fd)
    _move_into_place(tmp, path)
    result = RestoreResult(
        db_name, target.generation, target.seq, digest, page_size, db_size, created_ms,
        tally.objects, tally.bytes, time.monotonic() - started,
    )
    logger.info(
        "restored %s generation %s commit %d (%d pages) into %s in %.2fs",
        db_name, target.generation, target.seq, db_size, path, result.seconds,
    )
    return result


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


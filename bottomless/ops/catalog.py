"""Looking into a bucket: databases, generations, commits, and verifying what is there."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import apsw

from bottomless import format as fmt
from bottomless.backends.base import PageStore
from bottomless.errors import BottomlessError, ObjectNotFoundError, ReplicaNotFoundError
from bottomless.ops.restore import restore_file
from bottomless.ops.snapshots import check_part, read_manifest, snapshot_seqs
from bottomless.ops.targets import commit_header, commit_numbers, generations
from bottomless.ops.transfer import in_order, window_for

#: fetches one object for verify: its key and bytes, or ``None`` when it is gone
Fetch = Callable[[str], tuple[str, bytes | None]]


def list_databases(store: PageStore) -> list[str]:
    """Names of the databases that have at least one generation in the store."""
    names = []
    for child in store.list_children(""):
        try:
            fmt.validate_db_name(child)
        except BottomlessError:
            continue
        if store.list_children(fmt.generations_prefix(child)):
            names.append(child)
    return names


@dataclass
class GenerationInfo:
    """One generation, as ``bottomless ls DB_NAME`` shows it.

    Attributes:
        generation: Its id (sorts in time order).
        complete: Whether it has a snapshot, so can be restored (else an interrupted upload).
        started: When its first kept snapshot was taken (ISO 8601 UTC).
        reason: Why that snapshot was taken (for example ``branch`` or ``compaction``).
        base: The generation and commit it branched from, if it did.
        snapshot_bytes: Size of the database at its newest snapshot.
        snapshots: Commit numbers of its snapshots.
        commits: How many commits it holds; ``first_commit`` / ``last_commit`` are their
            numbers, ``first_commit_time`` / ``last_commit_time`` their times.
    """

    generation: str
    complete: bool
    started: str | None = None
    reason: str | None = None
    base: dict[str, Any] | None = None
    snapshot_bytes: int = 0
    snapshots: list[int] = field(default_factory=list)
    commits: int = 0
    first_commit: int | None = None
    last_commit: int | None = None
    first_commit_time: str | None = None
    last_commit_time: str | None = None


def describe_generations(store: PageStore, db_name: str) -> list[GenerationInfo]:
    """Every generation of ``db_name``, oldest first."""
    result = []
    for generation in generations(store, db_name):
        snapshots = snapshot_seqs(store, db_name, generation)
        if not snapshots and not store.list_keys(fmt.generation_prefix(db_name, generation)):
            continue  # an emptied prefix (some stores keep listing it)
        info = GenerationInfo(generation, complete=bool(snapshots))
        if snapshots:
            first = read_manifest(store, db_name, generation, snapshots[0])
            newest = read_manifest(store, db_name, generation, snapshots[-1])
            info.started = fmt.iso_time(first.created_ms)
            info.reason, info.base = first.reason, first.base
            info.snapshot_bytes = newest.db_size * newest.page_size
            info.snapshots = snapshots
        commits = commit_numbers(store, db_name, generation)
        last = commit_header(store, db_name, generation, commits[-1]) if commits else None
        if last is not None and last.kind == fmt.KIND_SUCCESSOR:
            commits.pop()  # it ends the generation: not a commit
            last = commit_header(store, db_name, generation, commits[-1]) if commits else None
        info.commits = len(commits)
        if commits and last is not None:
            info.first_commit, info.last_commit = commits[0], commits[-1]
            info.first_commit_time = fmt.iso_time(
                commit_header(store, db_name, generation, commits[0]).created_ms
            )
            info.last_commit_time = fmt.iso_time(last.created_ms)
        result.append(info)
    return result


@dataclass
class CommitInfo:
    """One commit, as ``bottomless ls DB_NAME --generation G`` shows it.

    Attributes:
        seq: Its number in the generation.
        time: When it was committed (ISO 8601 UTC).
        pages: Pages it wrote.
        bytes: Size of its object.
        db_pages: Size of the database after it, in pages.
    """

    seq: int
    time: str | None
    pages: int
    bytes: int
    db_pages: int


def describe_commits(
    store: PageStore, db_name: str, generation: str, parallelism: int = 8
) -> list[CommitInfo]:
    """Every stored commit of a generation, in order (not the successor object that ends a
    superseded generation: it names the next generation, and holds no state to restore).
    Raises ReplicaNotFoundError, naming the generations there are, for one that is not."""
    known = generations(store, db_name)
    if generation not in known:
        raise ReplicaNotFoundError(
            f"{db_name} has no generation {generation} at {store.location}; generations:"
            f" {', '.join(reversed(known)) or 'none'}"
        )
    seqs = commit_numbers(store, db_name, generation)

    def one(seq: int) -> CommitInfo | None:
        key = fmt.commit_key(db_name, generation, seq)
        data = store.get(key)
        head = fmt.decode_header(data, key)
        if head.kind == fmt.KIND_SUCCESSOR:
            return None
        created = fmt.iso_time(head.created_ms)
        return CommitInfo(seq, created, head.page_count, len(data), head.db_size)

    with ThreadPoolExecutor(max_workers=parallelism) as pool:
        found = in_order(pool, [functools.partial(one, s) for s in seqs], parallelism)
        return [info for info in found if info is not None]


@dataclass
class VerifyReport:
    """What ``verify`` read, what it found wrong, and how long a restore took.

    Attributes:
        objects: Objects read; ``bytes`` their size.
        problems: One line per fault, naming the object and what was expected.
        generation: The generation restored; ``seq`` the commit.
        restore_seconds: How long the restore took (the recovery time).
        integrity: ``PRAGMA integrity_check`` of the restored database (``ok``).
    """

    db_name: str
    objects: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    generation: str | None = None
    seq: int | None = None
    restore_seconds: float | None = None
    integrity: str | None = None

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems and self.integrity == "ok"


def verify(
    store: PageStore, db_name: str, *, generation: str | None = None, seq: int | None = None,
    timestamp: dt.datetime | None = None, parallelism: int = 8,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Check every object of ``db_name`` (checksums, chains), then restore and integrity-check.

    Problems are collected, not raised: the report names each faulty object and what was
    expected. Store failures (unreachable endpoint) still raise StoreError.
    """
    report = VerifyReport(db_name)
    gens = [generation] if generation else generations(store, db_name)
    counted = threading.Lock()  # fetch runs in the pool's threads

    def fetch(key: str) -> tuple[str, bytes | None]:
        try:
            data = store.get(key)
        except ObjectNotFoundError:
            return key, None
        with counted:
            report.objects += 1
            report.bytes += len(data)
            if progress:
                progress(len(data))
        return key, data

    with ThreadPoolExecutor(max_workers=parallelism) as pool:
        for gen in gens:
            _verify_generation(store, db_name, gen, pool, fetch, parallelism, report)
    started = time.monotonic()
    handle, path = tempfile.mkstemp(prefix="bottomless-verify-", suffix=".db")
    os.close(handle)
    try:
        result = restore_file(
            store, db_name, path, generation=generation, seq=seq, timestamp=timestamp,
            parallelism=parallelism,
        )
        report.restore_seconds = time.monotonic() - started
        report.generation, report.seq = result.generation, result.seq
        db = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            lines = [str(r[0]) for r in db.execute("PRAGMA integrity_check")]
        finally:
            db.close()
        report.integrity = "ok" if lines == ["ok"] else "; ".join(lines[:10])
        if report.integrity != "ok":
            report.problems.append(f"integrity_check of the restored database: {report.integrity}")
    except BottomlessError as e:
        report.problems.append(f"restore failed: {e}")
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + suffix)
    return report


def _verify_generation(
    store: PageStore, db_name: str, generation: str, pool: ThreadPoolExecutor,
    fetch: Fetch, parallelism: int, report: VerifyReport,
) -> None:
    snapshots = snapshot_seqs(store, db_name, generation)
    if not snapshots:
        # an interrupted upload, parts kept for a branch, or an emptied prefix: nothing here is
        # a restorable point, so nothing here can be wrong (gc removes what is not needed)
        return
    manifests = _verify_snapshots(store, db_name, generation, snapshots, pool, fetch,
                                  parallelism, report)
    _verify_commits(store, db_name, generation, snapshots[0], manifests, pool, fetch,
                    parallelism, report)


def _verify_snapshots(
    store: PageStore, db_name: str, generation: str, snapshots: list[int],
    pool: ThreadPoolExecutor, fetch: Fetch, parallelism: int, report: VerifyReport,
) -> dict[int, fmt.Manifest]:
    """Check the manifests of a generation's snapshots and every part they list; return the
    manifests that could be read."""
    manifests: dict[int, fmt.Manifest] = {}
    for at in snapshots:
        key = fmt.snapshot_key(db_name, generation, at)
        try:
            manifests[at] = read_manifest(store, db_name, generation, at)
            report.objects += 1
        except BottomlessError as e:
            report.problems.append(str(e) if key in str(e) else f"{key}: {e}")
    for manifest in manifests.values():
        parts = manifest.parts
        jobs = [functools.partial(fetch, str(p["key"])) for p in parts]
        window = window_for(parallelism, manifest.part_pages * manifest.page_size)
        for part, (key, data) in zip(parts, in_order(pool, jobs, window), strict=True):
            if data is None:
                report.problems.append(f"{key}: missing (listed by snapshot {manifest.seq})")
                continue
            try:
                check_part(fmt.decode_raw(data, key), key, part, manifest.page_size)
            except BottomlessError as e:
                report.problems.append(str(e))
    return manifests


def _verify_commits(
    store: PageStore, db_name: str, generation: str, start: int,
    manifests: dict[int, fmt.Manifest], pool: ThreadPoolExecutor, fetch: Fetch,
    parallelism: int, report: VerifyReport,
) -> None:
    """Check the commits after snapshot ``start``: each object, their numbering and the chain,
    and the commit digest each later snapshot records."""
    commits = commit_numbers(store, db_name, generation)
    prev = manifests[start].chain_digest if start in manifests else None
    expected = start + 1
    jobs = [
        functools.partial(fetch, fmt.commit_key(db_name, generation, s))
        for s in commits if s > start
    ]
    for key, data in in_order(pool, jobs, parallelism):
        number = fmt.seq_from_key(key)
        if number is None or data is None:
            # listed, then gone before it was read: a gc running at the same time
            report.problems.append(f"{key}: missing (listed, then deleted before it was read)")
            prev = None
            expected = (number or expected) + 1
            continue
        seq = number
        if seq != expected:
            # a later snapshot that the commits after the gap follow restores from there on
            later = min((at for at in manifests if at >= seq - 1), default=None)
            lost = (f"points after {expected - 1} are not restorable" if later is None else
                    f"points {expected}..{later - 1} are not restorable (the snapshot at"
                    f" {later} restores the later ones)")
            report.problems.append(
                f"{fmt.commit_key(db_name, generation, expected)}: missing; commits"
                f" {expected}..{seq - 1} are gone, so {lost}"
            )
            prev = None
        expected = seq + 1
        try:
            batch = fmt.decode_batch(data, key)
        except BottomlessError as e:
            report.problems.append(str(e))
            prev = None
            continue
        _check_commit(batch, key, seq, generation, prev, report)
        snapshot = manifests.get(seq)
        if snapshot is not None and snapshot.commit_digest not in (None, batch.digest.hex()):
            report.problems.append(
                f"{fmt.snapshot_key(db_name, generation, seq)}: records commit digest"
                f" {str(snapshot.commit_digest)[:16]}…, the commit is {batch.digest.hex()[:16]}…"
            )
        prev = batch.digest


def _check_commit(
    batch: fmt.PageBatch, key: str, seq: int, generation: str, prev: bytes | None,
    report: VerifyReport,
) -> None:
    """Report a commit that is not commit ``seq`` of ``generation`` or does not follow ``prev``."""
    # the successor object that ends a superseded generation names the next generation
    ends = batch.kind == fmt.KIND_SUCCESSOR and batch.seq == seq
    if not ends and (
        batch.seq != seq or batch.generation != generation or batch.kind != fmt.KIND_COMMIT
    ):
        report.problems.append(
            f"{key}: object says generation {batch.generation} commit {batch.seq}"
        )
    elif prev is not None and batch.prev != prev:
        report.problems.append(
            f"{key}: breaks the chain: expected prev {prev.hex()[:16]}…, found"
            f" {batch.prev.hex()[:16]}…"
        )

"""Rebuilding a database file from the store: newest snapshot plus every commit after it.

Every object is verified (checksum, generation, sequence, chain) before a byte of it is
written, and the result only replaces the target path, by a rename, once it is complete.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from bottomless import format as fmt
from bottomless.errors import (
    CorruptObjectError,
    ObjectNotFoundError,
    ReplicaNotFoundError,
    RestoreError,
)
from bottomless.pagestore import PageStore

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class RestoreResult:
    """Where a restore landed."""

    db_name: str
    generation: str
    seq: int
    digest: bytes
    page_size: int
    db_size: int
    objects: int
    bytes_read: int
    seconds: float


def generations(store: PageStore, db_name: str) -> list[str]:
    """Generation ids of ``db_name``, oldest first (including incomplete ones)."""
    children = store.list_children(fmt.generations_prefix(db_name))
    return sorted(c for c in children if fmt.is_generation_id(c))


def latest_generation(store: PageStore, db_name: str) -> fmt.Manifest | None:
    """Manifest of the newest complete generation of ``db_name``, or ``None``."""
    for generation in reversed(generations(store, db_name)):
        key = fmt.manifest_key(db_name, generation)
        try:
            data = store.get(key)
        except ObjectNotFoundError:
            logger.debug("generation %s has no manifest (incomplete), skipping", generation)
            continue
        manifest = fmt.decode_manifest(data, key)
        if manifest.generation != generation or manifest.db_name != db_name:
            raise CorruptObjectError(
                f"{key}: manifest describes {manifest.db_name}/{manifest.generation}, not"
                f" {db_name}/{generation}"
            )
        return manifest
    return None


def commit_numbers(store: PageStore, db_name: str, generation: str) -> list[int]:
    """Sequence numbers of the commits stored for a generation, ascending."""
    keys = store.list_keys(fmt.commits_prefix(db_name, generation))
    return sorted(n for n in (fmt.seq_from_commit_key(k) for k in keys) if n is not None)


def _prefetch(
    pool: ThreadPoolExecutor, jobs: Sequence[Callable[[], T]], window: int
) -> Iterator[T]:
    """Run ``jobs`` on ``pool`` with at most ``window`` in flight; yield results in order."""
    queue: deque[Future[T]] = deque()
    pending = iter(jobs)
    for job in pending:
        queue.append(pool.submit(job))
        if len(queue) >= window:
            break
    while queue:
        result = queue.popleft().result()
        for job in pending:
            queue.append(pool.submit(job))
            break
        yield result


def restore_file(
    store: PageStore, db_name: str, path: str, *, parallelism: int = 8
) -> RestoreResult:
    """Write the newest replicated state of ``db_name`` to ``path`` (replacing it atomically).

    Raises ReplicaNotFoundError if there is no replica, CorruptObjectError if an object fails
    verification, and RestoreError if the commit chain has a gap.
    """
    started = time.monotonic()
    manifest = latest_generation(store, db_name)
    if manifest is None:
        raise ReplicaNotFoundError(f"{store.location} holds no replica of {db_name!r}")
    generation = manifest.generation
    seqs = commit_numbers(store, db_name, generation)
    expected = list(range(1, len(seqs) + 1))
    if seqs != expected:
        missing = next(n for n, s in zip(expected, seqs, strict=False) if n != s)
        raise RestoreError(
            f"{db_name}: generation {generation} is missing commit {missing} while later"
            f" commits exist; the last consistent point is commit {missing - 1}"
        )
    tmp = f"{path}.bottomless-restore-{secrets.token_hex(4)}"
    stats = {"objects": 1, "bytes": 0}

    def fetch(key: str) -> tuple[str, bytes]:
        data = store.get(key)
        stats["objects"] += 1
        stats["bytes"] += len(data)
        return key, data

    page_size, db_size, prev, last_seq = manifest.page_size, manifest.db_size, manifest.digest, 0
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with ThreadPoolExecutor(max_workers=parallelism) as pool:
            part_jobs = [
                functools.partial(fetch, fmt.snapshot_key(db_name, generation, i))
                for i in range(len(manifest.parts))
            ]
            for number, (key, data) in enumerate(_prefetch(pool, part_jobs, parallelism)):
                batch = fmt.decode_batch(data, key)
                want = bytes.fromhex(manifest.parts[number]["digest"])
                if batch.digest != want:
                    raise CorruptObjectError(
                        f"{key}: digest {batch.digest.hex()[:16]}… does not match the manifest's"
                        f" {want.hex()[:16]}…"
                    )
                _check(batch, key, generation, fmt.KIND_SNAPSHOT, number)
                for pgno, page in batch.pages.items():
                    os.pwrite(fd, page, (pgno - 1) * page_size)
            commit_jobs = [
                functools.partial(fetch, fmt.commit_key(db_name, generation, s)) for s in seqs
            ]
            for seq, (key, data) in zip(seqs, _prefetch(pool, commit_jobs, parallelism),
                                        strict=True):
                batch = fmt.decode_batch(data, key)
                _check(batch, key, generation, fmt.KIND_COMMIT, seq)
                if batch.prev != prev:
                    raise CorruptObjectError(
                        f"{key}: breaks the commit chain (it follows {batch.prev.hex()[:16]}…,"
                        f" the previous object is {prev.hex()[:16]}…); the last consistent point"
                        f" is commit {seq - 1} of generation {generation}"
                    )
                if batch.page_size != page_size:
                    if len(batch.pages) < batch.db_size:
                        raise CorruptObjectError(
                            f"{key}: page size changes to {batch.page_size} but the commit holds"
                            f" {len(batch.pages)} of {batch.db_size} pages"
                        )
                    os.ftruncate(fd, 0)
                    page_size = batch.page_size
                for pgno, page in batch.pages.items():
                    os.pwrite(fd, page, (pgno - 1) * page_size)
                db_size, prev, last_seq = batch.db_size, batch.digest, seq
        os.ftruncate(fd, db_size * page_size)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))
    result = RestoreResult(
        db_name, generation, last_seq, prev, page_size, db_size, stats["objects"],
        stats["bytes"], time.monotonic() - started,
    )
    logger.info(
        "restored %s generation %s up to commit %d (%d pages) into %s in %.2fs",
        db_name, generation, last_seq, db_size, path, result.seconds,
    )
    return result


def _check(batch: fmt.PageBatch, key: str, generation: str, kind: int, seq: int) -> None:
    if batch.generation != generation or batch.kind != kind or batch.seq != seq:
        names = {fmt.KIND_COMMIT: "commit", fmt.KIND_SNAPSHOT: "snapshot part"}
        raise CorruptObjectError(
            f"{key}: object says generation {batch.generation} {names.get(batch.kind)}"
            f" {batch.seq}, expected generation {generation} {names[kind]} {seq}: it was"
            " copied from elsewhere"
        )


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

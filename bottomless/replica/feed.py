"""What a follower reads from the bucket: the next commits, new generations, restores.

Following costs one GET per poll while nothing happens: ``commits/<N+1>`` answers 404 until
the writer uploads it (see "Following the bucket without listing" in ``docs/format.md``).
A writer that starts a new generation puts a successor object at that very key of the old
one (:func:`successor_of`). As that is best effort, listing still looks for a newer
generation (:meth:`Feed.newer_generation`, at most every ``generation_check_interval``
seconds, and only after a 404) and, more rarely, tells whether gc deleted the commits the
follower needs next.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

from bottomless import format as fmt
from bottomless.errors import CorruptObjectError, ObjectNotFoundError
from bottomless.ops.restore import RestoreResult, restore_file
from bottomless.ops.snapshots import iter_commits, read_manifest, snapshot_seqs
from bottomless.ops.targets import generations
from bottomless.replica.counting import CountingStore
from bottomless.replica.local import EMPTY_PAGE_SIZE, write_empty_database

logger = logging.getLogger(__name__)


@dataclass
class Restored:
    """A state of the database restored into a temporary file beside the replica."""

    path: str
    result: RestoreResult

    def discard(self) -> None:
        """Remove the temporary file."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class Feed:
    """The commits and generations of one database in one store, for one follower."""

    def __init__(self, store: CountingStore, db_name: str, *, max_window: int,
                 parallelism: int) -> None:
        self.store = store
        self.db_name = db_name
        self.max_window = max(1, max_window)
        self.parallelism = parallelism
        self._pool: ThreadPoolExecutor | None = None
        self._streak = 0  # consecutive fetch rounds that found every commit they asked for

    def window(self) -> int:
        """How many commits the next round asks for at once: one while the follower keeps up
        (an idle poll is one GET), doubling while every round finds all it asked for."""
        return 1 if self._streak < 2 else min(2 ** (self._streak - 1), self.max_window)

    def fetch(self, generation: str, first: int) -> list[fmt.RawBatch]:
        """Commits ``first, first + 1, …`` of ``generation`` that exist now, in order (empty
        when ``first`` does not exist yet). Each is verified (checksum, format) as it is
        decoded; a defect raises CorruptObjectError naming the key."""
        window = self.window()
        if window == 1:
            raw = self._get(generation, first)
            found = [raw] if raw is not None else []
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.parallelism,
                                                thread_name_prefix="bottomless-fetch")
            futures: list[Future[fmt.RawBatch | None]] = [
                self._pool.submit(self._get, generation, seq)
                for seq in range(first, first + window)
            ]
            found = []
            for future in futures:
                raw = future.result()  # in order: nothing past the first 404 is used
                if raw is None:
                    break
                found.append(raw)
            for future in futures[len(found) + 1:]:
                future.cancel()
        self._streak = self._streak + 1 if found and len(found) == window else 0
        return found

    def _get(self, generation: str, seq: int) -> fmt.RawBatch | None:
        key = fmt.commit_key(self.db_name, generation, seq)
        try:
            data = self.store.get(key)
        except ObjectNotFoundError:
            return None
        return fmt.decode_raw(data, key)

    def commits(self, generation: str, first: int, last: int,
                prev: bytes) -> Iterator[fmt.RawBatch]:
        """Commits ``first..last`` of ``generation``, chained from ``prev`` (RestoreError if
        one is missing, CorruptObjectError if one is bad)."""
        return iter_commits(self.store, self.db_name, generation, first, last, prev,
                            self.parallelism)

    def newer_generation(self, current: str) -> str | None:
        """The newest complete generation, if it is newer than ``current``; else ``None``.

        The one place that looks for a new generation: one LIST of the generation ids, plus
        one LIST of snapshots for each newer id until one is complete (a generation exists
        once its snapshot 0 does). Generation ids sort by creation time.
        """
        for candidate in reversed(generations(self.store, self.db_name)):
            if candidate <= current:
                return None
            if snapshot_seqs(self.store, self.db_name, candidate):
                return candidate
        return None

    def branched_at(self, generation: str, parent: str) -> int | None:
        """The commit of ``parent`` that ``generation`` branched from, if it is a branch of it
        (the writer reopened after a crash and went on from the last commit its local file
        holds: later commits of ``parent`` are orphans it never committed). One GET."""
        try:
            base = read_manifest(self.store, self.db_name, generation, 0).base
        except ObjectNotFoundError:
            return None  # gc removed it: a newer snapshot stands for the start
        if not base or base.get("generation") != parent:
            return None
        return int(base["seq"])

    def commits_gone(self, generation: str, seq: int) -> bool:
        """Whether commit ``seq + 1`` of ``generation`` was deleted (by gc): a later snapshot
        exists, so that commit was made. One LIST."""
        return any(s > seq for s in snapshot_seqs(self.store, self.db_name, generation))

    def restore(self, beside: str, *, generation: str | None = None,
                seq: int | None = None) -> Restored:
        """Restore a state (default: the newest commit of the newest generation) into a new
        temporary file beside ``beside``."""
        path = f"{beside}.bottomless-replica-restore-{secrets.token_hex(4)}"
        result = restore_file(self.store, self.db_name, path, generation=generation, seq=seq,
                              parallelism=self.parallelism)
        if result.db_size == 0:
            # a database the writer has not written yet: readers see it as a database with
            # no tables, which a file of no pages cannot be in WAL mode
            result = replace(result, page_size=EMPTY_PAGE_SIZE, db_size=1)
            write_empty_database(path, EMPTY_PAGE_SIZE)
        return Restored(path, result)

    def close(self) -> None:
        """Stop the fetch threads and release the store."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self.store.close()


def successor_of(raw: fmt.RawBatch, key: str, generation: str, seq: int,
                 prev: bytes) -> str | None:
    """The generation that continues ``generation`` if ``raw`` is the successor object that
    ends it at ``seq`` (see "Following the bucket without listing" in ``docs/format.md``);
    ``None`` for any other object. Raises CorruptObjectError for a successor object that does
    not follow the object whose digest is ``prev``."""
    head = raw.head
    if head.kind != fmt.KIND_SUCCESSOR:
        return None
    if head.seq != seq or head.prev != prev or not fmt.is_generation_id(head.generation):
        raise CorruptObjectError(
            f"{key}: a successor object that does not end generation {generation} at"
            f" commit {seq - 1}", key=key)
    return head.generation


def check_next(raw: fmt.RawBatch, key: str, generation: str, seq: int, prev: bytes) -> None:
    """Raise CorruptObjectError unless ``raw`` is commit ``seq`` of ``generation`` and follows
    the object whose digest is ``prev``."""
    head = raw.head
    if head.generation != generation or head.kind != fmt.KIND_COMMIT or head.seq != seq:
        raise CorruptObjectError(
            f"{key}: object says generation {head.generation} commit {head.seq}, expected"
            f" {generation} commit {seq}: it was copied from elsewhere", key=key,
        )
    if head.prev != prev:
        raise CorruptObjectError(
            f"{key}: breaks the commit chain (it follows {head.prev.hex()[:16]}…, the replica"
            f" holds {prev.hex()[:16]}…): nothing after commit {seq - 1} is applied", key=key,
        )

"""Starting generations: a new lineage from the local file (or an empty database), or a
branch at a position of the bucket's own history."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from bottomless import format as fmt
from bottomless import log
from bottomless.backends.base import PageStore
from bottomless.engine.snapshot_policy import SnapshotPolicy
from bottomless.engine.stats import Stats
from bottomless.errors import BottomlessError, ObjectExistsError
from bottomless.local.files import LocalImage, LocalState
from bottomless.ops.snapshots import (
    PageSource,
    compact,
    read_manifest,
    snapshot_seqs,
    upload_snapshot,
)
from bottomless.ops.targets import commit_numbers, generations
from bottomless.settings import Settings

#: makes a byte-count callback for a long upload, given a label and the total bytes (the CLI
#: shows a progress bar with it); it may return ``None``: no progress reporting
ProgressFactory = Callable[[str, int], Callable[[int], None] | None]


class _Empty:
    """The page source of a database with no pages yet."""

    page_size = 0
    db_size = 0

    def page(self, pgno: int) -> bytes:
        raise IndexError(pgno)


class Generations:
    """Uploads new generations of one database. It returns their states; recording one in
    the state file is the caller's business (at the commit point, when a commit is in it)."""

    def __init__(
        self, store: PageStore, db_name: str, settings: Settings, stats: Stats,
        policy: SnapshotPolicy,
    ) -> None:
        self.store = store
        self.db_name = db_name
        self.settings = settings
        self.stats = stats
        self.policy = policy
        self.log = log.for_database(__name__, db_name)
        self.progress: ProgressFactory | None = None

    def new_id(self) -> tuple[str, str | None]:
        """A generation id greater than every one in the bucket, and the newest complete one
        there (the one the new generation follows; ``None`` if there is none).

        Incomplete generations (a start interrupted before its snapshot was written) are
        passed over for the second: ending one of them would leave the generation that holds
        the last state without its successor object.
        """
        known = generations(self.store, self.db_name)
        latest = known[-1] if known else ""
        generation = fmt.new_generation_id()
        while generation <= latest:  # a clock behind the bucket's newest generation
            time.sleep(0.002)
            generation = fmt.new_generation_id()
        previous = next(
            (g for g in reversed(known) if snapshot_seqs(self.store, self.db_name, g)), None
        )
        return generation, previous

    def _end(self, previous: str | None, successor: str, writer: bytes) -> None:
        """Put the successor object after the last commit of ``previous``, so that a replica
        polling that generation's next commit learns of ``successor`` with no extra request.

        Best effort: replicas also look for new generations by listing, now and then.
        """
        if previous is None:
            return
        try:
            for _ in range(3):  # a writer still on ``previous`` may append meanwhile
                commits = commit_numbers(self.store, self.db_name, previous)
                if commits:
                    key = fmt.commit_key(self.db_name, previous, commits[-1])
                    last = fmt.decode_raw(self.store.get(key), key)
                    if last.head.kind == fmt.KIND_SUCCESSOR:
                        return  # ended already
                    seq, prev = commits[-1], last.digest
                    page_size, db_size = last.head.page_size, last.head.db_size
                else:
                    seq = max(snapshot_seqs(self.store, self.db_name, previous), default=0)
                    base = read_manifest(self.store, self.db_name, previous, seq)
                    prev, page_size, db_size = base.chain_digest, base.page_size, base.db_size
                data = fmt.encode_successor(
                    successor, seq=seq + 1, prev=prev, writer=writer,
                    page_size=page_size or 4096, db_size=db_size,
                )
                try:
                    self.store.put_if_absent(fmt.commit_key(self.db_name, previous, seq + 1),
                                             data)
                except ObjectExistsError:
                    continue
                self.stats.count_object(data)
                return
        except BottomlessError as e:
            self.log.warning("could not mark the end of generation %s (replicas find %s by"
                             " listing instead): %s", previous, successor, e)

    def start(self, image: LocalImage | None, reason: str, *, writer: bytes) -> LocalState:
        """Upload ``image`` (or an empty database) as a new generation; return its state."""
        generation, previous = self.new_id()
        started = time.monotonic()
        source: PageSource = image if image is not None else _Empty()
        size = source.db_size * source.page_size
        manifest = upload_snapshot(
            self.store, db_name=self.db_name, generation=generation, seq=0, source=source,
            part_mb=self.settings.snapshot_part_mb, parallelism=self.settings.parallelism,
            compression=self.settings.compression, writer=writer.hex(), reason=reason,
            counter=self.stats.count_object,
            progress=self.progress(f"uploading {self.db_name}", size)
            if self.progress and size else None,
        )
        self.stats.generation_started(generation)
        self.policy.reset()
        self._end(previous, generation, writer)
        self.log.info(
            "started generation %s (%s, %d pages, %d parts) in %.2fs", generation, reason,
            source.db_size, len(manifest.parts), time.monotonic() - started,
        )
        return LocalState(
            self.db_name, generation, 0, manifest.digest.hex(), source.page_size, writer.hex(),
            self.store.location,
        )

    def branch(self, state: LocalState) -> LocalState:
        """Start a generation at ``state``'s position of the bucket (leaving what follows it
        behind as an orphan); return the new generation's state."""
        generation, previous = self.new_id()
        manifest = compact(
            self.store, db_name=self.db_name, generation=state.generation, seq=state.seq,
            into=generation, reason="branch", writer=state.writer,
            compression=self.settings.compression, parallelism=self.settings.parallelism,
            part_mb=self.settings.snapshot_part_mb, counter=self.stats.count_object,
        )
        self.stats.generation_started(generation)
        self._end(previous, generation, state.writer_bytes)
        return replace(state, generation=generation, seq=0, digest=manifest.digest.hex())

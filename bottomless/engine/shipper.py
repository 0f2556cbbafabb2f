"""The asynchronous half of the replicator: back-pressure, the uploader's work, wait_durable.

Mixed into :class:`bottomless.engine.replicator.Replicator`; see
:mod:`bottomless.engine.spool` for the spool itself and why it exists.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from bottomless import format as fmt
from bottomless.engine.lease import WriterLease
from bottomless.engine.spool import Intent, Spool, Uploader
from bottomless.errors import (
    CorruptObjectError,
    DurabilityTimeoutError,
    ObjectExistsError,
    ReplicaConflictError,
    StoreError,
)
from bottomless.local.files import LocalImage, LocalState, read_state, sync_state, write_state

if TYPE_CHECKING:
    from bottomless.backends.base import PageStore
    from bottomless.engine.replicator import Stats
    from bottomless.settings import Settings

logger = logging.getLogger(__name__)

#: an uploaded async object merges at most this many bytes of spooled pages
GROUP_BYTES = 16 * 1024 * 1024

#: builds the local content a new generation starts from
ImageSource = Callable[[], LocalImage]


@dataclass(frozen=True)
class _ForkFrom:
    """How an orphan in the way may be settled (SQLite's write lock is held): a new generation
    from the local content ``image`` builds. ``in_commit``: that content includes a commit not
    yet at its commit point, so the new state is recorded only when it gets there."""

    image: ImageSource
    in_commit: bool


class _OrphanInTheWayError(ReplicaConflictError):
    """An orphan of this writer holds the next position; settling it needs SQLite's write
    lock, which the caller does not hold."""


class AsyncReplication:
    """Async-durability behaviour of a replicator (state lives on the Replicator)."""

    db_path: str
    db_name: str
    settings: Settings
    store: PageStore
    stats: Stats
    state: LocalState | None
    spool: Spool
    _uploader: Uploader | None
    _uploaded: threading.Condition
    _room_checked: float
    _since_snapshot: tuple[int, int]
    lease: WriterLease | None
    _write_lock: Callable[[], contextlib.AbstractContextManager[None]]
    #: set while this thread holds SQLite's write lock outside a commit (during open)
    _holds_write_lock: bool
    #: the generation started over an orphan (read by spool_shipped_first)
    _forked: LocalState | None

    def _count(self, data: bytes) -> None:
        raise NotImplementedError

    def _start_generation(
        self, image: LocalImage | None, reason: str, *, writer: bytes, record: bool = True
    ) -> LocalState:
        raise NotImplementedError

    def _maybe_snapshot(self, state: LocalState) -> None:
        raise NotImplementedError

    def _wait_for_room(self) -> None:
        """Back-pressure: hold a commit while the spool is too old or too big."""
        now = time.monotonic()
        if now - self._room_checked < 0.01:
            return  # checked a moment ago: the bound is in seconds, not microseconds
        self._room_checked = now
        limit = self.settings.max_lag
        budget = limit + self.settings.timeout * (self.settings.max_retries + 1)
        deadline = now + budget
        max_bytes = self.settings.max_spool_mb * 1024 * 1024
        # start shipping before the bound, so commits rarely have to wait at all
        while self.spool.oldest_age() > limit * 0.8 or self.spool.size_bytes() > max_bytes:
            if self._uploader is not None:
                self._uploader.hurry.set()
                self._uploader.wake.set()
            if self.spool.oldest_age() <= limit and self.spool.size_bytes() <= max_bytes:
                return
            if time.monotonic() > deadline:
                raise StoreError(
                    f"{self.db_name}: replication is {self.spool.oldest_age():.1f}s behind"
                    f" (max_lag {limit}s) and the store is not catching up"
                    f" ({self.stats.last_error or 'no error recorded'}); commit refused"
                )
            with self._uploaded:
                self._uploaded.wait(0.02)

    def _nothing_spooled(self) -> bool:
        """Whether every spooled commit is uploaded (a damaged spool counts as not)."""
        try:
            return not self.spool.entries() and self.spool.read_intent() is None
        except CorruptObjectError:
            return False

    def _make_durable(self) -> None:
        """fsync the spool and the state file (before a session is recorded as ended)."""
        self.spool.sync()
        sync_state(self.db_path)

    def _drain_guarded(self) -> bool:
        try:
            return self.drain_once()
        except Exception as e:  # noqa: BLE001 - the uploader thread must survive store errors
            self.stats.last_error = f"async upload failed: {e}"
            self.stats.last_error_time = time.time()
            logger.warning("%s: async upload failed, will retry: %s", self.db_name, e)
            time.sleep(min(1.0, self.settings.max_lag / 2))
            return False

    def drain_once(self, state_required: bool = False) -> bool:
        """Upload the oldest spooled entries as one commit object; False if there was nothing.

        Raises StoreError or ReplicaConflictError if the upload fails (entries stay spooled).
        """
        with self.spool.upload_lock() as mine:
            if not mine:
                return False
            try:
                fork = _ForkFrom(self._committed_image, False) if self._holds_write_lock else None
                return self._drain_locked(state_required, fork)
            except _OrphanInTheWayError:
                pass
        # settled under SQLite's write lock, so that no commit lands meanwhile; it is taken
        # before the upload lock, in the order a sync commit takes them
        budget = self.settings.timeout * (self.settings.max_retries + 1)
        with self._write_lock(), self.spool.upload_lock(wait=budget) as mine:
            return mine and self._drain_locked(
                state_required, _ForkFrom(self._committed_image, False)
            )

    def _committed_image(self) -> LocalImage:
        return LocalImage(self.db_path)

    def _drain_locked(self, state_required: bool, fork: _ForkFrom | None) -> bool:
        """:meth:`drain_once`, with the spool's upload lock held. ``fork``: SQLite's write
        lock is held too, so an orphan in the way may be settled by a new generation."""
        state = read_state(self.db_path)
        if state is None:
            if state_required:
                return False
            raise ReplicaConflictError(f"{self.db_path}: bottomless state file is missing")
        intent = self.spool.read_intent()
        if intent is not None:
            self._ship(intent, state, fork)
            return True
        group = self.spool.read_group(GROUP_BYTES)
        if not group:
            return False
        pages: dict[int, bytes] = {}
        through, last = group[0]
        for number, entry in group:
            if entry.page_size != last.page_size:
                break  # a page-size change starts its own object
            pages.update(entry.pages)
            through, last = number, entry
        seq = state.seq + 1
        batch = fmt.PageBatch(
            fmt.KIND_COMMIT, state.generation, seq, last.page_size, last.db_size, pages,
            prev=state.digest_bytes, writer=state.writer_bytes, created_ms=last.created_ms,
        )
        data = fmt.encode_batch(batch, self.settings.compression)
        intent = Intent(fmt.commit_key(self.db_name, state.generation, seq), data, through)
        self.spool.write_intent(intent)
        self._ship(intent, state, fork)
        return True

    @contextlib.contextmanager
    def spool_shipped_first(self, image: ImageSource | None) -> Iterator[LocalState | None]:
        """For a sync commit while another process replicates the database asynchronously:
        hold the upload lock, after uploading what that process spooled (committed earlier).

        Call it under SQLite's write lock, so nothing is spooled meanwhile. ``image`` builds
        the local content after the commit: if an orphan of a killed process is in the way, a
        new generation starts from it, and the context yields its state, to be recorded at the
        commit point (the commit is in that generation's snapshot and must not be uploaded
        again); otherwise ``None``. Raises StoreError
        if the other process's uploader holds the lock for longer than an upload may take
        without shipping anything, ReplicaConflictError if the spool cannot be shipped.
        """
        if not self.spool.exists():
            yield None  # the common case: no async replication of this database anywhere
            return
        self._forked = None
        fork = _ForkFrom(image, True) if image is not None else None
        budget = self.settings.timeout * (self.settings.max_retries + 1)
        head = self.spool.head_number()
        while True:
            with self.spool.upload_lock(wait=budget) as mine:
                if mine:  # SQLite's write lock is held by the committing connection
                    while self._drain_locked(True, fork):
                        pass
                    if not self._nothing_spooled():
                        why = ("the bottomless state file is missing"
                               if read_state(self.db_path) is None else "the spool is damaged")
                        raise ReplicaConflictError(
                            f"{self.db_path}: commits spooled by an async process cannot be"
                            f" uploaded ({why}); commit refused"
                        )
                    yield self._forked
                    return
            progress, head = head, self.spool.head_number()
            if progress == head:  # the other uploader holds the lock but ships nothing
                raise StoreError(
                    f"{self.db_name}: another process's async uploader held the spool for"
                    f" {budget:.0f}s without uploading anything; commit refused"
                )

    def _ship(self, intent: Intent, state: LocalState, fork: _ForkFrom | None) -> None:
        """Upload an intent (again, after a crash) and record it."""
        seq = fmt.seq_from_key(intent.key)
        if seq is None or seq != state.seq + 1 or state.generation not in intent.key:
            # already recorded before the crash, or from a generation that has since moved on
            self.spool.remove_through(intent.through)
            self.spool.clear_intent()
            return
        digest = intent.data[-fmt.DIGEST_SIZE :]
        if self.lease is not None:
            self.lease.check()
        try:
            self.store.put_once(intent.key, intent.data)
            self._count(intent.data)
        except ObjectExistsError:
            existing = self.store.get(intent.key)
            if existing[-fmt.DIGEST_SIZE :] != digest:
                if not self._own_orphan(intent.key, fmt.decode_header(existing, intent.key),
                                        state):
                    raise ReplicaConflictError(
                        f"{intent.key} was written by another writer: two writers are"
                        f" replicating {self.db_name!r} to {self.store.location}"
                    ) from None
                if fork is None:
                    raise _OrphanInTheWayError(
                        f"{intent.key} is an orphan of this writer; settling it needs SQLite's"
                        " write lock"
                    ) from None
                self._fork_over_orphan(intent.key, state, fork)
                return
        recorded = replace(state, seq=seq, digest=digest.hex(), spooled_through=intent.through)
        write_state(self.db_path, recorded)
        self.spool.remove_through(intent.through)
        self.spool.clear_intent()
        self.state = recorded
        self.stats.commits += 1
        self.stats.last_commit_seq = seq
        self.stats.last_commit_time = time.time()
        self.stats.last_error = None
        commits, size = self._since_snapshot
        self._since_snapshot = (commits + 1, size + len(intent.data))
        self._maybe_snapshot(recorded)
        with self._uploaded:
            self._uploaded.notify_all()

    def _own_orphan(self, key: str, header: fmt.BatchHeader, state: LocalState) -> bool:
        """Whether ``key``, the position after ``state``, holds an orphan of this writer: a
        commit of this writer, chained to ``state``, that nothing was stored after (anything
        else is another writer's work, maybe a copy of this database with its side files)."""
        return (
            header.writer == state.writer_bytes and header.prev == state.digest_bytes
            and not self.store.exists(fmt.commit_key(self.db_name, state.generation,
                                                     state.seq + 2))
        )

    def _fork_over_orphan(self, key: str, state: LocalState, fork: _ForkFrom) -> None:
        """``key`` holds a commit of this writer that no local commit matches: a process of
        this database (in sync mode) was killed between its upload and its local commit.
        Start a new generation from the local content, which, under SQLite's write lock,
        holds every spooled commit; the spool is then empty."""
        logger.warning(
            "%s: %s is an orphan of a process killed between its upload and its local commit;"
            " starting a new generation from the local file, which holds the %d spooled"
            " commit(s)", self.db_name, key, len(self.spool.entries()),
        )
        through = self.spool.last_number()  # all in the local content: appends need the lock
        image = fork.image()
        try:
            self._forked = self._start_generation(
                image, "fork", writer=state.writer_bytes, record=not fork.in_commit
            )
        finally:
            image.close()
        self.spool.remove_through(through)
        self.spool.clear_intent()
        self.stats.last_error = None
        with self._uploaded:
            self._uploaded.notify_all()

    def wait_durable(self, timeout: float | None = None) -> None:
        """Block until everything committed so far is in the store (no-op in sync mode).

        Raises DurabilityTimeoutError if ``timeout`` seconds pass first.
        """
        target = self.spool.last_number()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = read_state(self.db_path)
            remaining = [n for n in self.spool.entries() if n <= target]
            if not remaining and (state is None or self.spool.read_intent() is None):
                return
            if deadline is not None and time.monotonic() > deadline:
                raise DurabilityTimeoutError(
                    f"{self.db_name}: {len(remaining)} commit(s) still waiting for upload after"
                    f" {timeout}s (last error: {self.stats.last_error or 'none'})"
                )
            if self._uploader is not None:
                self._uploader.hurry.set()
                self._uploader.wake.set()
            elif not self.drain_once():
                time.sleep(0.01)
            with self._uploaded:
                self._uploaded.wait(0.02)

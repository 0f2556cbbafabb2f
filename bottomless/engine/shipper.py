"""The async shipper: back-pressure on commits, the uploader's work, ``wait_durable``.

In async durability a commit is appended to the local :mod:`spool <bottomless.engine.spool>`
at its commit point; the uploader thread merges spooled commits into one object, writes an
*intent* (the object, before it is sent, so a crash resends the same bytes), uploads it and
records it. The replicator owns one shipper per database.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from bottomless import format as fmt
from bottomless import log
from bottomless.backends.base import PageStore
from bottomless.engine.commit_mark import CommitMarkWatch, WriteLock, drop_unpublished
from bottomless.engine.generations import Generations
from bottomless.engine.intent import Intent
from bottomless.engine.legacy_spool import migrate_legacy
from bottomless.engine.lineage import is_own_orphan
from bottomless.engine.snapshot_policy import SnapshotPolicy
from bottomless.engine.spool import Spool
from bottomless.engine.stats import Stats
from bottomless.engine.transaction import Transaction
from bottomless.engine.upload_failures import UploadFailures
from bottomless.engine.uploader import Backlog, Uploader
from bottomless.errors import (
    CorruptObjectError,
    DurabilityTimeoutError,
    ObjectExistsError,
    ReplicaConflictError,
    StoreError,
)
from bottomless.local.files import LocalImage, LocalState, read_state, sync_state
from bottomless.settings import Settings

#: an uploaded async object merges at most this many bytes of spooled pages
GROUP_BYTES = 16 * 1024 * 1024
#: spooled pages that ship at once, without waiting for the interval: a busy writer's
#: uploads stay small and quick, so every commit is stored well within ``max_lag`` (with
#: 16 MiB groups, the crash soak lost commits older than ``max_lag`` on a loaded machine),
#: while small commits still share one upload per interval
SHIP_AT_ONCE_BYTES = 1024 * 1024

#: builds the local content a new generation starts from
ImageSource = Callable[[], LocalImage]


@dataclass(frozen=True)
class _ForkFrom:
    """How an orphan in the way may be settled (SQLite's write lock is held): a new generation
    from the local content ``image`` builds. ``in_commit``: that content includes a commit not
    yet at its commit point, so the new state is recorded only when it gets there."""

    image: ImageSource
    in_commit: bool


@dataclass(frozen=True)
class _Drained:
    """What one drain did: whether it shipped anything, and the state of a generation it
    started over an orphan instead (not yet recorded when the fork was ``in_commit``)."""

    shipped: bool
    forked: LocalState | None = None


class _NeedsWriteLockError(ReplicaConflictError):
    """Shipping needs SQLite's write lock, which the caller does not hold: an orphan of this
    writer holds the next position, or the spool must give way to a new generation from the
    local file (its resync mark); either is settled from the committed local content."""


class AsyncShipper:
    """Ships one database's spool to the store (see the module docstring)."""

    def __init__(
        self, db_path: str, db_name: str, settings: Settings, store: PageStore, stats: Stats,
        generations: Generations, policy: SnapshotPolicy, *,
        record: Callable[[LocalState], None], check_lease: Callable[..., None],
        lease_lost: Callable[[], bool], write_lock: WriteLock,
    ) -> None:
        self.db_path = db_path
        self.db_name = db_name
        self.settings = settings
        self.store = store
        self.stats = stats
        self.generations = generations
        self.policy = policy
        self.spool = Spool(db_path)
        self.log = log.for_database(__name__, db_name)
        self._record = record
        self._check_lease = check_lease
        self._write_lock = write_lock
        self._mark = CommitMarkWatch(self.spool, write_lock, db_path)
        #: set while this thread holds SQLite's write lock outside a commit (during open)
        self.holds_write_lock = False
        self.uploader: Uploader | None = None
        self._uploaded = threading.Condition()
        self._room_checked = 0.0
        self.failures = UploadFailures(db_name, settings, stats, self.log, self.spool.path,
                                       lease_lost=lease_lost, check_lease=check_lease)
        self._sole_uploader = False  # the upload lock is held by sole_uploader()
        #: a commit reached the local file but not the spool, and the spool could not record
        #: it (its resync mark): nothing ships before a new generation from the local file
        self.resync_pending = False
        self._resync_seen = 0.0  # when the uploader first saw a resync due

    # ------------------------------------------------------------ the uploader thread

    def start(self) -> None:
        """Start the uploader thread."""
        self.uploader = Uploader(
            f"bottomless-upload-{self.db_name}", self.drain_once, self._backlog,
            interval=self.settings.shipping_interval, bound=self.settings.max_lag,
            gather=min(0.05, self.settings.max_lag / 10), full=SHIP_AT_ONCE_BYTES,
            failed=self.failures.failed, tidy=self._mark.settle,
        )
        self.uploader.start()

    def stop(self) -> None:
        """Upload what is spooled (within ``max_lag`` plus the retries), then stop."""
        if self.uploader is None:
            return
        try:
            self.wait_durable(self.settings.max_lag + self.settings.request_budget)
        except DurabilityTimeoutError as e:
            self.log.error("closing with commits not uploaded (they stay spooled and are"
                           " uploaded at the next open): %s", e)
        self.halt()

    def halt(self) -> None:
        """Stop the uploader thread now, leaving what is spooled for the next open (as a
        killed process would; tests use it to keep commits spooled)."""
        if self.uploader is None:
            return
        self.uploader.stopping.set()
        self.uploader.wake.set()
        self.uploader.join(5)
        self.uploader = None

    def hurry(self) -> None:
        """Ask the uploader to ship now."""
        if self.uploader is not None:
            self.uploader.hurry.set()
            self.uploader.wake.set()

    def _backlog(self) -> Backlog:
        if self.resync_due():  # spooled entries or not, a commit is not in the bucket: aged
            # from when it was first seen, so that a commit meanwhile may make the generation
            # in its own path, and the uploader does within max_lag otherwise
            now = time.monotonic()
            self._resync_seen = self._resync_seen or now
            return Backlog(now - self._resync_seen, self.spool.head_number(), 1)
        self._resync_seen = 0.0  # made meanwhile, maybe by another process
        age = self.spool.oldest_age(if_future=self.settings.max_lag)
        return Backlog(age, self.spool.head_number(), self.spool.size_bytes())

    def lag(self) -> float:
        """Seconds the oldest commit not yet in the store has waited (0: none), as the
        uploader sees it: a commit awaiting a new generation counts from when it was first
        seen, an entry stamped in the future (the wall clock stepped back) as ``max_lag``."""
        return self._backlog().age

    def generation_recorded(self) -> None:
        """A new generation from the local file holds every commit: clear the resync mark."""
        self.spool.mark_resync(False)
        self.resync_pending = False
        self._resync_seen = 0.0

    def resync_due(self) -> bool:
        """Whether a commit is in the local file but not the spool (in memory, or by the
        spool's mark, which any process may have set): a new generation from the local file
        must come before anything else ships."""
        return self.resync_pending or self.spool.resync_needed()

    # ------------------------------------------------------------ the commit path

    def wait_for_room(self) -> None:
        """Back-pressure: hold a commit while the spool is too old or too big. Raises
        StoreError if the uploader does not catch up within ``max_lag`` + ``request_budget``;
        at once, the error of a lost lease or of an upload that retrying cannot fix."""
        now = time.monotonic()
        if now - self._room_checked < 0.01:
            return  # checked a moment ago: the bound is in seconds, not microseconds
        self._room_checked = now
        limit = self.settings.max_lag
        deadline = now + limit + self.settings.request_budget
        max_bytes = self.settings.max_spool_mb * 1024 * 1024
        # the uploader starts in time to end within the bound on its own (Uploader.ship_by):
        # hurrying it any earlier would only cost requests. An entry stamped in the future
        # (the wall clock stepped back) counts as at the bound: due now, and held to it
        while True:
            age, size = self.spool.oldest_age(if_future=limit), self.spool.size_bytes()
            if age < limit and size <= max_bytes:
                return
            self.failures.refuse_if_stuck(age, size)
            self.hurry()
            if time.monotonic() > deadline:
                raise self.failures.not_catching_up(age, size)
            with self._uploaded:
                self._uploaded.wait(0.02)

    def append(self, txn: Transaction) -> None:
        """Spool a commit at its commit point, which Spool.begin_commit marked (no wake-up)."""
        self.spool.append(txn, marked=True)

    def resync_from_local(self, writer: bytes) -> None:
        """After a failed WAL sync: replace what is spooled by a new generation from the
        committed local content (call under SQLite's write lock, in a WAL-mode commit)."""
        budget = self.settings.request_budget
        with self.spool.upload_lock(wait=budget) as mine:
            if not mine:
                raise StoreError(
                    f"{self.db_name}: the uploader held the spool for {budget:.0f}s; cannot"
                    " start the new generation a failed WAL sync calls for; commit refused"
                )
            self.restart_from_local(writer)

    def restart_from_local(self, writer: bytes) -> None:
        """Replace what is spooled by a new generation from the committed local content (call
        with SQLite's write lock and the upload lock held, no transaction in flight)."""
        self._start_over(_ForkFrom(self._committed_image, False), writer, "restart")

    @contextlib.contextmanager
    def shipped_first(self, image: ImageSource | None) -> Iterator[LocalState | None]:
        """For a sync commit while another process replicates the database asynchronously:
        hold the upload lock, after uploading what that process spooled (committed earlier).

        Call it under SQLite's write lock, so nothing is spooled meanwhile. ``image`` builds
        the local content after the commit: if an orphan of a killed process is in the way, a
        new generation starts from it, and the context yields its state, to be recorded at the
        commit point (the commit is in that generation's snapshot and must not be uploaded
        again); otherwise ``None``. Raises StoreError if the other process's uploader holds
        the lock for longer than an upload may take without shipping anything,
        ReplicaConflictError if the spool cannot be shipped.
        """
        if not self.spool.exists():
            yield None  # the common case: no async replication of this database anywhere
            return
        fork = _ForkFrom(image, True) if image is not None else None
        # SQLite's write lock is held by the committing connection
        with self._patient_upload_lock("commit refused"):
            forked = None
            while forked is None and (drained := self._drain_locked(True, fork)).shipped:
                forked = drained.forked
            if forked is None and not self.nothing_spooled():
                why = ("the bottomless state file is missing"
                       if read_state(self.db_path) is None else "the spool is damaged")
                raise ReplicaConflictError(
                    f"{self.db_path}: commits spooled by an async process cannot be"
                    f" uploaded ({why}); commit refused", db_name=self.db_name,
                )
            yield forked

    @contextlib.contextmanager
    def _patient_upload_lock(self, refused: str) -> Iterator[None]:
        """The spool's upload lock, waiting for another process's uploader for as long as it
        ships something every two ``request_budget``s (a lease renewal, then an upload).
        Raises StoreError, its message ending in ``refused``, if it holds the lock that long
        without shipping anything."""
        # one turn of an uploader may take two budgets: renewing the lease, then the upload
        budget = 2 * self.settings.request_budget
        head = self.spool.head_number()
        while True:
            with self.spool.upload_lock(wait=budget) as mine:
                if mine:
                    yield
                    return
            progress, head = head, self.spool.head_number()
            if progress == head:
                raise StoreError(
                    f"{self.db_name}: another process's async uploader held the spool for"
                    f" {budget:.0f}s without uploading anything; {refused}"
                )

    # ------------------------------------------------------------ shipping

    def drain_once(self, state_required: bool = False) -> bool:
        """Upload the oldest spooled entries as one commit object; False if there was nothing.
        Raises StoreError or ReplicaConflictError if the upload fails (entries stay spooled).
        """
        with self.spool.upload_lock() as mine:
            if not mine:
                return False
            try:
                fork = _ForkFrom(self._committed_image, False) if self.holds_write_lock else None
                return self._drain_locked(state_required, fork).shipped
            except _NeedsWriteLockError:
                pass
        # settled under SQLite's write lock, so that no commit lands meanwhile; it is taken
        # before the upload lock, in the order a sync commit takes them
        with self._write_lock(), self.spool.upload_lock(wait=self.settings.request_budget) as mine:
            drop_unpublished(self.db_path)  # no commit under way: what SQLite reads is the truth
            return mine and self._drain_locked(
                state_required, _ForkFrom(self._committed_image, False)
            ).shipped

    @contextlib.contextmanager
    def sole_uploader(self) -> Iterator[None]:
        """Hold the spool's upload lock while this database opens, SQLite's write lock held.

        Another process's uploader may be between uploading a commit and recording it: an open
        that read the state file meanwhile would judge the local file against a position that
        is about to move (and could branch a new generation without that commit). So the open
        waits for it, as :meth:`shipped_first` does; :meth:`drain_leftovers` then ships what is
        spooled through the lock held here. Raises StoreError if that uploader holds the lock
        for longer than an upload may take without shipping anything.
        """
        if not self.spool.exists():
            yield  # no async replication of this database anywhere: nothing can be in flight
            return
        with self._patient_upload_lock(f"cannot open {self.db_path}"):
            self._sole_uploader = True
            try:
                yield
            finally:
                self._sole_uploader = False

    def drain_leftovers(self) -> None:
        """Upload what an earlier process (async, or before a switch) or another one spooled
        and did not ship yet (inside :meth:`sole_uploader`, whose lock it uses)."""
        if self._sole_uploader:  # the upload lock is held
            self.spool.intent.remove_torn()
        state = read_state(self.db_path)
        if state is None or state.db_name != self.db_name:
            return
        migrate_legacy(self.spool)
        while self.spool.intent.read() is not None or self.spool.entries():
            if self._sole_uploader:
                fork = _ForkFrom(self._committed_image, False)
                if not self._drain_locked(True, fork).shipped:
                    break
            elif not self.drain_once(state_required=True):
                break

    def _committed_image(self) -> LocalImage:
        return LocalImage(self.db_path)

    def _drain_locked(self, state_required: bool, fork: _ForkFrom | None) -> _Drained:
        """:meth:`drain_once`, with the spool's upload lock held. ``fork``: SQLite's write
        lock is held too, so an orphan in the way may be settled by a new generation."""
        state = read_state(self.db_path)
        if state is None:
            if state_required:
                return _Drained(False)
            raise ReplicaConflictError(f"{self.db_path}: bottomless state file is missing",
                                       db_name=self.db_name)
        if self.resync_due():
            # a commit is in the local file but not the spool: shipping what is spooled would
            # leave it out; the local content under SQLite's write lock holds it and the spool
            if fork is None:
                raise _NeedsWriteLockError(f"{self.db_path}: the spool awaits a new generation"
                                           " from the local file")
            self._check_lease()
            self.log.warning("a commit reached the local file but not the spool (or a new"
                             " generation was interrupted); starting a new generation from the"
                             " local file, which holds every commit and the %d spooled"
                             " one(s)", len(self.spool.entries()))
            return _Drained(True, self._start_over(fork, state.writer_bytes, "restart"))
        intent = self.spool.intent.read()
        if intent is None:
            intent = self._next_intent(state)
            if intent is None:
                return _Drained(False)
        return _Drained(True, self._ship(intent, state, fork))

    def _next_intent(self, state: LocalState) -> Intent | None:
        """Merge the oldest spooled entries into the next commit object; write its intent."""
        group = self.spool.read_group(GROUP_BYTES)
        if not group:
            return None
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
        self.spool.intent.write(intent)
        return intent

    def _ship(self, intent: Intent, state: LocalState, fork: _ForkFrom | None) -> LocalState | None:
        """Upload an intent (again, after a crash) and record it; the state of a generation
        started over an orphan instead, if one was."""
        if not fmt.is_next_commit(intent.key, self.db_name, state.generation, state.seq):
            # already recorded before the crash, or from a generation that has since moved on
            self.spool.remove_through(intent.through)
            self.spool.intent.clear()
            return None
        digest = fmt.trailer_digest(intent.data)
        self._check_lease()
        started = time.monotonic()
        try:
            self.store.put_once(intent.key, data := intent.data)
            took = time.monotonic() - started
            self.stats.count_object(data)
            self.stats.upload_took(took)
            self.log.debug("PUT %s (%d bytes) in %.1f ms", intent.key, len(data), took * 1000)
            self.failures.took(took)
        except ObjectExistsError:
            existing = self.store.get(intent.key)
            if fmt.trailer_digest(existing) != digest:
                header = fmt.decode_header(existing, intent.key)
                if not is_own_orphan(self.store, self.db_name, header, state):
                    self._check_lease(True)  # a lost lease says who wrote it
                    raise ReplicaConflictError(
                        f"{intent.key} was written by another writer: two writers are"
                        f" replicating {self.db_name!r} to {self.store.location}",
                        db_name=self.db_name, key=intent.key,
                    ) from None
                if fork is None:
                    raise _NeedsWriteLockError(
                        f"{intent.key} is an orphan of this writer; settling it needs SQLite's"
                        " write lock"
                    ) from None
                self.log.warning(
                    "%s is an orphan of a process killed between its upload and its local"
                    " commit; starting a new generation from the local file, which holds the"
                    " %d spooled commit(s)", intent.key, len(self.spool.entries()),
                )
                return self._start_over(fork, state.writer_bytes, "fork")
        recorded = replace(state, seq=state.seq + 1, digest=digest.hex(),
                           spooled_through=intent.through)
        self._record(recorded)
        self.spool.remove_through(intent.through)
        self.spool.intent.clear()
        self.stats.commit_recorded(recorded.seq)
        self.failures.succeeded()
        self.policy.commit_added(recorded, len(intent.data))
        with self._uploaded:
            self._uploaded.notify_all()
        return None

    def _start_over(self, fork: _ForkFrom, writer: bytes, reason: str) -> LocalState:
        """Start a new generation from the local content, which, under SQLite's write lock,
        holds every spooled commit (an orphan of a killed process is in the way, or the spool
        awaits a resync); the spool is then empty. The resync mark is set once it is uploaded
        (no earlier: while set, every commit tries to make a generation itself), so that a
        crash before the spool is emptied makes the next open start another one rather than
        ship entries it holds again (each a point that never existed). It is cleared at the
        end, or, if the content holds a commit not yet at its commit point
        (``fork.in_commit``), when that commit gets there (:meth:`generation_recorded`)."""
        through = self.spool.last_number()  # all in the local content: appends need the lock
        image = fork.image()
        try:
            forked = self.generations.start(image, reason, writer=writer)
        finally:
            image.close()
        if not self.spool.resync_needed():
            try:
                self.spool.mark_resync()
            except OSError as e:  # only a crash in the next moments would need it
                self.log.warning("could not mark the spool before recording a new"
                                 " generation: %s", e)
        if not fork.in_commit:
            self._record(forked)
        self.spool.remove_through(through)
        self.spool.intent.clear()
        if not fork.in_commit:
            self.generation_recorded()
        self.stats.error(None)  # a new generation, its snapshot included: every failure is over
        self.failures.succeeded()
        with self._uploaded:
            self._uploaded.notify_all()
        return forked

    # ------------------------------------------------------------ state of the spool

    def nothing_spooled(self) -> bool:
        """Whether every spooled commit is uploaded (a damaged spool counts as not)."""
        try:
            return (not self.spool.entries() and self.spool.intent.read() is None
                    and not self.resync_due())
        except CorruptObjectError:
            return False

    def make_durable(self) -> None:
        """fsync the spool and the state file (before a session is recorded as ended)."""
        self.spool.sync()
        sync_state(self.db_path)

    def wait_durable(self, timeout: float | None = None) -> None:
        """Block until everything committed so far is in the store (no-op in sync mode).

        Raises DurabilityTimeoutError if ``timeout`` seconds pass first.
        """
        target = self.spool.last_number()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = read_state(self.db_path)
            remaining = [n for n in self.spool.entries() if n <= target]
            if not remaining and (state is None or self.spool.intent.read() is None) and not (
                self.resync_due()  # a commit that is in the local file only
            ):
                return
            if deadline is not None and time.monotonic() > deadline:
                raise DurabilityTimeoutError(
                    f"{self.db_name}: {len(remaining)} commit(s) still waiting for upload"
                    f"{' and one awaiting a new generation' if self.resync_due() else ''}"
                    f" after {timeout}s (last error: {self.stats.last_error or 'none'})"
                )
            if self.uploader is not None:
                self.hurry()
            elif not self.drain_once():
                time.sleep(0.01)
            with self._uploaded:
                self._uploaded.wait(0.02)

"""Replication of one local database: the facade the VFS talks to.

Importable and testable without apsw: the VFS hands it
:class:`~bottomless.engine.transaction.Transaction` objects before SQLite's commit point and
calls :meth:`Replicator.commit_done` once SQLite has committed locally; it takes SQLite's
write lock through the :data:`WriteLock` it is given. The work is done by its parts: the
:class:`~bottomless.engine.opening.Opening` of the database (with the
:class:`~bottomless.engine.lineage.LineageCheck`), the
:class:`~bottomless.engine.commit.CommitProtocol` of the commit in flight,
:class:`~bottomless.engine.generations.Generations`, the
:class:`~bottomless.engine.shipper.AsyncShipper` and the
:class:`~bottomless.engine.snapshot_policy.SnapshotPolicy`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from bottomless import format as fmt
from bottomless import log
from bottomless.backends.base import PageStore
from bottomless.backends.counting import CountingStore
from bottomless.engine.commit import PREPARED, CommitProtocol, Phase
from bottomless.engine.commit_mark import WriteLock
from bottomless.engine.generations import Generations, ProgressFactory
from bottomless.engine.lease import WriterLease
from bottomless.engine.lineage import is_own_orphan
from bottomless.engine.opening import Opening, is_empty_locally
from bottomless.engine.refusals import Refusals
from bottomless.engine.shipper import AsyncShipper
from bottomless.engine.snapshot_policy import SnapshotPolicy
from bottomless.engine.spool import Spool
from bottomless.engine.stats import Stats
from bottomless.engine.transaction import Transaction
from bottomless.errors import (
    BottomlessError,
    ObjectExistsError,
    ReplicaConflictError,
    StoreError,
)
from bottomless.local.files import (
    LocalImage,
    LocalState,
    read_state,
    write_state,
)
from bottomless.local.lockfile import local_writer_id, open_lock
from bottomless.local.session import SessionMarker
from bottomless.settings import Settings

__all__ = ["ProgressFactory", "Replicator", "Stats", "WriteLock"]


class Replicator:
    """Keeps the replica of one local database file in step with its commits.

    One instance per database path per process; every connection to that path shares it.
    Commit numbering is read from the state file under SQLite's write lock, so several
    processes writing one file number their commits in one sequence.
    """

    def __init__(
        self, db_path: str, settings: Settings, store: PageStore, write_lock: WriteLock
    ) -> None:
        self.db_path = db_path
        self.settings = settings
        #: every request to the store, counted by kind (for status and metrics)
        self.counted_store = CountingStore(store)
        self.store: PageStore = self.counted_store
        store = self.counted_store  # the parts below count their requests too
        self.db_name = settings.db_name or fmt.default_db_name(db_path)
        self.log = log.for_database(__name__, self.db_name)
        self._write_lock = write_lock
        self.lock = threading.RLock()
        self.paused = False
        self.stats = Stats()
        self.refusals = Refusals(self.db_name, self.stats, self.log)
        self.state: LocalState | None = None
        self.session = SessionMarker(db_path)
        self._pid = os.getpid()
        #: the writer id: shared by every process writing through this local file
        self.writer = fmt.new_writer_id()
        self.lease: WriterLease | None = None
        self.commit = CommitProtocol()
        self.snapshots = SnapshotPolicy(store, self.db_name, settings, self.stats)
        self.generations = Generations(store, self.db_name, settings, self.stats, self.snapshots)
        self.shipper = AsyncShipper(
            db_path, self.db_name, settings, store, self.stats, self.generations,
            self.snapshots, record=self._record, check_lease=self._check_lease,
            lease_lost=self._lease_lost, write_lock=write_lock,
        )
        self._last_object_size = 0
        self._closing = False

    @property
    def progress(self) -> ProgressFactory | None:
        """Makes a byte-count callback for a long upload (see :data:`ProgressFactory`)."""
        return self.generations.progress

    @progress.setter
    def progress(self, factory: ProgressFactory | None) -> None:
        self.generations.progress = factory

    @property
    def spool(self) -> Spool:
        """The async spool of this database."""
        return self.shipper.spool

    def _record(self, state: LocalState) -> None:
        """Make ``state`` the replicated position, in the state file and here."""
        write_state(self.db_path, state)
        self.state = state

    def _check_lease(self, fresh: bool = False) -> None:
        """Raise the lease's error unless this writer surely still holds it; ``fresh``: ask
        the store now (another writer's object is in the way: a lost lease says who)."""
        if self.lease is not None:
            if fresh:
                with contextlib.suppress(StoreError):
                    self.lease.renew()
            self.lease.check()

    def _lease_lost(self) -> bool:
        """Whether this writer already knows it lost its lease (asks nothing of the store,
        unlike :meth:`_check_lease`, which may renew the lease)."""
        return self.lease is not None and self.lease.lost is not None

    # ------------------------------------------------------------ open

    def open(self) -> None:
        """Bring local file and bucket in step before SQLite reads the file.

        Restores a missing or empty database, uploads a database the bucket does not have,
        continues a known lineage, and applies ``initial_replication`` to a conflict. Raises
        ReplicaConflictError (policy ``error``) or StoreError.
        """
        with self.lock, open_lock(self.db_path) as lock_fd:
            empty = is_empty_locally(self.db_path)
            state = read_state(self.db_path)
            if state is not None and state.db_name == self.db_name:
                self.writer = state.writer_bytes
            else:
                state = None
                self.writer = local_writer_id(lock_fd, self.writer)
            if self.settings.lease_ttl:
                self.lease = WriterLease(
                    self.store, self.db_name, self.writer.hex(), self.settings.lease_ttl
                )
                self.lease.acquire()
            opening = Opening(
                self.db_path, self.db_name, self.settings, self.store, self.log,
                session=self.session, shipper=self.shipper, generations=self.generations,
                snapshots=self.snapshots, write_lock=self._write_lock, record=self._record,
            )
            try:
                self.paused = opening.run(empty, state, self.writer)
            except BaseException:
                self.session.end()
                if self.lease is not None:
                    self.lease.release()
                raise
            if self.paused and self.lease is not None:
                self.lease.release()  # skip: this process will not write
                self.lease = None
            if self.settings.durability == "async" and not self.paused:
                self.shipper.start()

    # ------------------------------------------------------------ commits

    def replicate(self, txn: Transaction, image: Callable[[], LocalImage] | None = None) -> None:
        """Make ``txn`` durable in the store before SQLite commits it locally (sync), or queue
        it for the spool (async).

        Raises BottomlessError if it could not be; the caller turns that into an I/O error so
        that SQLite rolls the transaction back. ``image`` builds the post-commit local content,
        used only if the chain position is already taken by an orphan of this writer.
        """
        with self.lock:
            resync = self.commit.begin()
            if self.paused:
                return
            if self.settings.durability == "async":
                if self._lease_lost():
                    # refused as a sync commit is, with the lease's own error; nothing spooled
                    # now could ever be uploaded
                    try:
                        self._check_lease()
                    except BaseException as e:  # noqa: BLE001 - raised again, counted
                        raise self.refusals.refused(e)  # noqa: B904 - e itself
                if resync:
                    self.commit.resynced()  # due now, in memory and by the spool's mark
                try:  # resync_due(), with the spool marked for this commit (Spool.begin_commit)
                    due = self.spool.begin_commit() or self.shipper.resync_pending
                    if due and self._resync_in_commit(txn, image):
                        return
                    self.shipper.wait_for_room()
                except BaseException as e:  # noqa: BLE001 - no commit point: a mark would cost
                    with contextlib.suppress(OSError, BottomlessError):  # a generation
                        self.spool.end_commit()
                    raise self.refusals.refused(e, spooling=True)  # noqa: B904 - e, or caused by e
                self.commit.queued(txn)
                self.refusals.recovered()
                return
            try:
                # a mark of an async process killed between its commit point and spooling it:
                # the commit is in the local file only, so this one must not ship on top of it
                self.spool.settle_interrupted_commit()
                with self.shipper.shipped_first(image) as forked:
                    if forked is not None:  # the new generation's snapshot holds this commit
                        self.commit.forked(forked)
                    else:
                        self._replicate(txn, image)
            except BaseException as e:  # noqa: BLE001 - raised again, counted and logged
                self.commit.failed()  # this transaction will not commit: nothing to record
                raise self.refusals.refused(e)  # noqa: B904 - e itself

    def _resync_in_commit(
        self, txn: Transaction, image: Callable[[], LocalImage] | None
    ) -> bool:
        """A commit reached the local file but not the spool earlier: make the new generation
        that must come before anything else ships, here, under SQLite's write lock, from the
        content this commit leaves (recorded at its commit point, as a sync commit's fork
        is). The uploader would need this very lock to do it. False if it was not made here
        (no image to make it from, or no spool to replace): the commit is queued, and the
        uploader makes it."""
        if image is None:
            writer = self.state.writer_bytes if self.state else self.writer
            self.shipper.resync_from_local(writer)  # WAL: the committed content, without txn
            return False
        try:
            with self.shipper.shipped_first(image) as forked:
                if forked is None:
                    return False
                self.commit.forked(forked)
                return True
        except StoreError as e:  # the store may answer again: queued, back-pressure bounds it
            self.stats.error(f"a new generation from the local file failed: {e}")
            self.log.warning("a new generation from the local file failed, will retry: %s", e)
            return False
        except BaseException:
            self.commit.failed()
            raise

    def _replicate(self, txn: Transaction, image: Callable[[], LocalImage] | None) -> None:
        state = read_state(self.db_path) or self.state
        if state is None:
            raise ReplicaConflictError(f"{self.db_path}: bottomless state file is missing",
                                       db_name=self.db_name)
        self._check_lease()
        seq = state.seq + 1
        batch = fmt.PageBatch(
            fmt.KIND_COMMIT, state.generation, seq, txn.page_size, txn.db_size, txn.pages,
            prev=state.digest_bytes, writer=state.writer_bytes,
        )
        data = fmt.encode_batch(batch, self.settings.compression)
        key = fmt.commit_key(self.db_name, state.generation, seq)
        started = time.monotonic()
        try:
            self.store.put_once(key, data)
        except ObjectExistsError:
            self._position_taken(key, state, image)
            return
        took = time.monotonic() - started
        self.stats.count_object(data)
        self.stats.upload_took(took)
        self._last_object_size = len(data)
        # held until the PUT ended? A writer paused during it (SIGSTOP, a VM freeze) may have
        # been replaced meanwhile, by a promotion that did not see this object: the app must
        # not be told it succeeded (the object stays behind, as an orphan nobody acknowledged)
        self._check_lease()
        self.log.debug("PUT %s (%d pages, %d bytes) in %.1f ms", key, len(txn.pages),
                       len(data), took * 1000)
        self.commit.uploaded(
            replace(state, seq=seq, digest=batch.digest.hex(), page_size=txn.page_size)
        )

    def _position_taken(
        self, key: str, state: LocalState, image: Callable[[], LocalImage] | None
    ) -> None:
        existing = fmt.decode_header(self.store.get_range(key, 0, fmt.HEADER_SIZE), key)
        if image is None or not is_own_orphan(self.store, self.db_name, existing, state):
            self._check_lease(fresh=True)
            raise ReplicaConflictError(
                f"{key} was written by another writer: two writers are replicating"
                f" {self.db_name!r} to {self.store.location}; this commit is refused",
                db_name=self.db_name, key=key,
            )
        self.log.warning("%s is an orphan (uploaded, never committed locally: a crash, or a"
                         " commit refused after its upload); starting a new generation", key)
        local = image()  # the content after this commit: recorded at its commit point
        try:
            self.commit.forked(self.generations.start(local, "fork", writer=state.writer_bytes))
        finally:
            local.close()

    def commit_written(self, *, fixup_follows: bool) -> None:
        """SQLite wrote the commit frame. ``fixup_follows``: it rewrote frames in place, so
        their checksums are fixed next, and the fixed header of the commit frame is the
        commit point (:meth:`commit_done` is called then); otherwise this is the commit
        point."""
        if fixup_follows:
            with self.lock:
                self.commit.awaiting_fixup()
        else:
            self.commit_done()

    @property
    def awaiting_fixup(self) -> bool:
        """Whether a commit waits for SQLite to fix its frames' checksums."""
        step = self.commit.step
        return step.phase is Phase.AWAITING_FIXUP and step.thread == threading.get_ident()

    def commit_done(self, *, in_place: bool = False) -> None:
        """SQLite committed locally: record the replicated position, or spool the commit.
        ``in_place``: the commit point was in the database file (a rollback journal mode), so
        it is committed there already. Raises StoreError if the commit cannot be spooled and
        the local file may hold it nonetheless (see :meth:`_spooling_failed`)."""
        with self.lock:
            step = self.commit.take_prepared()
            if step is None:
                return
            if step.txn is not None:
                try:
                    self.shipper.append(step.txn)
                except (OSError, BottomlessError) as e:
                    self._spooling_failed(e, in_place)
                    return
                self.commit.spooled()
                return
            assert step.state is not None
            previous = self.state
            self._record(step.state)
            self.commit.recorded(previous)
            self.refusals.recovered()  # the store works again: a refusal's error is over
            if step.state.seq == 0:  # a new generation holds the commit (and what was spooled)
                self.shipper.generation_recorded()
                return
            self.stats.commit_recorded(step.state.seq)
            self.snapshots.commit_added(step.state, self._last_object_size)

    def _spooling_failed(self, error: Exception, in_place: bool) -> None:
        """A commit passed its commit point but could not be spooled (a full disk, say), so
        the local file may hold a commit the spool does not.

        Nothing may then ship before a new generation from the local file holds it: the
        spool's header records that (its resync mark, rewritten in place, which a full disk
        does not stop), so that every process's uploader, and an open after a crash, makes
        that generation first. In WAL mode SQLite reports the commit failed and rolls it back
        (raises StoreError); the mark covers a crash whose recovery brings it back. In a
        rollback journal mode the commit is in the database file already, so it stands: this
        process's uploader makes the generation under SQLite's write lock. Only if the mark
        cannot be written either, and a new generation cannot be made now, does the commit
        report an I/O error (raises StoreError); it stands all the same, and this process
        still makes that generation before it ships anything.
        """
        message = f"a commit could not be spooled for upload ({error})"
        self.shipper.resync_pending = True
        try:
            self.spool.mark_resync()
        except (OSError, BottomlessError) as e:
            marked: Exception | None = e
        else:
            marked = None
        if not in_place:
            self.commit.spool_failed()
            message += "; the next commit starts a new generation from the local file"
        else:
            self.commit.failed()  # nothing of it to spool any more: the generation holds it
            if marked is None:
                message += "; a new generation from the local file will hold it"
                self.stats.error(message)
                self.log.error("%s", message)
                return
            writer = self.state.writer_bytes if self.state else self.writer
            try:
                self.shipper.resync_from_local(writer)
            except (OSError, BottomlessError) as e:
                message += (
                    f"; nor could the spool record it ({marked}), nor a new generation be made"
                    f" now ({e}): it is in the local file only, and this process makes that"
                    " generation before it uploads anything else"
                )
            else:
                self.log.warning("%s; a new generation from the local file holds it", message)
                return
        self.stats.error(message)
        self.log.error("%s", message)
        raise StoreError(f"{self.db_name}: {message}") from error

    def commit_failed(self) -> None:
        """SQLite's commit point failed after :meth:`replicate` (a full disk, say): forget what
        it prepared, so that no later commit point records it. If the transaction's object was
        stored, it is an orphan, which the next commit settles."""
        with self.lock:
            self._unmark_spool()
            self.commit.failed()

    def transaction_over(self) -> None:
        """SQLite committed a write transaction (``COMMIT_PHASETWO``, sent only after a commit
        that succeeded): its commit point is long recorded, unless the commit still awaits a
        checksum fix-up that never came, its commit point having been the commit frame.

        Such an async commit cannot be spooled now, in order: in WAL mode SQLite has released
        its write lock. The resync mark makes the next upload a new generation from the local
        file, which holds it. (A sync commit's object is in the store: the next commit settles
        it as an orphan of this writer.) What another thread has prepared since is left alone.
        """
        with self.lock:
            step = self.commit.step
            if (step.thread in (None, threading.get_ident()) and step.phase in PREPARED
                    and step.txn is not None):
                self.log.warning("a commit passed its commit point unseen (no checksum fix-up"
                                 " followed); a new generation from the local file will hold it")
                self.shipper.resync_pending = True
                with contextlib.suppress(OSError, BottomlessError):
                    self.spool.mark_resync()
            self.commit.over()

    def _unmark_spool(self) -> None:
        """A commit to be spooled did not pass its commit point: take back the spool's mark
        that it might have (a mark left would only cost a needless new generation)."""
        if self.commit.step.phase in PREPARED and self.commit.step.txn is not None:
            with contextlib.suppress(OSError, BottomlessError):
                self.spool.end_commit()

    def sync_failed(self) -> None:
        """A WAL sync failed. Right after a recorded commit, SQLite then reports that commit as
        failed and overwrites its frames (unless a crash lets recovery keep them), so the record
        is taken back: in sync mode the state file goes back one commit (its object becomes an
        orphan: the next commit forks over it, or the next open continues at it if recovery
        kept the frames); in async mode, where the commit may already be on its way, the next
        commit starts a new generation from the local file."""
        with self.lock:
            previous = self.commit.step.previous
            phase = self.commit.sync_failed()
            if phase is Phase.RECORDED and previous is not None:
                self._record(previous)
                self.log.error("the WAL sync after a commit failed; its record is taken back")
                if self.settings.durability == "async":  # a generation may hold it: redo it
                    self.shipper.resync_pending = True
                    with contextlib.suppress(OSError, BottomlessError):
                        self.spool.mark_resync()
            elif phase is Phase.SPOOLED:
                self.log.error("the WAL sync after a commit failed; the next commit starts a"
                               " new generation from the local file")
                self.shipper.resync_pending = True
                with contextlib.suppress(OSError, BottomlessError):  # the next commit resyncs
                    self.spool.mark_resync()

    def wait_durable(self, timeout: float | None = None) -> None:
        """Block until everything committed so far is in the store (no-op in sync mode).

        Raises DurabilityTimeoutError if ``timeout`` seconds pass first. A paused replicator
        (``initial_replication=skip``) uploads nothing, so there is nothing to wait for.
        """
        if not self.paused:
            self.shipper.wait_durable(timeout)

    def drain_once(self) -> bool:
        """Upload the oldest spooled commits as one object now; False if there were none (or
        replication is paused)."""
        return not self.paused and self.shipper.drain_once()

    def wait_snapshot(self, timeout: float | None = None) -> None:
        """Wait for a background snapshot in progress, if any."""
        self.snapshots.wait(timeout)

    # ------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """A JSON-ready description of replication for this database."""
        state = read_state(self.db_path) or self.state
        return {
            "db_name": self.db_name,
            "backend": self.store.backend,
            "location": self.store.location,
            "replicating": not self.paused and not self._lease_lost(),  # fenced: no more
            "lease_lost": self.lease.lost if self.lease is not None else None,
            "generation": state.generation if state else None,
            "last_replicated_commit": state.seq if state else None,
            "last_commit_time": self.stats.last_commit_time,
            "durability": self.settings.durability,
            "pending_commits": len(self.spool.entries()),
            "pending_bytes": self.spool.size_bytes(),
            "lag_seconds": round(self.shipper.lag(), 3),
            "commits": self.stats.commits,
            "objects_written": self.stats.objects_written,
            "bytes_written": self.stats.bytes_written,
            "last_error": self.stats.last_error,
            "last_error_time": self.stats.last_error_time,
        }

    def close(self, *, final: bool = True) -> None:
        """Flush async commits, finish a snapshot in progress, then release the store.
        ``final``: SQLite has closed the file (not so at exit, where connections may still
        roll back a transaction afterwards), so the clean end may record it."""
        if self._closing or sys.is_finalizing() or os.getpid() != self._pid:
            # closed already (e.g. flushed at exit), too late to do anything, or a forked
            # child's copy: the lease, the session and the uploads are the parent's
            return
        self._closing = True
        self.refusals.closing()
        self.snapshots.closing = True
        self.shipper.stop()
        self.snapshots.wait()
        state = self.state
        self.session.end(clean=self.shipper.nothing_spooled(),
                         make_durable=self.shipper.make_durable,
                         at=(state.generation, state.seq) if state and final else None)
        if self.lease is not None:
            self.lease.release()
        self.spool.close()
        self.store.close()

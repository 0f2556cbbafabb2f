"""Replication of one local database: lineage checks at open, commits, new generations.

Importable and testable without apsw: the VFS hands it
:class:`~bottomless.engine.transaction.Transaction` objects and calls
:meth:`Replicator.commit_done` once SQLite has committed locally, and it takes
SQLite's write lock through the :class:`WriteLock` it is given.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any

from bottomless import format as fmt
from bottomless.backends.base import PageStore
from bottomless.engine.lease import WriterLease
from bottomless.engine.shipper import AsyncReplication
from bottomless.engine.spool import Spool, Uploader
from bottomless.engine.transaction import Transaction
from bottomless.errors import (
    BottomlessError,
    CorruptObjectError,
    DurabilityTimeoutError,
    ObjectExistsError,
    ObjectNotFoundError,
    ReplicaConflictError,
    RestoreError,
    StoreError,
)
from bottomless.local.files import (
    LocalImage,
    LocalState,
    file_size,
    read_state,
    remove_local_files,
    write_state,
)
from bottomless.local.session import Interrupted, SessionMarker
from bottomless.ops.restore import commit_numbers, latest_generation, restore_file
from bottomless.ops.snapshots import (
    PageSource,
    check_part,
    compact,
    iter_commits,
    read_manifest,
    snapshot_seqs,
    upload_snapshot,
)
from bottomless.settings import Settings

logger = logging.getLogger(__name__)

WriteLock = Callable[[], AbstractContextManager[None]]
ProgressFactory = Callable[[str, int], Callable[[int], None] | None]


@dataclass
class Stats:
    """Counters reported by ``PRAGMA bottomless_status``."""

    commits: int = 0
    objects_written: int = 0
    bytes_written: int = 0
    last_commit_seq: int | None = None
    last_commit_time: float | None = None
    last_error: str | None = None
    last_error_time: float | None = None
    generations_started: list[str] = field(default_factory=list)


class Replicator(AsyncReplication):
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
        self.store = store
        self.db_name = settings.db_name or fmt.default_db_name(db_path)
        self._write_lock = write_lock
        self._holds_write_lock = False
        #: the state before the last recorded commit, until SQLite finishes that transaction
        self._unsynced: LocalState | None = None
        self._unsynced_spool = False  # the same, for a commit appended to the spool
        self._resync = False  # async: the next commit starts a new generation from the file
        self._forked: LocalState | None = None
        self.lock = threading.RLock()
        self.paused = False
        self.stats = Stats()
        self._pending: LocalState | None = None
        self.state: LocalState | None = None
        #: makes a byte-count callback for a long upload, given a label and the total bytes
        #: (the CLI shows a progress bar with it); ``None``: no progress reporting
        self.progress: ProgressFactory | None = None
        self._since_snapshot = (0, 0)  # commits, bytes of log since the newest snapshot
        self._compactor: threading.Thread | None = None
        self._last_object_size = 0
        self.spool = Spool(db_path)
        self.session = SessionMarker(db_path)
        self._pid = os.getpid()
        #: the writer id: shared by every process writing through this local file
        self.writer = fmt.new_writer_id()
        self.lease: WriterLease | None = None
        self._uploader: Uploader | None = None
        self._waiting: Transaction | None = None  # async: committed at PHASETWO
        #: the thread whose write transaction prepared the state above: in WAL mode SQLite
        #: lets go of the write lock before COMMIT_PHASETWO, so another connection of this
        #: process may already be preparing its own commit when that one arrives
        self._preparer: int | None = None
        self._uploaded = threading.Condition()
        self._room_checked = 0.0
        self._closing = False

    # ------------------------------------------------------------ open

    def open(self) -> None:
        """Bring local file and bucket in step before SQLite reads the file.

        Restores a missing or empty database, uploads a database the bucket does not have,
        continues a known lineage, and applies ``initial_replication`` to a conflict. Raises
        ReplicaConflictError (policy ``error``) or StoreError.
        """
        with self.lock, _open_lock(self.db_path) as lock_fd:
            empty = self._is_empty_locally()
            state = read_state(self.db_path)
            if state is not None and state.db_name == self.db_name:
                self.writer = state.writer_bytes
            else:
                state = None
                self.writer = _local_writer_id(lock_fd, self.writer)
            if self.settings.lease_ttl:
                self.lease = WriterLease(
                    self.store, self.db_name, self.writer.hex(), self.settings.lease_ttl
                )
                self.lease.acquire()
            try:
                interrupted = self.session.interrupted()
                self.session.join()
                if empty:
                    self._open_empty(state)
                else:
                    with self._write_lock():
                        self._holds_write_lock = True
                        try:
                            if interrupted == "async":
                                self._discard_spool()
                            else:
                                self._drain_leftovers()
                            self._open_existing(interrupted)
                        finally:
                            self._holds_write_lock = False
                # only now: a failed open leaves an interrupted session's record for the next
                if self.paused:
                    self.session.end()  # not replicating: no part in the session
                else:
                    self.session.begin(self.settings.durability == "async")
            except BaseException:
                self.session.end()
                if self.lease is not None:
                    self.lease.release()
                raise
            if self.paused and self.lease is not None:
                self.lease.release()  # skip: this process will not write
                self.lease = None
            if self.settings.durability == "async" and not self.paused:
                self._uploader = Uploader(
                    f"bottomless-upload-{self.db_name}", self._drain_guarded,
                    min(0.05, self.settings.max_lag / 10), self.spool.oldest_age,
                )
                self._uploader.start()

    def _drain_leftovers(self) -> None:
        """Upload what an earlier process spooled but did not ship (async mode, or a switch)."""
        state = read_state(self.db_path)
        if state is None or state.db_name != self.db_name:
            return
        self.spool.migrate_legacy()
        while self.spool.read_intent() is not None or self.spool.entries():
            if not self.drain_once(state_required=True):
                break

    def _discard_spool(self) -> None:
        """Drop the spool of a session that a machine restart interrupted: it may have lost
        entries (it is not fsynced), so the local file, not the spool, is the truth now."""
        if self.spool.exists() or os.path.exists(self.spool.intent_path):
            logger.warning(
                "%s: dropping the async spool of a session interrupted by a machine restart;"
                " the new generation started from the local file holds its commits",
                self.db_name,
            )
        self.spool.destroy()

    def _is_empty_locally(self) -> bool:
        if file_size(self.db_path) > 0:
            return False
        return file_size(self.db_path + "-wal") == 0

    def _open_empty(self, state: LocalState | None) -> None:
        manifest = latest_generation(self.store, self.db_name)
        if (
            state is not None and manifest is not None
            and state.generation == manifest.generation and state.seq == 0
            and manifest.db_size == 0 and manifest.digest == state.digest_bytes
            and not self.store.exists(fmt.commit_key(self.db_name, state.generation, 1))
        ):
            self.state = state  # a new, still empty database that another process opened
            return
        self.spool.destroy()  # entries of a database that no longer exists
        if manifest is None:
            remove_local_files(self.db_path, include_db=False)
            self._start_generation(None, "initial", writer=self.writer)
            return
        remove_local_files(self.db_path, include_db=True)
        result = restore_file(
            self.store, self.db_name, self.db_path, parallelism=self.settings.parallelism
        )
        self.state = LocalState(
            self.db_name, result.generation, result.seq, result.digest.hex(), result.page_size,
            self.writer.hex(), self.store.location,
        )
        write_state(self.db_path, self.state)
        logger.info(
            "restored %s from %s (generation %s, commit %d)",
            self.db_path, self.store.location, result.generation, result.seq,
        )

    def _open_existing(self, interrupted: Interrupted | None = None) -> None:
        image = LocalImage(self.db_path)
        try:
            state = read_state(self.db_path)
            if state is not None and state.db_name != self.db_name:
                state = None
            manifest = latest_generation(self.store, self.db_name)
            if manifest is None:
                self._start_generation(image, "initial", writer=self.writer)
                return
            verdict, reason = self._same_lineage(state, manifest, image, interrupted)
            if interrupted == "async" and verdict in ("continue", "branch"):
                # the local file may be ahead of what the bucket and the state file say
                verdict, reason = "restart", _INTERRUPTED
            if verdict == "continue":
                assert state is not None
                self.state = state
                write_state(self.db_path, state)
                newest = max(snapshot_seqs(self.store, self.db_name, state.generation), default=0)
                self._since_snapshot = (state.seq - newest, 0)
                logger.info(
                    "continuing %s: generation %s at commit %d",
                    self.db_name, state.generation, state.seq,
                )
            elif verdict == "branch":
                assert state is not None
                logger.warning("%s: %s; branching a new generation from commit %d",
                               self.db_name, reason, state.seq)
                self._branch(state)
            elif verdict == "restart":
                logger.warning("%s: %s; starting a new generation from the local file",
                               self.db_name, reason)
                self._start_generation(image, "restart", writer=self.writer)
            else:
                self._apply_policy(reason, state, manifest, image)
        finally:
            image.close()

    def _matches(self, image: LocalImage, batch: fmt.PageBatch) -> bool:
        """Whether the local content equals the state right after commit ``batch``."""
        return batch.db_size == image.db_size and all(
            image.page(n) == page for n, page in batch.pages.items()
        )

    def _same_lineage(
        self, state: LocalState | None, manifest: fmt.Manifest, image: LocalImage,
        interrupted: Interrupted | None = None,
    ) -> tuple[str, str]:
        """Decide how the local file relates to the newest generation in the bucket.

        Returns ("continue" | "branch" | "restart" | "conflict", why). ``state`` is updated in
        place when the bucket is one commit ahead and the local file holds that commit too.
        ``interrupted``: a machine restart interrupted the last session, so the state file
        cannot be trusted. After a sync session the local file is checked page by page against
        the bucket's two newest commits (:meth:`_after_sync_restart`); after an async session
        it may be ahead of the bucket (the caller restarts our lineage rather than continue or
        branch it). Either way every commit after the state must be ours (:meth:`_follow`).
        """
        if state is None:
            if manifest.writer == self.writer.hex():
                # our own upload, interrupted before the state file was written
                return "restart", "the previous open was interrupted before it finished"
            return "conflict", "the local file has no bottomless state (never replicated here)"
        if state.generation != manifest.generation:
            if manifest.writer == state.writer and manifest.generation > state.generation:
                # our own generation start whose reply was lost: the local file is the truth
                return "restart", f"generation {manifest.generation} was started but not recorded"
            return "conflict", f"the local file belongs to generation {state.generation}"
        ours = bytes.fromhex(state.writer)
        if interrupted == "sync":
            # the state file may be behind the bucket, or (synchronous below FULL) ahead of
            # the local file: only a check of every page tells where the local file is
            followed, why = self._follow(state, ours)
            if followed is None:
                return "conflict", why
            return self._after_sync_restart(state, image, followed)
        next_key = fmt.commit_key(self.db_name, state.generation, state.seq + 1)
        if self.store.exists(next_key):
            batch = fmt.decode_batch(self.store.get(next_key), next_key)
            if batch.writer != ours or batch.prev != state.digest_bytes:
                return "conflict", (
                    f"another writer added commit {state.seq + 1} after the local file's"
                    f" commit {state.seq}"
                )
            if interrupted == "async":
                followed, why = self._follow(state, ours)
                # the local file may be ahead of all: restart, unless someone else went on
                return ("conflict", why) if followed is None else ("restart", _INTERRUPTED)
            if self.store.exists(fmt.commit_key(self.db_name, state.generation, state.seq + 2)):
                return "conflict", f"the bucket runs more than one commit past {state.seq}"
            if self._matches(image, batch):
                # committed locally, but the process died before recording it
                state.seq, state.digest = batch.seq, batch.digest.hex()
                state.page_size = batch.page_size
                return "continue", ""
            return self._orphan_verdict(state, image)
        if state.seq == 0:
            if manifest.digest != state.digest_bytes:
                return "conflict", "the generation's base snapshot is not the one it recorded"
            if (manifest.db_size, manifest.page_size or image.page_size) != (
                image.db_size, image.page_size
            ):
                return "restart", "the local file changed without bottomless seeing it"
            return "continue", ""
        key = fmt.commit_key(self.db_name, state.generation, state.seq)
        try:
            last = fmt.decode_batch(self.store.get(key), key)
        except ObjectNotFoundError:
            snapshot = fmt.snapshot_key(self.db_name, state.generation, state.seq)
            if self.store.exists(snapshot):  # the commit was compacted away by gc
                kept = fmt.decode_manifest(self.store.get(snapshot), snapshot)
                if kept.commit_digest == state.digest:
                    return "continue", ""
            return "conflict", f"the bucket lacks commit {state.seq} that the local file recorded"
        if last.digest != state.digest_bytes:
            return "conflict", f"{key} is not the object the local file recorded"
        if not self._matches(image, last):
            if last.writer == ours or interrupted == "async":
                return "restart", (
                    f"the local file does not hold commit {state.seq} it recorded (a crash"
                    " between recording and committing)"
                )
            return "conflict", f"the local file does not match commit {state.seq}"
        return "continue", ""

    def _follow(self, state: LocalState, ours: bytes) -> tuple[_Followed | None, str]:
        """Read the commits from the newest snapshot at or before ``state`` (which a machine
        restart may have left behind) to the bucket's newest; ``(None, why)`` unless the
        chain holds, ``state``'s commit is the recorded one and every later commit is ours."""
        base = max((s for s in snapshot_seqs(self.store, self.db_name, state.generation)
                    if s <= state.seq), default=None)
        if base is None:
            return None, f"the commits after {state.seq} were compacted away (gc)"
        try:
            snapshot = read_manifest(self.store, self.db_name, state.generation, base)
        except (CorruptObjectError, ObjectNotFoundError) as e:
            return None, f"snapshot {base} is unusable: {e}"
        if base == state.seq and snapshot.chain_digest != state.digest_bytes:
            return None, f"snapshot {base} is not the state the local file recorded"
        newest = max(commit_numbers(self.store, self.db_name, state.generation), default=base)
        if newest < state.seq:
            return None, f"the bucket lacks commit {state.seq} that the local file recorded"
        followed = _Followed(snapshot)
        try:
            for raw in iter_commits(
                self.store, self.db_name, state.generation, base + 1, newest,
                snapshot.chain_digest, self.settings.parallelism,
            ):
                seq = raw.head.seq
                if seq == state.seq and raw.digest != state.digest_bytes:
                    return None, f"commit {seq} is not the object the local file recorded"
                if seq > state.seq and raw.head.writer != ours:
                    return None, (
                        f"another writer added commit {seq} after the local file's commit"
                        f" {state.seq}"
                    )
                followed.add(raw)
        except (CorruptObjectError, RestoreError) as e:  # a gap, or a broken chain
            return None, f"the commits after {state.seq} cannot be followed: {e}"
        return followed, ""

    def _after_sync_restart(
        self, state: LocalState, image: LocalImage, followed: _Followed
    ) -> tuple[str, str]:
        """Where the local file is after a machine restart interrupted a sync session.

        With ``synchronous=FULL`` it holds every commit it acknowledged: it is at the bucket's
        newest commit, or at the one before (the newest was uploaded but not committed
        locally). Which one is checked page by page, every page of the database: the pages
        commits touched since the snapshot by digest, the others against the snapshot
        (downloaded: a rare path, and cheaper than the full upload of a new generation).
        """
        candidates = followed.candidates()
        newest_seq = candidates[0].seq
        for candidate in candidates:
            try:
                held = image.db_size == candidate.db_size and all(
                    n > candidate.db_size or _page_digest(image.page(n)) == digest
                    for n, digest in candidate.pages.items()
                ) and self._matches_snapshot(
                    image, followed.snapshot, candidate.pages, candidate.db_size
                )
            except (CorruptObjectError, ObjectNotFoundError) as e:
                return "conflict", f"the snapshot to check the local file against is unusable: {e}"
            if held:
                verdict = "continue" if candidate.seq == newest_seq else "branch"
                if candidate.seq != state.seq:
                    logger.info("%s: after a machine restart the local file is at commit %d"
                                " (the state file said %d)", self.db_name, candidate.seq,
                                state.seq)
                state.seq, state.digest = candidate.seq, candidate.digest
                state.page_size = candidate.page_size
                return verdict, (
                    f"commit {newest_seq} reached the bucket but not the local file (a"
                    " machine restart between upload and local commit)"
                )
        return "conflict", (
            f"after a machine restart the local file is at neither of the bucket's two newest"
            f" commits ({' and '.join(str(c.seq) for c in reversed(candidates))}): it lost"
            " commits it had acknowledged (synchronous below FULL?) or is an older copy"
        )

    def _matches_snapshot(
        self, image: LocalImage, snapshot: fmt.Manifest, touched: dict[int, bytes], size: int
    ) -> bool:
        """Whether every page up to ``size`` that is not in ``touched`` is the snapshot's."""
        if any(n not in touched for n in range(snapshot.db_size + 1, size + 1)):
            return False  # a page neither the snapshot nor a later commit holds
        for part in snapshot.parts:
            first, count = int(part["first"]), int(part["pages"])
            wanted = [n for n in range(first, min(first + count, size + 1)) if n not in touched]
            if not wanted:
                continue
            key = str(part["key"])
            raw = fmt.decode_raw(self.store.get(key), key)
            check_part(raw, key, part, snapshot.page_size)
            pages = raw.to_batch().pages
            if any(image.page(n) != pages[n] for n in wanted):
                return False
        return True

    def _orphan_verdict(self, state: LocalState, image: LocalImage) -> tuple[str, str]:
        why = (
            f"commit {state.seq + 1} reached the bucket but not the local file (a crash between"
            " upload and local commit)"
        )
        if state.seq == 0:
            return "branch", why
        key = fmt.commit_key(self.db_name, state.generation, state.seq)
        try:
            last = fmt.decode_batch(self.store.get(key), key)
        except ObjectNotFoundError:
            return "restart", why
        return ("branch", why) if self._matches(image, last) else ("restart", why)

    def _branch(self, state: LocalState) -> None:
        """Start a generation at (generation, seq) of the bucket, leaving an orphan behind."""
        generation = self._new_generation_id()
        manifest = compact(
            self.store, db_name=self.db_name, generation=state.generation, seq=state.seq,
            into=generation, reason="branch", writer=state.writer,
            compression=self.settings.compression, parallelism=self.settings.parallelism,
            part_mb=self.settings.snapshot_part_mb, counter=self._count,
        )
        self.state = replace(state, generation=generation, seq=0, digest=manifest.digest.hex())
        write_state(self.db_path, self.state)
        self.stats.generations_started.append(generation)

    def _apply_policy(
        self, reason: str, state: LocalState | None, manifest: fmt.Manifest, image: LocalImage
    ) -> None:
        policy = self.settings.initial_replication
        if policy == "force":
            logger.warning(
                "%s: %s; initial_replication=force: replicating the local file as a new"
                " generation", self.db_name, reason,
            )
            self._start_generation(image, "force", writer=self.writer)
        elif policy == "skip":
            logger.warning(
                "%s: %s; initial_replication=skip: opening WITHOUT replication. Commits made now"
                " are not uploaded; restores return generation %s.",
                self.db_name, reason, manifest.generation,
            )
            self.paused = True
        else:
            seqs = len(self.store.list_keys(fmt.commits_prefix(self.db_name, manifest.generation)))
            raise ReplicaConflictError(
                f"cannot replicate {self.db_path}: {self.store.location} already holds a replica"
                f" of {self.db_name!r} (generation {manifest.generation}, {manifest.db_size}-page"
                f" snapshot, {seqs} commit(s) after it), and {reason} (local file:"
                f" {image.db_size} pages). Set initial_replication=force (env"
                " LIBSQL_BOTTOMLESS_INITIAL_REPLICATION, URI parameter initial_replication) to"
                " replicate the local file as the newest generation, initial_replication=skip to"
                " open it without replicating, or delete the local file to restore it from the"
                " bucket."
            )

    # ------------------------------------------------------------ generations

    def _new_generation_id(self) -> str:
        latest = max(_generation_ids(self.store, self.db_name), default="")
        generation = fmt.new_generation_id()
        while generation <= latest:  # a clock behind the bucket's newest generation
            time.sleep(0.002)
            generation = fmt.new_generation_id()
        return generation

    def _start_generation(
        self, image: LocalImage | None, reason: str, *, writer: bytes, record: bool = True
    ) -> LocalState:
        """Upload ``image`` (or an empty database) as a new generation and return its state;
        make it current, unless not ``record`` (then the caller records it at its commit
        point: ``image`` holds a commit that has not reached it yet)."""
        generation = self._new_generation_id()
        started = time.monotonic()
        source: PageSource = image if image is not None else _Empty()
        manifest = upload_snapshot(
            self.store, db_name=self.db_name, generation=generation, seq=0, source=source,
            part_mb=self.settings.snapshot_part_mb, parallelism=self.settings.parallelism,
            compression=self.settings.compression, writer=writer.hex(), reason=reason,
            counter=self._count,
            progress=self.progress(
                f"uploading {self.db_name}", source.db_size * source.page_size
            ) if self.progress and source.db_size else None,
        )
        state = LocalState(
            self.db_name, generation, 0, manifest.digest.hex(), source.page_size, writer.hex(),
            self.store.location,
        )
        if record:
            self.state = state
            write_state(self.db_path, state)
        self.stats.generations_started.append(generation)
        self._since_snapshot = (0, 0)
        logger.info(
            "%s: started generation %s (%s, %d pages, %d parts) in %.2fs",
            self.db_name, generation, reason, source.db_size, len(manifest.parts),
            time.monotonic() - started,
        )
        return state

    # ------------------------------------------------------------ commits

    def replicate(self, txn: Transaction, image: Callable[[], LocalImage] | None = None) -> None:
        """Make ``txn`` durable in the store before SQLite commits it locally.

        Raises BottomlessError if it could not be; the caller turns that into an I/O error so
        that SQLite rolls the transaction back. ``image`` builds the post-commit local content,
        used only if the chain position is already taken by an orphan of this writer.
        """
        with self.lock:
            self._pending = None
            self._waiting = None
            # the previous commit's WAL sync is long done (SQLite held the write lock through
            # it): nothing may take that record back any more, whoever's PHASETWO is pending
            self._unsynced = None
            self._unsynced_spool = False
            self._preparer = threading.get_ident()
            if self.paused:
                return
            if self.settings.durability == "async":
                if self._resync:
                    self._resync_from_local()
                self._wait_for_room()
                self._waiting = txn
                return
            try:
                with self.spool_shipped_first(image) as forked:
                    if forked is not None:  # the new generation's snapshot holds this commit
                        self._pending = forked
                    else:
                        self._replicate(txn, image)
            except BaseException as e:
                self._pending = None  # this transaction will not commit: nothing to record
                if isinstance(e, BottomlessError):
                    self.stats.last_error = str(e)
                    self.stats.last_error_time = time.time()
                    logger.error(
                        "%s: commit not replicated, rolling back: %s", self.db_name, e
                    )
                raise

    def transaction_over(self) -> None:
        """SQLite finished a write transaction (``COMMIT_PHASETWO``): its commit point, if it
        had one, is long recorded, and anything still prepared is from one that failed.

        What another connection (another thread) has prepared since is left alone.
        """
        with self.lock:
            if self._preparer not in (None, threading.get_ident()):
                return
            self._preparer = None
            self._pending = None
            self._waiting = None
            self._unsynced = None
            self._unsynced_spool = False

    def sync_failed(self) -> None:
        """A WAL sync failed. Right after a recorded commit, SQLite then reports that commit as
        failed and overwrites its frames (unless a crash lets recovery keep them), so the record
        is taken back: in sync mode the state file goes back one commit (its object becomes an
        orphan: the next commit forks over it, or the next open continues at it if recovery
        kept the frames); in async mode, where the commit may already be on its way, the next
        commit starts a new generation from the local file."""
        with self.lock:
            if self._unsynced is not None:
                write_state(self.db_path, self._unsynced)
                self.state, self._unsynced = self._unsynced, None
                logger.error("%s: the WAL sync after a commit failed; its record is taken back",
                             self.db_name)
            if self._unsynced_spool:
                self._unsynced_spool = False
                self._resync = True
                logger.error("%s: the WAL sync after a commit failed; the next commit starts a"
                             " new generation from the local file", self.db_name)

    def _resync_from_local(self) -> None:
        """Async, after a failed WAL sync: replace what is spooled by a new generation from the
        committed local content (call under SQLite's write lock, in a WAL-mode commit)."""
        budget = self.settings.timeout * (self.settings.max_retries + 1)
        with self.spool.upload_lock(wait=budget) as mine:
            if not mine:
                raise StoreError(
                    f"{self.db_name}: the uploader held the spool for {budget:.0f}s; cannot"
                    " start the new generation a failed WAL sync calls for; commit refused"
                )
            through = self.spool.last_number()
            image = LocalImage(self.db_path)
            try:
                writer = self.state.writer_bytes if self.state else self.writer
                self._start_generation(image, "restart", writer=writer)
            finally:
                image.close()
            self.spool.remove_through(through)
            self.spool.clear_intent()
            self._resync = False

    def commit_failed(self) -> None:
        """SQLite's commit point failed after :meth:`replicate` (a full disk, say): forget what
        it prepared, so that no later commit point records it. If the transaction's object was
        stored, it is an orphan, which the next commit settles."""
        with self.lock:
            self._pending = None
            self._waiting = None

    def _replicate(self, txn: Transaction, image: Callable[[], LocalImage] | None) -> None:
        state = read_state(self.db_path) or self.state
        if state is None:
            raise ReplicaConflictError(f"{self.db_path}: bottomless state file is missing")
        if self.lease is not None:
            self.lease.check()
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
        self._count(data)
        self._last_object_size = len(data)
        logger.debug(
            "PUT %s (%d pages, %d bytes) in %.1f ms",
            key, len(txn.pages), len(data), (time.monotonic() - started) * 1000,
        )
        self._pending = replace(
            state, seq=seq, digest=batch.digest.hex(), page_size=txn.page_size
        )

    def _position_taken(
        self, key: str, state: LocalState, image: Callable[[], LocalImage] | None
    ) -> None:
        existing = fmt.decode_header(self.store.get_range(key, 0, fmt.HEADER_SIZE), key)
        if image is None or not self._own_orphan(key, existing, state):
            raise ReplicaConflictError(
                f"{key} was written by another writer: two writers are replicating"
                f" {self.db_name!r} to {self.store.location}; this commit is refused"
            )
        logger.warning(
            "%s: %s is an orphan of an earlier crash; starting a new generation", self.db_name, key
        )
        local = image()  # the content after this commit: recorded at its commit point
        try:
            self._pending = self._start_generation(
                local, "fork", writer=state.writer_bytes, record=False
            )
        finally:
            local.close()

    def commit_done(self) -> None:
        """SQLite committed locally: record the replicated position in the state file."""
        with self.lock:
            waiting, self._waiting = self._waiting, None
            if waiting is not None:
                self.spool.append(waiting)  # the uploader polls: no wake-up per commit
                self._unsynced_spool = True
                return
            pending, self._pending = self._pending, None
            if pending is None:
                return
            write_state(self.db_path, pending)
            self._unsynced, self.state = self.state, pending
            if pending.seq == 0:
                return  # a new generation over an orphan: its snapshot holds the commit
            self.stats.commits += 1
            self.stats.last_commit_seq = pending.seq
            self.stats.last_commit_time = time.time()
            commits, size = self._since_snapshot
            self._since_snapshot = (commits + 1, size + self._last_object_size)
            self._maybe_snapshot(pending)

    def _maybe_snapshot(self, state: LocalState) -> None:
        """Start a background snapshot once enough log has piled up since the last one."""
        commits, size = self._since_snapshot
        every_commits = self.settings.snapshot_interval_commits
        every_bytes = self.settings.snapshot_interval_mb * 1024 * 1024
        due = (every_commits and commits >= every_commits) or (every_bytes and size >= every_bytes)
        if not due or self._closing or (
            self._compactor is not None and self._compactor.is_alive()
        ):
            return
        self._since_snapshot = (0, 0)
        self._compactor = threading.Thread(
            target=self._snapshot, args=(state.generation, state.seq, state.writer),
            name=f"bottomless-snapshot-{self.db_name}", daemon=True,
        )
        self._compactor.start()

    def _snapshot(self, generation: str, seq: int, writer: str) -> None:
        try:
            compact(
                self.store, db_name=self.db_name, generation=generation, seq=seq,
                compression=self.settings.compression,
                parallelism=min(2, self.settings.parallelism),  # gently, beside live commits
                writer=writer, part_mb=self.settings.snapshot_part_mb, counter=self._count,
            )
        except ObjectExistsError:
            pass  # another process took this very snapshot
        except Exception as e:  # noqa: BLE001 - a failed snapshot must not break commits
            self.stats.last_error = f"snapshot at commit {seq} failed: {e}"
            self.stats.last_error_time = time.time()
            logger.warning("%s: snapshot at commit %d failed: %s", self.db_name, seq, e)

    def wait_snapshot(self, timeout: float | None = None) -> None:
        """Wait for a background snapshot in progress, if any."""
        if self._compactor is not None:
            self._compactor.join(timeout)

    def _count(self, data: bytes) -> None:
        self.stats.objects_written += 1
        self.stats.bytes_written += len(data)

    # ------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """A JSON-ready description of replication for this database."""
        state = read_state(self.db_path) or self.state
        return {
            "db_name": self.db_name,
            "backend": self.store.backend,
            "location": self.store.location,
            "replicating": not self.paused,
            "generation": state.generation if state else None,
            "last_replicated_commit": state.seq if state else None,
            "last_commit_time": self.stats.last_commit_time,
            "durability": self.settings.durability,
            "pending_commits": len(self.spool.entries()),
            "pending_bytes": self.spool.size_bytes(),
            "lag_seconds": round(self.spool.oldest_age(), 3),
            "commits": self.stats.commits,
            "objects_written": self.stats.objects_written,
            "bytes_written": self.stats.bytes_written,
            "last_error": self.stats.last_error,
            "last_error_time": self.stats.last_error_time,
        }

    def close(self) -> None:
        """Flush async commits, finish a snapshot in progress, then release the store."""
        if self._closing or sys.is_finalizing() or os.getpid() != self._pid:
            # closed already (e.g. flushed at exit), too late to do anything, or a forked
            # child's copy: the lease, the session and the uploads are the parent's
            return
        self._closing = True
        if self._uploader is not None:
            budget = self.settings.max_lag + self.settings.timeout * (
                self.settings.max_retries + 1
            )
            try:
                self.wait_durable(budget)
            except DurabilityTimeoutError as e:
                logger.error("%s: closing with commits not uploaded (they stay spooled and"
                             " are uploaded at the next open): %s", self.db_name, e)
            self._uploader.stopping.set()
            self._uploader.wake.set()
            self._uploader.join(5)
        self.wait_snapshot()
        self.session.end(clean=self._nothing_spooled(), make_durable=self._make_durable)
        if self.lease is not None:
            self.lease.release()
        self.spool.close()
        self.store.close()


def _page_digest(page: bytes) -> bytes:
    return hashlib.blake2b(page, digest_size=16).digest()


@dataclass
class _Candidate:
    """A commit the local file may be at: its position and the digests of the pages that
    changed since the snapshot (the others are the snapshot's)."""

    seq: int
    digest: str
    db_size: int
    page_size: int
    pages: dict[int, bytes]


class _Followed:
    """The commits since a snapshot: the two newest, and every page they touched, as of each
    of those two (digests)."""

    def __init__(self, snapshot: fmt.Manifest) -> None:
        self.snapshot = snapshot
        self.last: list[fmt.RawBatch] = []  # the newest, last
        self.at_newest: dict[int, bytes] = {}
        self._undo: dict[int, bytes | None] = {}  # what the newest commit replaced

    def add(self, raw: fmt.RawBatch) -> None:
        """The next commit, in order."""
        self.last = [*self.last[-1:], raw]
        self._undo = {}
        for pgno, page in raw.to_batch().pages.items():
            self._undo[pgno] = self.at_newest.get(pgno)
            self.at_newest[pgno] = _page_digest(page)

    def _at_before(self) -> dict[int, bytes]:
        pages = dict(self.at_newest)
        for pgno, old in self._undo.items():
            if old is None:
                del pages[pgno]
            else:
                pages[pgno] = old
        return pages

    def candidates(self) -> list[_Candidate]:
        """The newest commit, then the one before (which may be the snapshot itself)."""
        def at(raw: fmt.RawBatch, pages: dict[int, bytes]) -> _Candidate:
            return _Candidate(raw.head.seq, raw.digest.hex(), raw.head.db_size,
                              raw.head.page_size, pages)

        snapshot = self.snapshot
        found = [_Candidate(snapshot.seq, snapshot.chain_digest.hex(), snapshot.db_size,
                            snapshot.page_size, {})]
        if len(self.last) == 2:
            found.insert(0, at(self.last[0], self._at_before()))
        if self.last:
            found.insert(0, at(self.last[-1], self.at_newest))
        return found[:2]


_INTERRUPTED = (
    "a machine restart interrupted the last async session (the spool and state file are not"
    " fsynced, so the local file may hold commits the bucket lacks)"
)


class _Empty:
    """The page source of a database with no pages yet."""

    page_size = 0
    db_size = 0

    def page(self, pgno: int) -> bytes:
        raise IndexError(pgno)


def _generation_ids(store: PageStore, db_name: str) -> Iterator[str]:
    for child in store.list_children(fmt.generations_prefix(db_name)):
        if fmt.is_generation_id(child):
            yield child


@contextlib.contextmanager
def _open_lock(db_path: str) -> Iterator[int]:
    """Serialize the open-time checks of one local file across processes (flock)."""
    fd = os.open(db_path + "-bottomless.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def _local_writer_id(lock_fd: int, fresh: bytes) -> bytes:
    """The writer id of this local file, kept in its lock file so that it survives a failed
    first open (a retry must not look like a second writer)."""
    stored = os.pread(lock_fd, 64, 0).strip()
    try:
        writer = bytes.fromhex(stored.decode())
        if len(writer) == len(fresh):
            return writer
    except ValueError:
        pass
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, fresh.hex().encode(), 0)
    return fresh

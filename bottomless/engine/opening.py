"""Opening a database: bring the local file and the bucket in step before SQLite reads it.

:class:`Opening` is the part of :class:`~bottomless.engine.replicator.Replicator` that runs
once per open: it restores a missing or empty database, uploads one the bucket does not have,
continues a known lineage (after the :class:`~bottomless.engine.lineage.LineageCheck`), and
applies ``initial_replication`` to a conflict. It records the position it ends at through the
``record`` callback it is given.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from bottomless import format as fmt
from bottomless.backends.base import PageStore
from bottomless.engine.commit_mark import WriteLock, settle_left_mark
from bottomless.engine.generations import Generations
from bottomless.engine.lineage import Decision, LineageCheck, Verdict
from bottomless.engine.shipper import AsyncShipper
from bottomless.engine.snapshot_policy import SnapshotPolicy
from bottomless.engine.spool import DamagedSpoolError
from bottomless.errors import BottomlessError, ReplicaConflictError
from bottomless.local.files import (
    LocalImage,
    LocalState,
    file_size,
    read_state,
    remove_local_files,
)
from bottomless.local.session import Interrupted, SessionMarker
from bottomless.log import DatabaseLogger
from bottomless.ops.restore import RestoreResult, restore_file
from bottomless.ops.snapshots import read_manifest, snapshot_seqs
from bottomless.ops.targets import commit_header, commit_numbers, latest_generation
from bottomless.settings import Settings


def is_empty_locally(db_path: str) -> bool:
    """Whether the database has no content on this machine (no pages, no WAL)."""
    if file_size(db_path) > 0:
        return False
    return file_size(db_path + "-wal") == 0


class Opening:
    """One open of a database's replication (see the module docstring)."""

    def __init__(
        self, db_path: str, db_name: str, settings: Settings, store: PageStore,
        log: DatabaseLogger, *, session: SessionMarker, shipper: AsyncShipper,
        generations: Generations, snapshots: SnapshotPolicy, write_lock: WriteLock,
        record: Callable[[LocalState], None],
    ) -> None:
        self.db_path = db_path
        self.db_name = db_name
        self.settings = settings
        self.store = store
        self.log = log
        self.session = session
        self.shipper = shipper
        self.generations = generations
        self.snapshots = snapshots
        self._write_lock = write_lock
        self._record = record
        self.writer = b""
        self.paused = False

    def run(self, empty: bool, state: LocalState | None, writer: bytes) -> bool:
        """Open the database (``empty``: nothing local; ``state``: its state file, if it is
        this database's) as ``writer``; return whether replication is paused (``skip``)."""
        self.writer = writer
        interrupted = self.session.interrupted()
        self.session.join()
        if empty:
            self._open_empty(state)
        else:
            # the write lock keeps commits out; the upload lock, another process's uploader
            with self._write_lock(), self.shipper.sole_uploader():
                self.shipper.holds_write_lock = True
                try:
                    self._open_with_spool(interrupted)
                except DamagedSpoolError as e:
                    if interrupted == "sync":
                        raise  # the local file may be behind the bucket: no restart from it
                    self._open_existing("async")  # first: a crash before it finds the damage
                    self._set_aside(e)
                finally:
                    self.shipper.holds_write_lock = False
        # only now: a failed open leaves an interrupted session's record for the next
        if self.paused:
            self.session.end()  # not replicating: no part in the session
        else:
            self.session.begin(self.settings.durability == "async")
        return self.paused

    def _open_with_spool(self, interrupted: Interrupted | None) -> None:
        if interrupted == "async":
            self._discard_spool()
            self._open_existing(interrupted)
            return
        settle_left_mark(self.shipper.spool, self.db_path)
        if self.shipper.spool.resync_needed():
            self._resync()  # before anything spooled goes up on top of the gap
        else:
            self.shipper.drain_leftovers()
            self._open_existing(interrupted)

    def _set_aside(self, damage: DamagedSpoolError) -> None:
        """The spool is damaged: what it held is in the local file (entries are spooled once
        committed there), which was checked against the bucket as after a machine restart
        that lost spool entries (a new generation from it if it is ahead): set the spool
        aside."""
        aside = self.shipper.spool.set_aside()
        self.log.error("%s; the spool is set aside as %s, and the local file, which holds"
                       " every commit spooled, replicated from instead", damage, aside)

    def _resync(self) -> None:
        """A commit reached the local file but not the spool before this open (its spooling
        failed, and the process ended before anything resynced): the bucket lacks it, so the
        local file becomes a new generation, unless another writer has written the bucket
        since (a failover): then it is a conflict, settled by ``initial_replication``."""
        manifest = latest_generation(self.store, self.db_name)
        if manifest is not None and not self._newest_is_ours(manifest):
            image = LocalImage(self.db_path)
            try:
                self._apply_policy(
                    "another writer has written the bucket since this file's last session, which"
                    " left a commit in the local file that it could not spool", manifest, image,
                )
            finally:
                image.close()
            if not self.paused:  # forced: the new generation holds what was spooled
                spool = self.shipper.spool
                spool.remove_through(spool.last_number())
                spool.intent.clear()
                spool.mark_resync(False)
            return
        self.log.warning("a commit of the last session reached the local file but not the"
                         " bucket; starting a new generation from the local file")
        self.shipper.restart_from_local(self.writer)

    def _newest_is_ours(self, manifest: fmt.Manifest) -> bool:
        """Whether the bucket's newest generation ends where this writer left it: its newest
        commit is this writer's, or, with none (gc may have removed them), its newest
        snapshot was made by this writer or stands at the state file's commit (gc builds
        snapshots under writer ids of its own)."""
        generation = manifest.generation
        commits = commit_numbers(self.store, self.db_name, generation)
        if commits:
            return commit_header(self.store, self.db_name, generation,
                                 commits[-1]).writer == self.writer
        newest = read_manifest(self.store, self.db_name, generation,
                               max(snapshot_seqs(self.store, self.db_name, generation)))
        state = read_state(self.db_path)
        return newest.writer == self.writer.hex() or (
            state is not None and state.generation == generation
            and newest.commit_digest == state.digest
        )

    def _discard_spool(self) -> None:
        """Drop the spool of a session that a machine restart interrupted: it may have lost
        entries (it is not fsynced), so the local file, not the spool, is the truth now."""
        if self.shipper.spool.exists() or os.path.exists(self.shipper.spool.intent.path):
            self.log.warning(
                "dropping the async spool of a session interrupted by a machine restart;"
                " the new generation started from the local file holds its commits"
            )
        self.shipper.spool.destroy()

    def _open_empty(self, state: LocalState | None) -> None:
        manifest = latest_generation(self.store, self.db_name)
        if (
            state is not None and manifest is not None
            and state.generation == manifest.generation and state.seq == 0
            and manifest.db_size == 0 and manifest.digest == state.digest_bytes
            and not self.store.exists(fmt.commit_key(self.db_name, state.generation, 1))
        ):
            self._record(state)  # a new, still empty database another process opened
            return
        self.shipper.spool.destroy()  # entries of a database that no longer exists
        if manifest is None:
            remove_local_files(self.db_path, include_db=False)
            self._record(self.generations.start(None, "initial", writer=self.writer))
            return
        remove_local_files(self.db_path, include_db=True)

        def record(result: RestoreResult) -> None:
            # before the file takes its place: a file without its record would be a conflict
            # at every later open; a record without its file is an empty database, restored
            # again at the next one
            self._record(LocalState(
                self.db_name, result.generation, result.seq, result.digest.hex(),
                result.page_size, self.writer.hex(), self.store.location,
            ))

        result = restore_file(self.store, self.db_name, self.db_path,
                              parallelism=self.settings.parallelism, before_replace=record)
        self.log.info("restored %s from %s (generation %s, commit %d)", self.db_path,
                      self.store.location, result.generation, result.seq)

    def _open_existing(self, interrupted: Interrupted | None = None) -> None:
        image = LocalImage(self.db_path)
        try:
            state = read_state(self.db_path)
            if state is not None and state.db_name != self.db_name:
                state = None
            manifest = latest_generation(self.store, self.db_name)
            if manifest is None:
                self._record(self.generations.start(image, "initial", writer=self.writer))
                return
            check = LineageCheck(self.store, self.db_name, self.writer, self.settings.parallelism)
            # changed since the last clean close at the state's commit: written without us?
            outside = self.session.changed_outside(
                (state.generation, state.seq) if state is not None else None)
            if outside and state is not None and self._differs_from_bucket(state, image):
                decision = Decision(Verdict.CONFLICT, outside)
            else:
                decision = check.decide(state, manifest, image, interrupted)
            self._act_on(decision, state, manifest, image)
        finally:
            image.close()

    def _differs_from_bucket(self, state: LocalState, image: LocalImage) -> bool:
        """Whether the local content differs from the bucket's state at ``state``'s commit,
        page by page (a download of the database: only when the file's stamp changed since
        the last clean close). False if that cannot be told: the usual checks decide.

        The copy goes into a directory of its own beside the database, readable by its owner
        only, with a fixed name: opens are serialized, and one killed while comparing leaves
        it for the next comparison to remove."""
        directory = self.db_path + "-bottomless-check"
        shutil.rmtree(directory, ignore_errors=True)
        try:
            os.mkdir(directory, 0o700)
            stored_path = os.path.join(directory, "copy.db")
            restore_file(self.store, self.db_name, stored_path, generation=state.generation,
                         seq=state.seq, parallelism=self.settings.parallelism)
            stored = LocalImage(stored_path)
            try:
                return stored.db_size != image.db_size or not all(
                    _same_content(n, image.page(n), stored.page(n))
                    for n in range(1, image.db_size + 1)
                )
            finally:
                stored.close()
        except (BottomlessError, OSError) as e:  # the bucket, or room for a copy: no answer
            self.log.warning("the local file changed since its last clean close, and could"
                             " not be compared with the bucket (%s): going on as after a"
                             " crash", e)
            return False
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def _act_on(
        self, decision: Decision, state: LocalState | None, manifest: fmt.Manifest,
        image: LocalImage,
    ) -> None:
        """Carry out the lineage check's verdict."""
        found = decision.state
        if found is not None and state is not None and found.seq != state.seq:
            self.log.info("the local file is at commit %d (the state file said %d)",
                          found.seq, state.seq)
        if decision.verdict is Verdict.CONTINUE:
            assert found is not None
            self._record(found)
            newest = max(snapshot_seqs(self.store, self.db_name, found.generation), default=0)
            self.snapshots.reset(found.seq - newest)
            self.log.info("continuing: generation %s at commit %d", found.generation, found.seq)
        elif decision.verdict is Verdict.BRANCH:
            assert found is not None
            self.log.warning("%s; branching a new generation from commit %d", decision.reason,
                             found.seq)
            self._record(self.generations.branch(found))
        elif decision.verdict is Verdict.RESTART:
            self.log.warning("%s; starting a new generation from the local file",
                             decision.reason)
            self._record(self.generations.start(image, "restart", writer=self.writer))
        else:
            self._apply_policy(decision.reason, manifest, image)

    def _apply_policy(self, reason: str, manifest: fmt.Manifest, image: LocalImage) -> None:
        policy = self.settings.initial_replication
        if policy == "force":
            self.log.warning("%s; initial_replication=force: replicating the local file as a"
                             " new generation", reason)
            self._record(self.generations.start(image, "force", writer=self.writer))
        elif policy == "skip":
            self.log.warning(
                "%s; initial_replication=skip: opening WITHOUT replication. Commits made now"
                " are not uploaded; restores return generation %s.", reason,
                manifest.generation,
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
                " bucket.", db_name=self.db_name,
                key=fmt.snapshot_key(self.db_name, manifest.generation, 0),
            )


def _same_content(pgno: int, local: bytes, stored: bytes) -> bool:
    """Whether a local page holds the stored one's content: on page 1, the bytes SQLite
    rewrites without a change of content (any journal-mode switch) are left out: the file
    format versions (18-19), the change counter (24-27), and the version-valid-for number
    and SQLite version that wrote the file (92-99)."""
    if pgno != 1:
        return local == stored
    return all(local[a:b] == stored[a:b] for a, b in ((0, 18), (20, 24), (28, 92), (100, None)))

"""A read replica that follows the bucket: :class:`Replica`.

``Replica(path, settings).start()`` restores ``path`` from the store (or picks up where the last
follower of ``path`` stopped), then a background thread in this process applies every new commit as
it appears. Readers open ``path`` read-only with any SQLite library and see whole commits, in
commit order (the apply protocol is in :mod:`bottomless.replica.local`).

The thread's loop: ask for the next commit (one GET; a 404 means nothing new); apply what came back
as one WAL transaction and ask again at once, with a window of parallel GETs growing while every
round finds all it asked for; after a 404, sleep ``poll_interval`` seconds. After a 404, and at
most every ``generation_check_interval`` seconds, it looks for a newer generation, and now and then
whether gc deleted the commits it needs: either makes it restore the newest state and write the
pages that differ into the WAL.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import apsw

from bottomless import format as fmt
from bottomless.backends.base import PageStore
from bottomless.backends.counting import CountingStore
from bottomless.backends.registry import open_store
from bottomless.errors import (
    BottomlessError,
    ConfigError,
    CorruptObjectError,
    ReplicaConflictError,
    ReplicaNotFoundError,
    RestoreError,
    StoreError,
)
from bottomless.local.files import file_size, state_path
from bottomless.log import for_database
from bottomless.replica.bookmark import Bookmark
from bottomless.replica.feed import Feed, Restored, check_next, successor_of
from bottomless.replica.live import live_replicas
from bottomless.replica.local import ReplicaFile, WalNotEmptyError
from bottomless.replica.position import FollowerLock, Point, Position, read_position
from bottomless.replica.progress import Progress
from bottomless.replica.promote import Promotion, promote
from bottomless.settings import Settings, resolve

#: the check for commits deleted by gc runs on the first idle check and then every this many
GC_CHECK_EVERY = 10
#: the longest wait between retries after store errors
MAX_BACKOFF = 30.0
#: errors that may pass: the follower retries them, with a growing delay
TRANSIENT = (StoreError, RestoreError, ReplicaNotFoundError, apsw.BusyError)


class Replica:
    """A read replica of a bottomless database at ``path``, kept up to date from the store.

    ``settings`` say where the store is (``None``: from ``LIBSQL_BOTTOMLESS_*``); the database
    is ``db_name``, else ``settings.db_name``, else the base name of ``path``. Use as a
    context manager, or call :meth:`start` and :meth:`stop`.

    A missing or empty ``path`` is restored first; a file written by an earlier follower of the
    same database continues from its position record. Any other existing file is refused
    (ReplicaConflictError) unless ``overwrite`` is set, and a database the bottomless writer
    replicates (it has a ``-bottomless`` state file) always is.

    ``poll_interval`` is the pause after a poll found nothing new (each idle poll is one GET);
    ``generation_check_interval`` the least time between two looks for a new generation (one LIST
    each); ``max_window`` how many commits one round asks for when far behind (they download
    ``settings.parallelism`` at a time and are applied as one WAL transaction). The WAL is
    checkpointed every ``checkpoint_frames`` frames and emptied once it holds ``max_wal_frames``.
    """

    def __init__(
        self, path: str, settings: Settings | None = None, *, poll_interval: float = 1.0,
        generation_check_interval: float = 30.0, db_name: str | None = None,
        overwrite: bool = False, max_window: int = 32, checkpoint_frames: int = 1000,
        max_wal_frames: int = 10000,
    ) -> None:
        if not 0.01 <= poll_interval <= 3600:
            raise ConfigError(f"poll_interval={poll_interval!r}: use 0.01 to 3600 seconds",
                              field="poll_interval", value=poll_interval)
        self.settings = resolve(settings)
        self.path = os.path.abspath(path)
        self.db_name = fmt.validate_db_name(
            db_name or self.settings.db_name or fmt.default_db_name(path))
        self.poll_interval = poll_interval
        self.generation_check_interval = generation_check_interval
        self.overwrite = overwrite
        self._max_window = max_window
        self._file = ReplicaFile(self.path, self.db_name, checkpoint_frames=checkpoint_frames,
                                 max_wal_frames=max_wal_frames)
        self._log = for_database(__name__, self.db_name)
        self._feed: Feed | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._progress = Progress(self.path)
        self._redo: Position | None = None
        self._held: Callable[[], None] | None = None  # an apply waiting for an empty WAL
        self._held_cleanup: Callable[[], None] | None = None
        self._check_generations_now = False  # a waiter holds a bookmark the file is behind
        self._last_lineage_check = float("-inf")
        self._lineage_checks = 0
        self._lock = FollowerLock(self.path)  # held while following: one follower per file

    # ------------------------------------------------------------ lifecycle

    def start(self) -> Replica:
        """Restore or resume ``path`` (in the calling thread), then follow in the background.

        Raises ReplicaNotFoundError if the store has no such database, ReplicaConflictError
        if ``path`` is not this database's replica, StoreError, CorruptObjectError.
        """
        if self._thread is not None and (self._thread.is_alive() or not self._stopping.is_set()):
            raise BottomlessError(f"{self.path}: this replica has already been started")
        self._thread = None  # never started, or stopped: (again) from where the file is
        self._stopping.clear()
        self._lock.acquire()
        try:
            store = CountingStore(open_store(self.settings, read_only=True))
            self._feed = Feed(store, self.db_name, max_window=self._max_window,
                              parallelism=self.settings.parallelism)
            self._bring_up()
        except BaseException:
            self._file.close()
            if self._feed is not None:
                self._feed.close()
            self._lock.release()
            raise
        self._thread = threading.Thread(target=self._run, name=f"bottomless-follow-{self.db_name}",
                                        daemon=True)
        self._thread.start()
        live_replicas.add(self)  # reported by bottomless.metrics until it stops
        return self

    def _bring_up(self) -> None:
        self._file.remove_leftover_restores()  # this follower holds the follower lock
        if os.path.exists(state_path(self.path)):
            raise ReplicaConflictError(
                f"{self.path} is replicated by the bottomless writer (it has a"
                f" {os.path.basename(state_path(self.path))} state file): a replica needs a"
                " path of its own")
        position = read_position(self.path)
        if position is not None and position.db_name != self.db_name:
            raise ReplicaConflictError(f"{self.path} is a replica of {position.db_name!r}, not"
                                       f" of {self.db_name!r}")
        if position is None and file_size(self.path) > 0 and not self.overwrite:
            raise ReplicaConflictError(
                f"{self.path} exists and is not a bottomless replica (no"
                f" {os.path.basename(self.path)}-bottomless-replica record); remove it or pass"
                " overwrite=True (CLI: --overwrite)")
        if position is None or file_size(self.path) == 0 or not self._file.installed(position):
            # (not installed: a follower was stopped in the middle of replacing the file)
            assert self._feed is not None
            restored = self._feed.restore(self.path)
            try:
                self._file.install(restored.path, self._point_of(restored),
                                   restored.result.page_size)
            finally:
                restored.discard()
            self._progress.restored("initial restore", restored.result)
        resumed = self._file.open()
        self._progress.point, self._redo = resumed.point, resumed.redo

    def start_if_needed(self) -> None:
        """:meth:`start`, unless the follower runs already."""
        if self._thread is None or self._stopping.is_set():
            self.start()

    @property
    def store(self) -> PageStore:
        """The store the replica follows (while started)."""
        if self._feed is None:
            raise BottomlessError(f"{self.path}: this replica has not been started")
        return self._feed.store

    def stop_at(self) -> tuple[Point, int]:
        """:meth:`stop`, and return the commit the file holds then, and its page size."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        page_size = self._file_page_size()  # the file is still open: read it before closing
        self.stop()
        point = self._progress.point
        if point is None or self.error is not None:
            raise BottomlessError(f"{self.path}: the replica holds no consistent commit"
                                  f" ({self.error or 'never restored'})")
        return point, page_size

    def promote(self, *, force: bool = False, timeout: float | None = None) -> Promotion:
        """Take over as the writer (see :func:`bottomless.replica.promote.promote`): wait for
        the writer's lease to expire (or take it at once with ``force``, after a human
        decision), apply every commit in the bucket, and leave ``path`` ready for
        ``bottomless.connect(path, settings)`` to continue the lineage. The follower stops."""
        started_here = self._thread is None
        self._lock.kept = True  # until the file is the writer's: no follower may start
        try:
            return promote(self, force=force, timeout=timeout)
        except BaseException:
            if started_here:
                self.stop()  # no follower of its own left running
            raise
        finally:
            self._lock.kept = False
            if self._stopping.is_set():
                self._lock.release()

    def stop(self, timeout: float | None = None) -> None:
        """Stop following and close the replica's connection. The file stays at the last
        commit applied; a later :meth:`start` (in any process) continues from there."""
        self._stopping.set()
        self._wake.set()
        live_replicas.discard(self)
        if self._thread is not None:
            self._thread.join(timeout)
        self._file.close()
        if self._feed is not None:
            self._feed.close()
        if self._held_cleanup is not None:  # a restored file waiting to be applied
            self._held_cleanup()
        if self._thread is None or not self._thread.is_alive():  # else it does, at its end
            self._lock.release()
        self._progress.wake_waiters()

    def __enter__(self) -> Replica:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    @property
    def error(self) -> BaseException | None:
        """What stopped the follower, if something did (a corrupt object, a foreign write)."""
        return self._progress.error

    # ------------------------------------------------------------ the loop

    def _run(self) -> None:
        try:
            self._follow()
        finally:
            if self._stopping.is_set():  # stop() may have given up waiting for this thread
                self._lock.release()

    def _follow(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                progressed = self._step()
                failures = 0
            except TRANSIENT as e:  # the store or a lock: try again, later and later
                failures += 1
                self._log.warning("follower: %s (retrying)", e)
                self._progress.noted(e)
                self._sleep(min(self.poll_interval * 2 ** failures, MAX_BACKOFF))
                continue
            except BaseException as e:  # noqa: BLE001 - anything else stops the follower
                self._log.error("follower stopped: %s", e)
                self._progress.noted(e, fatal=True)
                return
            if not progressed:
                self._sleep(self.poll_interval)

    def _sleep(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def _step(self) -> bool:
        """One round; whether it changed anything (else the loop sleeps)."""
        if self._held is not None:
            if not self._file.checkpoint(truncate=True):
                return False  # readers still use the WAL
            self._held()  # if it fails it stays held, and is tried again
            self._held = self._held_cleanup = None
            return True
        if self._redo is not None:
            self._redo_last(self._redo)
            return True
        point = self._progress.point
        assert self._feed is not None and point is not None
        raws = self._feed.fetch(point.generation, point.seq + 1)
        self._progress.polled(raws[-1].head.seq if raws else None)
        if raws:
            self._apply_commits(raws)
            return True
        return self._when_idle(point)

    def _apply_commits(self, raws: list[fmt.RawBatch]) -> None:
        """Check the chain, then apply runs of commits of one page size as one transaction."""
        point = self._progress.point
        assert point is not None
        prev, seq = bytes.fromhex(point.digest), point.seq
        groups: list[list[fmt.RawBatch]] = []
        successor = None
        for raw in raws:
            seq += 1
            key = fmt.commit_key(self.db_name, point.generation, seq)
            successor = successor_of(raw, key, point.generation, seq, prev)
            if successor is not None:
                break  # the generation ends here
            check_next(raw, key, point.generation, seq, prev)
            prev = raw.digest
            if not groups or raw.head.page_size != groups[-1][-1].head.page_size:
                groups.append([])
            groups[-1].append(raw)
        branched = None
        if successor is not None:
            assert self._feed is not None
            branched = self._feed.branched_at(successor, point.generation)
            if branched is not None and branched < seq - 1:
                # the commits after the branch point are orphans: the writer did not commit them
                groups = [g for g in ([r for r in group if r.head.seq <= branched]
                                      for group in groups) if g]
            else:
                branched = None
        for group in groups:
            if not self._apply_group(point.generation, group):
                return  # held until the WAL is empty; the rest is fetched again
        if successor is None:
            return
        if branched is None:
            reason = (f"generation {point.generation} ended at commit {seq - 1}; it continues"
                      f" as generation {successor}")
        else:
            reason = (f"generation {point.generation} continues as {successor} from commit"
                      f" {branched}; its commit(s) {branched + 1}..{seq - 1} were uploaded by a"
                      " writer killed before it committed them locally, and are left out")
            applied = self._progress.point
            if applied is not None and applied.seq > branched:
                reason += (f" (this replica had applied them up to commit {applied.seq}: its"
                           f" readers go back to commit {branched})")
        self._switch(reason, generation=successor)

    def _apply_group(self, generation: str, group: list[fmt.RawBatch]) -> bool:
        pages: dict[int, memoryview] = {}
        for raw in group:
            size = raw.head.page_size
            view = memoryview(raw.payload)
            pages.update((n, view[i * size:(i + 1) * size]) for i, n in enumerate(raw.numbers))
        last = group[-1].head
        target = Point(generation, last.seq, group[-1].digest.hex(), last.created_ms)
        first = group[0]
        changes = first.head.page_size != self._file_page_size()
        if changes and len(first.numbers) < first.head.db_size:
            key = fmt.commit_key(self.db_name, generation, first.head.seq)
            raise CorruptObjectError(
                f"{key}: the page size changes to {first.head.page_size} but the commit holds"
                f" {len(first.numbers)} of {first.head.db_size} pages", key=key)

        def run() -> None:
            self._file.apply(sorted(pages.items()), db_size=last.db_size,
                             page_size=last.page_size, target=target)
            self._progress.applied(target, len(group))
            self._file.checkpoint()

        return self._try(run)

    def _try(self, run: Callable[[], None], cleanup: Callable[[], None] | None = None) -> bool:
        """Run an apply; if it waits for an empty WAL (a page-size change), empty it now or
        hold the apply until a later round can (``cleanup`` runs once it has run). Returns
        whether it ran."""
        try:
            try:
                run()
            except WalNotEmptyError:
                if not self._file.checkpoint(truncate=True):
                    raise
                run()
        except WalNotEmptyError:
            self._log.info("the page size changes: waiting for readers to leave the WAL")

            def later() -> None:
                run()
                if cleanup:
                    cleanup()

            self._held, self._held_cleanup = later, cleanup
            return False
        except BaseException:
            if cleanup:
                cleanup()
            raise
        if cleanup:
            cleanup()
        return True

    def _file_page_size(self) -> int:
        assert self._file.position is not None
        return self._file.position.page_size

    # ------------------------------------------------------------ generations and gc

    def _when_idle(self, point: Point) -> bool:
        """After a 404: now and then, look for a newer generation and for deleted commits."""
        assert self._feed is not None
        now = time.monotonic()
        early, self._check_generations_now = self._check_generations_now, False
        if not early and now - self._last_lineage_check < self.generation_check_interval:
            return False
        self._last_lineage_check = now
        self._lineage_checks += 1
        newer = self._feed.newer_generation(point.generation)
        if newer is not None:
            self._switch(f"the writer started generation {newer}", generation=newer)
            return True
        if (early or self._lineage_checks % GC_CHECK_EVERY == 1) and self._feed.commits_gone(
            point.generation, point.seq
        ):
            self._switch(f"commit {point.seq + 1} of generation {point.generation} is gone"
                         " (deleted by gc): restoring the newest state")
            return True
        return False

    def _switch(self, reason: str, *, generation: str | None = None,
                seq: int | None = None) -> None:
        """Restore a state into a temporary file and write the pages that differ into the
        WAL: readers see one more commit."""
        assert self._feed is not None
        restored = self._feed.restore(self.path, generation=generation, seq=seq)
        result = restored.result
        target = self._point_of(restored)

        def run() -> None:
            written = self._file.apply_restored(restored.path, db_size=result.db_size,
                                                page_size=result.page_size, target=target)
            self._log.warning("%s; %d pages written", reason, written)
            self._progress.restored(reason, result, written)
            self._progress.applied(target, 0, new_generation=True)
            self._file.checkpoint()

        self._try(run, restored.discard)  # run() says what happened, once it has

    def _redo_last(self, redo: Position) -> None:
        """Apply again what the last follower may or may not have applied (see
        :meth:`ReplicaFile.open`): the file holds its base or its result, so the same commits,
        applied as one transaction again, give the result. Until that succeeds nothing else
        is applied (a commit on top of the wrong one would show readers a mix)."""
        assert self._feed is not None and redo.base is not None
        base, target = redo.base, redo.current
        if redo.kind == "commits" and base.generation == target.generation:
            try:
                raws = list(self._feed.commits(base.generation, base.seq + 1, target.seq,
                                               bytes.fromhex(base.digest)))
            except RestoreError as e:  # gone: the newest state will do
                self._switch(f"commits {base.seq + 1}..{target.seq} cannot be applied again"
                             f" ({e}): restoring the newest state")
                self._redo = None
                return
            if len({r.head.page_size for r in raws}) == 1:
                self._apply_group(base.generation, raws)
                self._redo = None
                return
        try:
            self._switch("the last restore is done again", generation=target.generation,
                         seq=target.seq)
        except RestoreError:
            self._switch("the last restore cannot be done again: restoring the newest state")
        self._redo = None

    # ------------------------------------------------------------ status

    def _point_of(self, restored: Restored) -> Point:
        result = restored.result
        return Point(result.generation, result.seq, result.digest.hex(), result.created_ms)

    def status(self) -> dict[str, Any]:
        """A JSON-ready description: where the replica is and what it cost.

        ``generation`` and ``seq``: the commit the file holds; ``newest_known_seq``: the newest
        commit of that generation seen in the store; ``lag_seconds``: from the creation of the
        last applied commit to its apply; ``requests``: store requests by kind (``get``,
        ``get_missing`` for the 404 of an idle poll, ``get_range``, ``list``);
        ``bytes_downloaded``; ``commits_applied``; ``errors`` (how many rounds failed) and
        ``last_error``; ``stopped_by``;
        ``last_restore``: why and when the file was last restored (and, when that was into
        the WAL, how many of the database's pages differed and were written).
        """
        counts, downloaded = self._feed.store.counts() if self._feed else ({}, 0)
        fields = self._progress.fields()
        return {
            "db_name": self.db_name, "path": self.path,
            "location": self._feed.store.location if self._feed else None,
            "running": self._running(), **fields,
            "requests": counts, "bytes_downloaded": downloaded,
            "wal_frames": self._file.wal_frames() if fields["seq"] is not None else 0,
            "checkpoints": self._file.checkpoints, "poll_interval": self.poll_interval,
        }

    def _running(self) -> bool:
        return bool(self._thread and self._thread.is_alive())

    # ------------------------------------------------------------ read-your-writes

    def wait_for(self, bookmark: str, timeout: float | None = None) -> None:
        """Block until the commit ``bookmark`` names (see :func:`bottomless.position`) is
        applied, or a later one of its generation, or the replica follows a newer generation
        (writers start one from their local file, which holds every earlier commit).

        Raises ReplicaTimeoutError (a TimeoutError) after ``timeout`` seconds, ConfigError for
        a malformed bookmark, BottomlessError if the follower stopped or is not running.
        """

        def nudge(mark: Bookmark) -> None:  # poll now, not at the end of the current pause
            point = self._progress.point
            if point is not None and (mark.generation, mark.seq) > (point.generation,
                                                                    point.seq):
                self._check_generations_now = True  # once per call: a new one, or gc
            self._wake.set()

        self._progress.wait_for(bookmark, timeout, running=self._running, nudge=nudge)

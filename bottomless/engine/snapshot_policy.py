"""When to take a snapshot: after ``snapshot_interval_commits`` commits or
``snapshot_interval_mb`` MiB of commit objects since the newest one, built in the background
from the bucket (so it needs no lock on the local file): in a child process where the store
allows (``snapshot_worker``), else in a thread."""

from __future__ import annotations

import threading

from bottomless import log
from bottomless.backends.base import PageStore
from bottomless.engine.snapshot_worker import (
    SnapshotJob,
    build_in_child,
    can_use_child,
    working_directory,
)
from bottomless.engine.stats import Stats
from bottomless.errors import ObjectExistsError, SnapshotProcessError
from bottomless.local.files import LocalState
from bottomless.settings import Settings

#: this many children in a row that exit with an error status before they answer (a Python that
#: cannot start here, say) send snapshots to a thread
SILENT_FAILURES = 3


class SnapshotPolicy:
    """Counts the log since the newest snapshot and starts one when it is due."""

    def __init__(self, store: PageStore, db_name: str, settings: Settings, stats: Stats) -> None:
        self.store = store
        self.db_name = db_name
        self.settings = settings
        self.stats = stats
        self.log = log.for_database(__name__, db_name)
        self._commits = 0
        self._bytes = 0
        self._thread: threading.Thread | None = None
        #: build snapshots in a child process (until a child cannot even start here)
        self._use_child = settings.snapshot_worker == "process"
        #: children in a row that exited with an error status and no answer
        self._silent = 0
        self._failure: str | None = None  # the last snapshot's failure, until one succeeds
        #: where relative paths in the settings were resolved when the store was opened (None:
        #: nowhere any more, the working directory was removed)
        self._cwd = working_directory() if self._use_child else None
        #: no new snapshot starts once the database is closing
        self.closing = False

    def reset(self, commits: int = 0) -> None:
        """A snapshot (or a new generation) is ``commits`` commits old."""
        self._commits, self._bytes = commits, 0

    def commit_added(self, state: LocalState, object_size: int) -> None:
        """Commit ``state.seq`` (an object of ``object_size`` bytes) is recorded; start a
        background snapshot at it once enough log has piled up since the last one."""
        self._commits += 1
        self._bytes += object_size
        every_commits = self.settings.snapshot_interval_commits
        every_bytes = self.settings.snapshot_interval_mb * 1024 * 1024
        due = (every_commits and self._commits >= every_commits) or (
            every_bytes and self._bytes >= every_bytes
        )
        if not due or self.closing or self.running:
            return
        self.reset()
        self._thread = threading.Thread(
            target=self._snapshot, args=(state.generation, state.seq, state.writer),
            name=f"bottomless-snapshot-{self.db_name}", daemon=True,
        )
        self._thread.start()

    def _snapshot(self, generation: str, seq: int, writer: str) -> None:
        job = SnapshotJob(self.db_name, generation, seq, writer,
                          parallelism=min(2, self.settings.parallelism))  # gently, beside commits
        try:
            if self._use_child and can_use_child(self.store):
                try:
                    report = build_in_child(job, self.settings, self.store, cwd=self._cwd)
                except SnapshotProcessError as e:
                    self._silent = self._silent + 1 if e.silent else 0
                    if not e.at_start and self._silent < SILENT_FAILURES:
                        raise
                    self._use_child = False  # it never will: build them here from now on
                    self.log.warning("snapshots are built in a thread from now on: %s", e)
                else:
                    self._silent = 0
                    self.stats.count_objects(report.objects, report.bytes)
                    self._succeeded()
                    return
            job.run(self.store, self.settings, self.stats.count_object)
            self._succeeded()
        except ObjectExistsError:
            pass  # another process took this very snapshot
        except Exception as e:  # noqa: BLE001 - a failed snapshot must not break commits
            self._failure = f"snapshot at commit {seq} failed: {e}"
            self.stats.error(self._failure)
            self.log.warning("snapshot at commit %d failed: %s", seq, e)

    def _succeeded(self) -> None:
        """A snapshot was built: an earlier one's failure is over (``last_error``)."""
        failure, self._failure = self._failure, None
        if failure is not None:
            self.stats.error_over(failure)

    @property
    def running(self) -> bool:
        """Whether a background snapshot is being built now."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for a background snapshot in progress, if any."""
        if self._thread is not None:
            self._thread.join(timeout)

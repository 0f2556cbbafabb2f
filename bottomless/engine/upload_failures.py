"""What the async uploader's failures mean for commits.

A failed turn is remembered (for ``status`` and back-pressure) until an upload succeeds. A
failure retrying can fix (the store unreachable, a lease that cannot be confirmed) is logged as
a warning each time; one it cannot (another writer, a damaged spool, a lease known lost) is
logged once as an error, again at most every :data:`REPORT_STUCK_EVERY` seconds, and refuses
commits at once when the spool reaches its bound instead of letting them wait it out.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bottomless import format as fmt
from bottomless.engine.stats import Stats
from bottomless.errors import CorruptObjectError, ReplicaConflictError, StoreError
from bottomless.log import DatabaseLogger
from bottomless.settings import Settings

#: an upload failure that retrying cannot fix is logged as an error once, then again at most
#: this often (seconds) while it lasts
REPORT_STUCK_EVERY = 300.0


class UploadFailures:
    """The uploader's last failure of one database, and what it means (see the module)."""

    def __init__(
        self, db_name: str, settings: Settings, stats: Stats, log: DatabaseLogger,
        spool_path: str, *, lease_lost: Callable[[], bool], check_lease: Callable[[], None],
    ) -> None:
        self.db_name = db_name
        self.settings = settings
        self.stats = stats
        self.log = log
        self.spool_path = spool_path
        self._lease_lost = lease_lost
        self._check_lease = check_lease
        self._failure: Exception | None = None  # the uploader's, until an upload succeeds
        self._reported: tuple[str, float] | None = None  # a stuck failure logged, and when
        self._slow_reported = float("-inf")  # when a slow upload was last logged

    def failed(self, error: Exception) -> None:
        """The uploader's turn failed (it tries again after a pause): remember why, for
        status and back-pressure, and say so; once, as an error, if retrying cannot help."""
        self._failure = error
        self.stats.error(_failed(error))
        if not self.is_permanent(error):
            self.log.warning("async upload failed, will retry: %s", error)
            return
        now, last = time.monotonic(), self._reported
        if last is not None and last[0] == str(error) and now - last[1] < REPORT_STUCK_EVERY:
            return
        self._reported = (str(error), now)
        self.log.error(
            "async uploads are stuck: %s. Retrying cannot fix this; the spooled commits stay"
            " in %s, and commits are refused (at once if the lease is lost, else once"
            " replication is max_lag (%gs) behind)", error, self.spool_path, self.settings.max_lag,
        )

    def took(self, seconds: float) -> None:
        """An upload took ``seconds``: longer than ``max_lag``, the bound cannot hold, and a
        warning says so (at most every REPORT_STUCK_EVERY seconds)."""
        now = time.monotonic()
        if seconds <= self.settings.max_lag or now - self._slow_reported < REPORT_STUCK_EVERY:
            return
        self._slow_reported = now
        self.log.warning(
            "an upload took %.1fs, longer than max_lag (%gs): while the store is this slow,"
            " commits reach it later than max_lag, and a crash can lose more than max_lag of"
            " them from the bucket (they stay in the local file); raise max_lag, or see to the"
            " store", seconds, self.settings.max_lag,
        )

    def succeeded(self) -> None:
        """An upload (or a new generation) went through: the failure is over, in
        ``last_error`` too (not a snapshot's failure since: it lasts until one succeeds)."""
        if self._failure is not None:
            self.stats.error_over(_failed(self._failure))
            self.log.info("async uploads go through again")
        self._failure = self._reported = None

    def is_permanent(self, error: Exception) -> bool:
        """Whether retrying cannot help: a conflict or damage, or a lease known lost (not one
        that merely cannot be confirmed: the store may answer again)."""
        if isinstance(error, CorruptObjectError):
            return True
        if isinstance(error, ReplicaConflictError):
            return error.key != fmt.lease_key(self.db_name) or self._lease_lost()
        return False

    def not_catching_up(self, age: float, size: int) -> StoreError:
        """The error of a commit refused because the spool stayed past its bound (``age``
        seconds old, ``size`` bytes) until the deadline: it names the bound that was passed."""
        limit, max_mb = self.settings.max_lag, self.settings.max_spool_mb
        passed = [f"the spool holds {size / 2**20:.1f} MiB (max_spool_mb {max_mb})"
                  ] if size > max_mb * 2**20 else []
        if age >= limit or not passed:
            passed.append(f"replication is {age:.1f}s behind (max_lag {limit}s)")
        failure = self._failure  # the uploader's own: never a refusal quoting another
        why = (f"the last upload failed: {failure}" if failure
               else "no upload has failed yet: the one under way is waiting for the store")
        return StoreError(
            f"{self.db_name}: {' and '.join(passed)}; the store is not catching up ({why});"
            " commit refused"
        )

    def refuse_if_stuck(self, age: float, size: int) -> None:
        """The spool is at its bound (``age`` seconds, ``size`` bytes): refuse the commit now
        if waiting cannot help."""
        if self._lease_lost():
            self._check_lease()  # a loss already known: raises without asking the store
        failure = self._failure
        if failure is None or not self.is_permanent(failure):
            return
        message = (
            f"{self.db_name}: async uploads cannot go on ({failure}) and the spool is at its"
            f" bound ({age:.1f}s behind, max_lag {self.settings.max_lag}s; {size / 2**20:.1f}"
            f" MiB, max_spool_mb {self.settings.max_spool_mb}); commit refused"
        )
        if isinstance(failure, CorruptObjectError):
            raise CorruptObjectError(message, key=failure.key) from failure
        key = failure.key if isinstance(failure, ReplicaConflictError) else None
        raise ReplicaConflictError(message, db_name=self.db_name, key=key) from failure


def _failed(error: Exception) -> str:
    """``last_error`` for an upload that failed with ``error``."""
    return f"async upload failed: {error}"

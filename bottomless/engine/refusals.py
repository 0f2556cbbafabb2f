"""Commits refused to the application: each one counted, and logged as an error without
flooding the log.

A refused commit is rolled back and its error raised to the application, in both durability
modes: a sync commit whose upload failed, an async commit held back because replication is
``max_lag`` behind, any commit of a writer that lost its lease. Every refusal is counted in
``errors_total`` and becomes ``last_error``. The first of a kind is logged as an error at once;
while the same kind goes on (an outage, a fenced writer committing in a loop) one line is
logged every :data:`REPORT_EVERY` seconds, saying how many were refused in between.
"""

from __future__ import annotations

import time

from bottomless.engine.stats import Stats
from bottomless.errors import BottomlessError, StoreError
from bottomless.log import DatabaseLogger

#: while commits go on being refused for the same kind of reason, one error line this often
#: (seconds)
REPORT_EVERY = 30.0


class Refusals:
    """The refused commits of one database (see the module)."""

    def __init__(self, db_name: str, stats: Stats, log: DatabaseLogger) -> None:
        self.db_name = db_name
        self.stats = stats
        self.log = log
        self._kind: type[BaseException] | None = None  # of the last refusal logged
        self._logged_at = float("-inf")
        self._unlogged = 0  # refusals since that line

    def refused(self, error: BaseException, *, spooling: bool = False) -> BaseException:
        """What to raise for a commit refused because of ``error``, counted and logged.

        With ``spooling``, a local ``OSError`` (a full disk) is the spool's, and raised as a
        StoreError saying so. Anything but a bottomless error (an interrupt, a bug) is
        returned as it is, neither counted nor logged."""
        if spooling and isinstance(error, OSError) and not isinstance(error, BottomlessError):
            wrapped = StoreError(f"{self.db_name}: the spool failed ({error})")
            wrapped.__cause__ = error
            error = wrapped
        if not isinstance(error, BottomlessError):
            return error
        self.stats.error(str(error))
        now = time.monotonic()
        if type(error) is self._kind and now - self._logged_at < REPORT_EVERY:
            self._unlogged += 1
            return error
        since = (f" ({self._unlogged} more refused since the last report)"
                 if self._unlogged else "")
        self.log.error("commit refused and rolled back: %s%s", error, since)
        self._kind, self._logged_at, self._unlogged = type(error), now, 0
        return error

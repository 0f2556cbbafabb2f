"""Commits refused to the application: each one counted, and logged as an error without
flooding the log.

A refused commit is rolled back and its error raised to the application, in both durability
modes: a sync commit whose upload failed, an async commit held back because replication is
``max_lag`` behind, any commit of a writer that lost its lease. Every refusal is counted in
``errors_total`` and becomes ``last_error``. The first of a kind (its class, and its text but
for numbers) is logged as an error at once; while the same kind goes on (an outage, a fenced
writer committing in a loop) one line is logged every :data:`REPORT_EVERY` seconds, and how
many were refused in between is logged when the kind changes or the database closes. When a
commit goes through again, a warning says so, with how many were refused in all.
"""

from __future__ import annotations

import re
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
        self._kind: tuple[type[BaseException], str] | None = None  # of the last one logged
        self._logged_at = float("-inf")
        self._unlogged = 0  # refusals since that line
        self._last: str | None = None  # the text of the last refusal
        self._refused = 0  # refusals since commits last went through

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
        self._last = str(error)
        self._refused += 1
        self.stats.error(self._last)
        now = time.monotonic()
        kind = (type(error), re.sub(r"[0-9][0-9.]*", "#", self._last))  # "2.9s behind" alike
        if kind == self._kind and now - self._logged_at < REPORT_EVERY:
            self._unlogged += 1
            return error
        self._report_unlogged()
        self.log.error("commit refused and rolled back: %s", error)
        self._kind, self._logged_at = kind, now
        return error

    def recovered(self) -> None:
        """A commit went through: say so, with how many were refused in all, if any was, and
        clear the last refusal's error from ``last_error`` (another error since stays)."""
        if self._last is None:
            return
        self.stats.error_over(self._last)
        self.log.warning("commits go through again, after %d refused (the last: %s)",
                         self._refused, self._last)
        self._kind = self._last = None
        self._refused = self._unlogged = 0

    def closing(self) -> None:
        """The database closes: say how many refusals were not logged, if any."""
        self._report_unlogged()

    def _report_unlogged(self) -> None:
        if self._unlogged:
            self.log.error("%d more commits were refused like the last one logged",
                           self._unlogged)
            self._unlogged = 0

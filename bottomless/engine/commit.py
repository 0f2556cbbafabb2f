"""The commit protocol as a state machine: where one write transaction stands between
:meth:`Replicator.replicate <bottomless.engine.replicator.Replicator.replicate>` (before
SQLite's commit point) and the end of the transaction.

SQLite serialises writers with its write lock, so one database has at most one transaction
in flight per process. In WAL mode SQLite lets go of that lock before ``COMMIT_PHASETWO``, so
the thread that prepared a step is remembered: another connection of the process may already
be preparing its own commit when the first one's end arrives.

::

    IDLE ──prepare──> UPLOADED (sync: the commit's object is stored)
         ├─prepare──> FORKED   (sync: a new generation over an orphan holds the commit)
         └─prepare──> QUEUED   (async: the commit waits for its commit point to be spooled)
    UPLOADED / FORKED / QUEUED ──commit frame written, checksums being fixed──> AWAITING_FIXUP
    UPLOADED / FORKED / AWAITING_FIXUP(sync) ──commit point──> RECORDED (the state file has it)
    QUEUED / AWAITING_FIXUP(async) ──commit point──> SPOOLED
    RECORDED ──WAL sync failed──> IDLE (the record is taken back)
    SPOOLED ──WAL sync failed──> RESYNC (the next commit starts a new generation)
    QUEUED / AWAITING_FIXUP(async) ──commit point passed, spooling failed──> RESYNC
    any prepared step ──commit point failed──> IDLE;   RESYNC ──resynced──> IDLE

``RESYNC`` outlives transactions: only a successful new generation from the local file ends
it. Every other step ends with the transaction (``transaction_over``) or the next ``prepare``.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass

from bottomless.engine.transaction import Transaction
from bottomless.local.files import LocalState


class Phase(enum.Enum):
    """Where the current write transaction stands (see the module docstring)."""

    IDLE = "idle"
    UPLOADED = "uploaded"
    FORKED = "forked"
    QUEUED = "queued"
    AWAITING_FIXUP = "awaiting-fixup"
    RECORDED = "recorded"
    SPOOLED = "spooled"
    RESYNC = "resync"


#: steps holding a transaction that has not reached its commit point yet
PREPARED = frozenset({Phase.UPLOADED, Phase.FORKED, Phase.QUEUED, Phase.AWAITING_FIXUP})

_ALLOWED: dict[Phase, frozenset[Phase]] = {
    Phase.IDLE: frozenset({Phase.UPLOADED, Phase.FORKED, Phase.QUEUED, Phase.IDLE}),
    Phase.UPLOADED: frozenset({Phase.AWAITING_FIXUP, Phase.RECORDED, Phase.IDLE}),
    Phase.FORKED: frozenset({Phase.AWAITING_FIXUP, Phase.RECORDED, Phase.IDLE}),
    Phase.QUEUED: frozenset({Phase.AWAITING_FIXUP, Phase.SPOOLED, Phase.RESYNC, Phase.IDLE}),
    Phase.AWAITING_FIXUP: frozenset({Phase.RECORDED, Phase.SPOOLED, Phase.RESYNC, Phase.IDLE}),
    Phase.RECORDED: frozenset({Phase.IDLE}),
    Phase.SPOOLED: frozenset({Phase.RESYNC, Phase.IDLE}),
    Phase.RESYNC: frozenset({Phase.IDLE}),
}


class IllegalTransitionError(RuntimeError):
    """A bug: the protocol was asked for a step its current phase does not allow."""


@dataclass(frozen=True)
class Step:
    """The current phase and what it carries.

    ``state``: the state to record at the commit point (UPLOADED, FORKED, AWAITING_FIXUP of a
    sync commit); ``txn``: the transaction to spool there (QUEUED, AWAITING_FIXUP of an async
    commit); ``previous``: the state before the recorded commit, to put back if the WAL sync
    fails (RECORDED); ``thread``: the thread whose transaction prepared the step.
    """

    phase: Phase = Phase.IDLE
    state: LocalState | None = None
    txn: Transaction | None = None
    previous: LocalState | None = None
    thread: int | None = None


class CommitProtocol:
    """The one current :class:`Step` of a database's commits, and its legal transitions.

    Not thread-safe by itself: the replicator calls it under its own lock.
    """

    def __init__(self) -> None:
        self.step = Step()

    @property
    def phase(self) -> Phase:
        """The current phase."""
        return self.step.phase

    def _move(self, step: Step) -> None:
        if step.phase not in _ALLOWED[self.step.phase]:
            raise IllegalTransitionError(f"commit protocol: {self.step.phase.value} ->"
                                         f" {step.phase.value}")
        self.step = step

    def begin(self) -> bool:
        """A new transaction prepares its commit: forget the previous one's steps.

        The previous commit's WAL sync is long done (SQLite held the write lock through it),
        so nothing may take its record back any more. Returns whether a failed WAL sync left
        the async spool to be replaced first (``RESYNC``, which stays until :meth:`resynced`).
        """
        if self.step.phase is Phase.RESYNC:
            self.step = Step(Phase.RESYNC, thread=threading.get_ident())
            return True
        self.step = Step(thread=threading.get_ident())
        return False

    def resynced(self) -> None:
        """The new generation that a failed WAL sync called for is in the bucket."""
        self._move(Step(thread=self.step.thread))

    def uploaded(self, state: LocalState) -> None:
        """Sync: the commit's object is stored; ``state`` is recorded at the commit point."""
        self._move(Step(Phase.UPLOADED, state=state, thread=self.step.thread))

    def forked(self, state: LocalState) -> None:
        """Sync: a new generation over an orphan holds the commit; ``state`` (its seq 0) is
        recorded at the commit point."""
        self._move(Step(Phase.FORKED, state=state, thread=self.step.thread))

    def queued(self, txn: Transaction) -> None:
        """Async: ``txn`` is spooled at the commit point."""
        self._move(Step(Phase.QUEUED, txn=txn, thread=self.step.thread))

    def awaiting_fixup(self) -> None:
        """The commit frame is written, but SQLite still rewrites the headers of frames it
        overwrote in place; the commit point is the fixed header of the commit frame."""
        if self.step.phase in PREPARED:
            self._move(Step(Phase.AWAITING_FIXUP, state=self.step.state, txn=self.step.txn,
                            thread=self.step.thread))

    def take_prepared(self) -> Step | None:
        """At the commit point: the prepared step (to record or spool), or ``None``."""
        if self.step.phase not in PREPARED:
            return None
        return self.step

    def recorded(self, previous: LocalState | None) -> None:
        """Sync: the state file has the commit; ``previous`` is put back if the sync fails."""
        self._move(Step(Phase.RECORDED, previous=previous, thread=self.step.thread))

    def spooled(self) -> None:
        """Async: the commit is in the spool."""
        self._move(Step(Phase.SPOOLED, thread=self.step.thread))

    def spool_failed(self) -> None:
        """Async: the commit point passed but the commit could not be spooled, so the local
        file may hold a commit the spool does not: the next commit starts a new generation."""
        self._move(Step(Phase.RESYNC, thread=self.step.thread))

    def failed(self) -> None:
        """The commit point failed: drop what was prepared (a stored object is an orphan)."""
        if self.step.phase in PREPARED:
            self._move(Step(thread=self.step.thread))

    def sync_failed(self) -> Phase:
        """The WAL sync after a commit failed. Returns the phase it happened in (RECORDED: the
        caller takes the record back; SPOOLED: the spool must be resynced) and moves on."""
        phase = self.step.phase
        if phase is Phase.RECORDED:
            self._move(Step(thread=self.step.thread))
        elif phase is Phase.SPOOLED:
            self._move(Step(Phase.RESYNC, thread=self.step.thread))
        return phase

    def over(self) -> None:
        """SQLite ended a write transaction (``COMMIT_PHASETWO``). Steps another thread has
        prepared since are left alone; ``RESYNC`` stays."""
        if self.step.thread not in (None, threading.get_ident()):
            return
        if self.step.phase is Phase.RESYNC:
            self.step = Step(Phase.RESYNC)
        else:
            self.step = Step()

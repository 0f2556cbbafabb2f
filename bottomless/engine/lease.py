"""Single-writer fencing: a lease object per database, taken and renewed with conditional writes.

``<db_name>/lease`` holds the writer id, a human-readable holder, an epoch and an expiry time.
A writer takes it at open (create-only, or ``If-Match`` on an expired lease), renews it in the
background every third of ``lease_ttl`` (``If-Match`` again), and refuses to commit once it can
no longer be sure it holds it. Every process writing through one local file shares the file's
writer id, so they are one writer; a second machine, or a second local file, is another writer
and fails loudly. Clocks of the machines involved must agree to within a third of the TTL.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import socket
import sys
import threading
import time

from bottomless import format as fmt
from bottomless.backends.base import PageStore
from bottomless.errors import (
    ObjectChangedError,
    ObjectExistsError,
    ObjectNotFoundError,
    ReplicaConflictError,
    StoreError,
)
from bottomless.format.lease import LeaseRecord

logger = logging.getLogger(__name__)


class WriterLease:
    """This process's claim to be the one writer of a database."""

    def __init__(self, store: PageStore, db_name: str, writer: str, ttl: float) -> None:
        self.store = store
        self.db_name = db_name
        self.key = fmt.lease_key(db_name)
        self.writer = writer
        self.ttl = ttl
        self.holder = f"{socket.gethostname()} pid {os.getpid()}"
        self._version: str | None = None
        self._epoch = 0
        self._valid_until = 0.0  # time.monotonic() after which we may not be the holder
        self._lost: str | None = None
        #: the last :meth:`acquire` took the lease by force from a holder whose lease ran
        self.forced = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def lost(self) -> str | None:
        """Why this writer knows it lost the lease (taken over, deleted), or ``None``: what it
        has learnt so far, without asking the store."""
        return self._lost

    def _record(self) -> LeaseRecord:
        return LeaseRecord(self.writer, self.holder, self._epoch,
                           int((time.time() + self.ttl) * 1000))

    def acquire(self, *, force: bool = False) -> None:
        """Take the lease, or raise ReplicaConflictError naming the current holder.

        ``force``: take it even from a holder whose lease has not expired (a failover decided
        by a human); that holder's next renewal or commit then fails.
        """
        for _ in range(3):
            started = time.monotonic()
            try:
                data, version = self.store.get_versioned(self.key)
            except ObjectNotFoundError:
                self._epoch = 1
                try:
                    self.store.put_if_absent(self.key, self._record().encode())
                except ObjectExistsError:
                    continue  # someone was faster; look again
                _, self._version = self.store.get_versioned(self.key)
                self._valid_until = started + self.ttl * 2 / 3
                break
            current = LeaseRecord.decode(data)
            if (current.writer != self.writer and current.expires_ms > time.time() * 1000
                    and not force):
                raise ReplicaConflictError(
                    f"{self.db_name!r} is being replicated by another writer ({current.holder},"
                    f" writer {current.writer[:8]}…) whose lease runs until"
                    f" {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(current.expires_ms / 1000))}"
                    " UTC. Two writers would fork its history: stop the other one, or wait for"
                    " its lease to expire (lease_ttl) if it has crashed.",
                    db_name=self.db_name, key=self.key, holder=current.holder,
                    expires_at=dt.datetime.fromtimestamp(current.expires_ms / 1000, tz=dt.UTC),
                )
            self._epoch = current.epoch + (0 if current.writer == self.writer else 1)
            live = current.writer != self.writer and current.expires_ms > time.time() * 1000
            try:
                self._version = self.store.put_if_match(
                    self.key, self._record().encode(), version
                )
            except ObjectChangedError:
                continue
            self._valid_until = started + self.ttl * 2 / 3
            self.forced = live
            if current.writer != self.writer and current.writer and current.expires_ms == 0:
                logger.info("%s: took the writer lease %s released on closing", self.db_name,
                            current.holder)
            elif current.writer != self.writer and current.writer:
                logger.warning("%s: took over the writer lease of %s (%s)", self.db_name,
                               current.holder, "forced" if live else "expired")
            break
        else:
            raise ReplicaConflictError(
                f"{self.db_name!r}: could not take the writer lease: it keeps changing (another"
                " writer is starting at the same time)",
                db_name=self.db_name, key=self.key,
            )
        self._thread = threading.Thread(
            target=self._renew_loop, name=f"bottomless-lease-{self.db_name}", daemon=True
        )
        self._thread.start()

    def renew(self) -> None:
        """Extend the lease; marks it lost if another writer took it."""
        with self._lock:
            if self._lost or self._version is None:
                return
            started = time.monotonic()
            try:
                self._version = self.store.put_if_match(
                    self.key, self._record().encode(), self._version
                )
                self._valid_until = started + self.ttl * 2 / 3
            except ObjectChangedError:
                try:
                    data, version = self.store.get_versioned(self.key)
                except ObjectNotFoundError:
                    self._lost = "the lease object was deleted"
                    return
                current = LeaseRecord.decode(data)
                if current.writer == self.writer:  # renewed by a sibling process of ours
                    self._version = version
                    self._valid_until = min(
                        started + self.ttl * 2 / 3,
                        started + (current.expires_ms / 1000 - time.time()) * 2 / 3,
                    )
                else:
                    self._lost = f"{current.holder} took it over (epoch {current.epoch})"
                    logger.error("%s: writer lease lost: %s", self.db_name, self._lost)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except StoreError as e:
                if sys.is_finalizing() or not threading.main_thread().is_alive():
                    # Python is exiting (its thread pools refuse work: "cannot schedule new
                    # futures after shutdown"): renewals end here; the lease expires by itself
                    logger.debug("%s: lease renewal at exit failed: %s", self.db_name, e)
                    return
                logger.warning("%s: lease renewal failed, will retry: %s", self.db_name, e)

    def check(self) -> None:
        """Raise ReplicaConflictError unless this process surely still holds the lease."""
        if self._lost:
            raise ReplicaConflictError(
                f"{self.db_name!r}: this writer lost its lease ({self._lost}); commit refused."
                " Another process writes this database now: stop this one, or open the file"
                " anew to continue from the store",
                db_name=self.db_name, key=self.key,
            )
        if time.monotonic() >= self._valid_until:
            try:
                self.renew()
            except StoreError as e:
                raise ReplicaConflictError(
                    f"{self.db_name!r}: cannot confirm the writer lease ({e}); commit refused",
                    db_name=self.db_name, key=self.key,
                ) from e
            if self._lost or time.monotonic() >= self._valid_until:
                raise ReplicaConflictError(
                    f"{self.db_name!r}: the writer lease expired"
                    f"{' (' + self._lost + ')' if self._lost else ''}; commit refused",
                    db_name=self.db_name, key=self.key,
                )

    def hand_over(self) -> None:
        """Stop renewing, but leave the lease as it is: it stays this writer's until it
        expires, so that the next process of this writer (the same writer id) takes it at
        once and nobody else can meanwhile."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def release(self) -> None:
        """Stop renewing and expire the lease at once, so a successor need not wait."""
        self._stop.set()
        with self._lock:
            if self._lost or self._version is None:
                return
            record = LeaseRecord(self.writer, self.holder, self._epoch, 0)
            with contextlib.suppress(StoreError):  # if it fails, it expires by itself
                self.store.put_if_match(self.key, record.encode(), self._version)
            self._version = None

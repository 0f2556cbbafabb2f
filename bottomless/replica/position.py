"""The follower's position record, ``<db>-bottomless-replica``, kept beside the replica file.

It says which commit of which generation the local file holds, where that commit ends in the
WAL, and, while an apply may be half done, the commit the file held before it. It is written
*before* the WAL frames of an apply (a write-ahead intent, synced) and again once they are
published (not synced): a process that opens the database while no connection has it open
runs SQLite's WAL recovery, which publishes every valid commit frame in the WAL, recorded or
not, so the record must never lag behind what the WAL holds.

The file holds two fixed 4 KiB slots of JSON text, written in turn with one ``pwrite`` each;
each record carries a counter and a checksum, and the valid record with the higher counter
wins, so a write torn by a crash leaves the previous record in force. The file is created
with an atomic rename.

The record also marks the database as a read replica: the bottomless writer must not be
pointed at it (that would fork the lineage), and the follower refuses a non-empty file that
has no such record.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import secrets
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

from bottomless.errors import ReplicaConflictError
from bottomless.local.files import fsync_dir
from bottomless.replica.wal import WalEnd

FORMAT = "bottomless-replica"
VERSION = 1
NOTE = (
    "This database is a read replica kept up to date by a bottomless follower. Open it"
    " read-only. Do not open it with the bottomless writer: promoting a replica is a separate"
    " operation."
)
SLOT_SIZE = 4096


def position_path(db_path: str) -> str:
    """Path of the position record of the replica at ``db_path``."""
    return db_path + "-bottomless-replica"


@dataclass
class Point:
    """A commit of a generation, as held by the local file."""

    generation: str
    seq: int
    digest: str  #: hex digest of the commit (of the snapshot manifest for a snapshot's seq 0)
    created_ms: int = 0
    #: where this state ends in the WAL; ``None``: in the database file alone
    wal: WalEnd | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "generation": self.generation, "seq": self.seq, "digest": self.digest,
            "created_ms": self.created_ms, "wal": self.wal.to_json() if self.wal else None,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Point:
        """Parse :meth:`to_json`'s form."""
        wal = doc.get("wal")
        return cls(
            str(doc["generation"]), int(doc["seq"]), str(doc["digest"]),
            int(doc.get("created_ms", 0)), WalEnd.from_json(wal) if wal else None,
        )


@dataclass
class Position:
    """What the replica file holds, and what it may be half-way to.

    ``current`` is the commit the file holds, or is being moved to while ``base`` is set:
    then the file holds ``base`` or ``current`` (resolved on the next start from the WAL).
    ``kind`` says how ``current`` was reached from ``base``: ``"commits"`` (commits
    ``base.seq + 1 .. current.seq`` of one generation, applied as one WAL transaction),
    ``"restore"`` (a restored state written into the WAL as the pages that differ), or
    ``"replace"`` (the file itself is being replaced by a restored one).
    """

    db_name: str
    page_size: int
    current: Point
    base: Point | None = None
    kind: str = "commits"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def settled(self) -> bool:
        """Whether the file is known to hold ``current`` (no apply in flight)."""
        return self.base is None and self.kind != "replace"

    def to_json(self) -> dict[str, Any]:
        """The record's JSON document."""
        return {
            "format": FORMAT, "version": VERSION, "note": NOTE, "db_name": self.db_name,
            "page_size": self.page_size, "current": self.current.to_json(),
            "base": self.base.to_json() if self.base else None, "kind": self.kind,
            **self.extra,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Position:
        """Parse :meth:`to_json`'s form (KeyError, TypeError, ValueError if invalid)."""
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise ValueError(f"format {doc.get('format')!r} version {doc.get('version')!r}")
        known = {"format", "version", "note", "db_name", "page_size", "current", "base", "kind",
                 "counter", "checksum"}
        return cls(
            db_name=str(doc["db_name"]), page_size=int(doc["page_size"]),
            current=Point.from_json(doc["current"]),
            base=Point.from_json(doc["base"]) if doc.get("base") else None,
            kind=str(doc.get("kind", "commits")),
            extra={k: v for k, v in doc.items() if k not in known},
        )


def _checksum(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _slot(raw: bytes) -> tuple[int, dict[str, Any]] | None:
    """The counter and document of one slot, ``None`` if it is empty, torn or invalid."""
    try:
        doc = json.loads(raw.rstrip(b" \n\0") or b"null")
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("checksum") != _checksum(doc):
        return None
    return int(doc.get("counter", 0)), doc


class PositionFile:
    """The position record of one replica: read once at start, then written in place."""

    def __init__(self, db_path: str) -> None:
        self.path = position_path(db_path)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._counter = 0

    def read(self) -> Position | None:
        """The record in force; ``None`` if there is no file.

        Raises ReplicaConflictError if the file exists but holds no valid record.
        """
        try:
            with open(self.path, "rb") as handle:
                raw = handle.read(2 * SLOT_SIZE)
        except FileNotFoundError:
            return None
        slots = [s for s in (_slot(raw[:SLOT_SIZE]), _slot(raw[SLOT_SIZE:])) if s is not None]
        if not slots:
            raise ReplicaConflictError(f"{self.path}: no valid replica position record in it")
        counter, doc = max(slots, key=lambda s: s[0])
        try:
            position = Position.from_json(doc)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ReplicaConflictError(f"{self.path}: invalid replica position record: {e}"
                                       ) from e
        self._counter = counter
        return position

    def create(self, position: Position) -> None:
        """Write a new file holding ``position`` (atomically, synced)."""
        with self._lock:
            self._create_locked(position)

    def _create_locked(self, position: Position) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._counter = 1
        tmp = f"{self.path}.{secrets.token_hex(4)}.tmp"
        try:
            with open(tmp, "wb") as out:
                out.write(self._encode(position) * 2)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        fsync_dir(os.path.dirname(os.path.abspath(self.path)))

    def write(self, position: Position, *, durable: bool = True) -> None:
        """Record ``position`` in the next slot; with ``durable`` it is on disk (``fdatasync``)
        before this returns. Creates the file if there is none."""
        with self._lock:
            if self._fd is None:
                if not os.path.exists(self.path):
                    self._create_locked(position)
                    return
                self._fd = os.open(self.path, os.O_RDWR)
            self._counter += 1
            os.pwrite(self._fd, self._encode(position), (self._counter % 2) * SLOT_SIZE)
            if durable:
                os.fdatasync(self._fd)

    def _encode(self, position: Position) -> bytes:
        doc = {**position.to_json(), "counter": self._counter}
        doc["checksum"] = _checksum(doc)
        data = json.dumps(doc).encode() + b"\n"
        if len(data) > SLOT_SIZE:
            raise ValueError(f"position record of {len(data)} bytes does not fit {SLOT_SIZE}")
        return data.ljust(SLOT_SIZE, b" ")

    def close(self) -> None:
        """Close the descriptor (SQLite holds no lock on this file)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def read_position(db_path: str) -> Position | None:
    """The position record of the replica at ``db_path``; ``None`` if there is none.

    Raises ReplicaConflictError if the file exists but holds no valid record.
    """
    return PositionFile(db_path).read()


def follower_lock_path(db_path: str) -> str:
    """Path of the lock a follower of ``db_path`` holds while it runs."""
    return position_path(db_path) + ".lock"


class FollowerLock:
    """The lock a follower of the replica at ``db_path`` holds while it runs: an exclusive
    ``flock``, so that the file has one follower. A process forked meanwhile does not keep it
    (its copy of the descriptor is closed in the child)."""

    def __init__(self, db_path: str) -> None:
        self.db_path = db_path
        #: while set, :meth:`release` leaves the lock held (a promotion in progress)
        self.kept = False
        self._fd: int | None = None
        self._guard = threading.Lock()

    def acquire(self) -> None:
        """Take the lock. Raises ReplicaConflictError if another follower, in this process or
        another, holds it; FileNotFoundError naming the directory if it does not exist."""
        directory = os.path.dirname(os.path.abspath(self.db_path))
        if not os.path.isdir(directory):
            raise FileNotFoundError(errno.ENOENT, "the replica's directory does not exist",
                                    directory)
        fd = os.open(follower_lock_path(self.db_path), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ReplicaConflictError(
                f"{self.db_path}: another follower (in this process or another) keeps this"
                " replica up to date; stop it first (a replica file has one follower, and"
                " promoting it needs that follower stopped)"
            ) from None
        with self._guard:
            self._fd = fd
        _HELD.add(self)

    def release(self) -> None:
        """Let go of the lock (unless :attr:`kept`); again is harmless."""
        with self._guard:
            if self._fd is None or self.kept:
                return
            os.close(self._fd)
            self._fd = None
        _HELD.discard(self)

    def _forget_in_child(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the child's copy only: the parent keeps the lock
            self._fd = None


_HELD: weakref.WeakSet[FollowerLock] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for lock in list(_HELD):
        lock._forget_in_child()
    _HELD.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)

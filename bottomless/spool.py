"""Asynchronous durability: a local spool of committed transactions and its uploader.

With ``durability="async"`` a commit only appends its pages to ``<db>-bottomless-spool``
(after SQLite committed locally, under SQLite's write lock, so entries are numbered in commit
order across processes). An uploader thread merges consecutive entries into one commit object
(the restore then lands on the last of them: still a commit boundary), uploads it, records it,
and deletes the entries. Before the PUT it writes the exact object to an *intent* file, so an
upload interrupted by a crash is finished, byte for byte, by whoever opens the database next.
One process uploads at a time (``flock`` on the spool's lock file).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from bottomless import format as fmt
from bottomless.capture import Transaction


@dataclass
class Intent:
    """An upload that was about to happen: the object, its key, the spool entries it covers."""

    key: str
    data: bytes
    through: int


_SCHEMA = """
CREATE TABLE IF NOT EXISTS entry(
    n INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS intent(
    id INTEGER PRIMARY KEY CHECK (id = 1), key TEXT NOT NULL, through INTEGER NOT NULL,
    data BLOB NOT NULL);
"""


class Spool:
    """The spool of one database: a small SQLite database (stdlib ``sqlite3``) beside it.

    SQLite gives the spool what it needs for free: atomic appends, one order across processes
    (``AUTOINCREMENT``), and a torn append never becoming visible. It runs with
    ``synchronous=OFF``: entries survive a process crash, not a power cut (nor would the local
    database's own unsynced WAL tail).
    """

    def __init__(self, db_path: str) -> None:
        self.path = db_path + "-bottomless-spool"
        # one connection per thread: the committing thread never waits behind the uploader
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def exists(self) -> bool:
        """Whether there is a spool at all."""
        return os.path.exists(self.path)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(
                self.path, timeout=60, isolation_level=None, check_same_thread=False
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=OFF")
            connection.executescript(_SCHEMA)
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        yield connection

    def append(self, txn: Transaction) -> int:
        """Spool a committed transaction; call with SQLite's write lock held."""
        batch = fmt.PageBatch(fmt.KIND_COMMIT, "spool", 0, txn.page_size, txn.db_size, txn.pages)
        data = fmt.encode_batch(batch, "none")
        with self._db() as db:
            cursor = db.execute(
                "INSERT INTO entry(created, data) VALUES(?, ?)", (time.time(), data)
            )
            return int(cursor.lastrowid or 0)

    def entries(self) -> list[int]:
        """Numbers of the spooled transactions, oldest first."""
        if not self.exists():
            return []
        with self._db() as db:
            return [int(r[0]) for r in db.execute("SELECT n FROM entry ORDER BY n")]

    def last_number(self) -> int:
        """Number of the newest entry ever spooled (0 if none)."""
        if not self.exists():
            return 0
        with self._db() as db:
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'entry'").fetchone()
            return int(row[0]) if row else 0

    def read_group(self, max_bytes: int) -> list[tuple[int, fmt.PageBatch]]:
        """The oldest entries, in order, up to about ``max_bytes`` (at least one)."""
        group: list[tuple[int, fmt.PageBatch]] = []
        total = 0
        with self._db() as db:
            for number, data in db.execute("SELECT n, data FROM entry ORDER BY n"):
                if group and total + len(data) > max_bytes:
                    break
                group.append((int(number), fmt.decode_batch(data, f"{self.path}#{number}")))
                total += len(data)
        return group

    def remove_through(self, number: int) -> None:
        """Delete every entry up to ``number``."""
        with self._db() as db:
            db.execute("DELETE FROM entry WHERE n <= ?", (number,))

    def oldest_age(self) -> float:
        """Seconds since the oldest entry was spooled (0 if the spool is empty)."""
        if not self.exists():
            return 0.0
        with self._db() as db:
            row = db.execute("SELECT min(created) FROM entry").fetchone()
        return max(0.0, time.time() - row[0]) if row and row[0] is not None else 0.0

    def size_bytes(self) -> int:
        """Bytes held by the spooled entries."""
        if not self.exists():
            return 0
        with self._db() as db:
            row = db.execute("SELECT coalesce(sum(length(data)), 0) FROM entry").fetchone()
        return int(row[0])

    @contextlib.contextmanager
    def upload_lock(self) -> Iterator[bool]:
        """Try to become the (only) uploader; yields whether it succeeded."""
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def write_intent(self, intent: Intent) -> None:
        """Record the object about to be uploaded."""
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO intent(id, key, through, data) VALUES(1, ?, ?, ?)",
                (intent.key, intent.through, intent.data),
            )

    def read_intent(self) -> Intent | None:
        """The interrupted upload, if any."""
        if not self.exists():
            return None
        with self._db() as db:
            row = db.execute("SELECT key, data, through FROM intent").fetchone()
        return Intent(str(row[0]), bytes(row[1]), int(row[2])) if row else None

    def clear_intent(self) -> None:
        """The upload is recorded; forget it."""
        with self._db() as db:
            db.execute("DELETE FROM intent")

    def close(self) -> None:
        """Close the spool's connections."""
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()

    def destroy(self) -> None:
        """Remove the whole spool (its database is gone)."""
        self.close()
        for suffix in ("", "-wal", "-shm", "-journal", ".lock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path + suffix)


class Uploader(threading.Thread):
    """Background thread that calls ``drain_once`` until stopped."""

    def __init__(
        self, name: str, drain_once: Callable[[], bool], interval: float,
        oldest_age: Callable[[], float],
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._drain_once = drain_once
        self._interval = interval
        self._oldest_age = oldest_age
        self.wake = threading.Event()
        self.hurry = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        """Upload when commits have waited ``interval`` (so they share objects), or on demand."""
        while not self.stopping.is_set():
            age = self._oldest_age()
            if age and age < self._interval and not self.hurry.is_set():
                self.hurry.wait(self._interval - age)  # let a few more commits join the group
            busy = self._drain_once()
            if not busy:
                self.hurry.clear()
                self.wake.wait(self._interval)
                self.wake.clear()

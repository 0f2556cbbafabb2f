"""The replica's local file: the apply protocol, its resumption after a crash, checkpoints.

The follower keeps one SQLite connection of its own open on the file, so the WAL is never
removed by a last-close checkpoint. To apply a commit (or several, or the difference to a
restored state) it

1. takes SQLite's WAL write lock through that connection (``BEGIN IMMEDIATE``) and checks that
   the wal-index still ends where the follower left it (nobody else writes this file);
2. records the intent in the position file (see :mod:`bottomless.replica.position`);
3. appends the pages as WAL frames, the last one a commit frame, and ``fsync``\\s the WAL;
4. indexes the frames in the wal-index and writes its header: from this instant every new
   read transaction, in any process and any SQLite version, sees the whole commit;
5. records the new position and ends the transaction.

A page-size change goes through the WAL too: once a ``TRUNCATE`` checkpoint has emptied it, a
new WAL cycle with the new page size holds every page of the database, and readers that
already have the file open switch page size as they do when another connection vacuums.
Nothing here talks to the store.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

import apsw

from bottomless.errors import ReplicaConflictError
from bottomless.local.files import fsync_dir, read_db
from bottomless.replica.position import Point, Position, PositionFile
from bottomless.replica.wal import Appended, IndexHeader, WalEnd, WalFile, WalScan

logger = logging.getLogger(__name__)

Pages = Iterable[tuple[int, bytes | memoryview]]


class WalNotEmptyError(Exception):
    """A page-size change waits for a checkpoint to empty the WAL (internal, retried)."""


@dataclass
class Resumed:
    """How :meth:`ReplicaFile.open` found the file: the commit it holds, and whether the last
    apply must be done again (the file holds ``point`` or the state it was moving to)."""

    point: Point
    redo: Position | None = None


def set_wal_mode(path: str) -> None:
    """Mark a plain database file as a WAL database (header bytes 18-19 = 2), and sync it."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, b"\x02\x02", 18)
        os.fsync(fd)
    finally:
        os.close(fd)


_SCHEMA_COOKIE_OFFSET = 40  # in the database header
#: page size of the one-page database a replica holds while the writer's has no pages yet
EMPTY_PAGE_SIZE = 4096


def write_empty_database(path: str, page_size: int) -> None:
    """Make ``path`` a database of one page and no tables (SQLite's own, as ``VACUUM`` of a
    new database writes it), and sync it. Its schema cookie is 0, a database's before its
    first schema change, so that a reader that opened it notices the writer's first table."""
    connection = apsw.Connection(path)
    try:
        connection.execute(f"PRAGMA page_size={int(page_size)}").fetchall()
        connection.execute("VACUUM")
    finally:
        connection.close()
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, bytes(4), _SCHEMA_COOKIE_OFFSET)
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_id(path: str) -> str:
    """The identity of a file, which a rename keeps: its inode (not the device, whose number
    may change across a reboot)."""
    return str(os.stat(path).st_ino)


def wal_mode_page(pgno: int, page: bytes | memoryview) -> bytes | memoryview:
    """``page`` as the replica stores it: page 1 always says WAL mode, so that no reader or
    checkpoint ever has to change the journal mode (a write the follower did not make)."""
    if pgno != 1 or bytes(page[18:20]) == b"\x02\x02":
        return page
    patched = bytearray(page)
    patched[18:20] = b"\x02\x02"
    return bytes(patched)


class ReplicaFile:
    """The replica database at ``path`` and its position record, written by one follower."""

    def __init__(self, path: str, db_name: str, *, checkpoint_frames: int = 1000,
                 max_wal_frames: int = 10000, busy_timeout_ms: int = 5000) -> None:
        self.path = path
        self.db_name = db_name
        self.checkpoint_frames = checkpoint_frames
        self.max_wal_frames = max_wal_frames
        self.busy_timeout_ms = busy_timeout_ms
        self.wal = WalFile(path)
        self.records = PositionFile(path)
        self.position: Position | None = None
        self._connection: apsw.Connection | None = None
        self._checkpointed_at = 0
        self.checkpoints = 0

    # ------------------------------------------------------------ opening

    def install(self, restored: str, point: Point, page_size: int) -> None:
        """Make the restored file ``restored`` (beside ``path``) the replica, at ``point``.

        Only for a path no reader uses yet: the file is renamed into place.
        """
        set_wal_mode(restored)
        self.records.create(Position(self.db_name, page_size, point, kind="replace",
                                     extra={"file": _file_id(restored)}))
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path + suffix)
        os.replace(restored, self.path)
        fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        self.position = Position(self.db_name, page_size, replace(point, wal=None))
        self.records.write(self.position)

    def remove_leftover_restores(self) -> None:
        """Delete the temporary restores of a follower killed meanwhile (call as the one
        follower of the file)."""
        for leftover in glob.glob(glob.escape(self.path) + ".bottomless-replica-restore-*"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)

    def installed(self, position: Position) -> bool:
        """Whether the file at ``path`` is the one ``position`` describes: not so if an
        :meth:`install` was interrupted before its rename (the record names the restored file,
        and the file in place is still the one it was to replace, or none)."""
        if position.kind != "replace" or "file" not in position.extra:
            return True
        try:
            return _file_id(self.path) == str(position.extra["file"])
        except FileNotFoundError:
            return False

    def open(self) -> Resumed:
        """Open the follower's connection and find which commit the file holds.

        The WAL is checked against the position record: frames the record does not account
        for are cut off, frames it does but the wal-index does not yet publish are published.
        Raises ReplicaConflictError if the file was written by someone else.
        """
        position = self.records.read()
        if position is None:
            raise ReplicaConflictError(f"{self.path} has no replica position record")
        self.position = position
        if position.kind == "replace":  # the rename happened (the caller checked the file)
            position = Position(self.db_name, position.page_size,
                                replace(position.current, wal=None))
            self.records.write(position)
            self.position = position
        connection = apsw.Connection(self.path, flags=apsw.SQLITE_OPEN_READWRITE)
        connection.set_busy_timeout(self.busy_timeout_ms)
        self._connection = connection
        with self._write_lock():
            header = self._header()
            scan = self.wal.scan()
            resumed = self._resume(position, header, scan)
        logger.info("%s: replica at generation %s commit %d%s", self.path,
                    resumed.point.generation, resumed.point.seq,
                    "; the last apply is redone" if resumed.redo else "")
        return resumed

    def _resume(self, position: Position, header: IndexHeader, scan: WalScan | None) -> Resumed:
        current, base = position.current, position.base
        page_size = position.page_size
        if base is None:
            end = current.wal if scan is not None and scan.holds(current.wal) else None
            self._settle_at(header, scan, end, page_size)
            point = replace(current, wal=end)
            self.position = Position(self.db_name, page_size, point)
            self.records.write(self.position)
            return Resumed(point)
        # an apply was in flight: the WAL tells whether its commit frame was written
        if scan is not None and base.wal is not None and scan.salt == base.wal.salt:
            if not scan.holds(base.wal):
                return self._redo(position, header)
            after = sorted(f for f in scan.commits if f > base.wal.frames)
            target_end = after[0] if after else None
        elif scan is not None and base.wal is None:  # the apply started a new WAL cycle
            after = sorted(scan.commits)
            target_end = after[0] if after else None
        else:  # no WAL, or another cycle than the one the apply appended to: emptied since
            return self._redo(position, header)
        if len(after) > 1:
            self._conflict("the WAL holds more commits than the follower wrote")
        if target_end is not None:
            assert scan is not None
            end = WalEnd(scan.salt, target_end, scan.commits[target_end])
            point, page_size = replace(current, wal=end), scan.page_size
        else:
            end = base.wal
            point, page_size = replace(base, wal=end), self._page_size_of(base, position)
        self._settle_at(header, scan, end, page_size)
        self.position = Position(self.db_name, page_size, point)
        self.records.write(self.position)
        return Resumed(point)

    def _page_size_of(self, base: Point, position: Position) -> int:
        return int(position.extra.get("base_page_size", position.page_size))

    def _redo(self, position: Position, header: IndexHeader) -> Resumed:
        """The WAL no longer shows whether the last apply happened (a checkpoint emptied it):
        the file holds its base or its result, and applying it again gives the result."""
        if header.max_frame:
            self._conflict("the wal-index holds frames the position record does not know")
        self.wal.truncate(0, position.page_size)
        assert position.base is not None
        base = replace(position.base, wal=None)
        self.position = Position(self.db_name, self._page_size_of(base, position), base)
        return Resumed(base, redo=position)

    def _settle_at(self, header: IndexHeader, scan: WalScan | None, end: WalEnd | None,
                   page_size: int) -> None:
        """Make the WAL end exactly at ``end`` (``None``: hold nothing) and the wal-index
        publish exactly that."""
        frames = end.frames if end is not None else 0
        if header.max_frame > frames or (
            header.max_frame and end is not None and header.salt != end.salt
        ):
            self._conflict(f"the wal-index publishes {header.max_frame} frames, the position"
                           f" record {frames}")
        if end is not None and header.max_frame < frames:
            assert scan is not None
            pgnos = self.wal.frame_pages(header.max_frame + 1, frames, scan.page_size)
            self.wal.publish(header, Appended(end, pgnos, scan.db_sizes[frames], scan.page_size,
                                              scan.big_endian))
        self.wal.truncate(frames, page_size)

    def _conflict(self, detail: str) -> None:
        raise ReplicaConflictError(
            f"{self.path}: {detail}: something other than the follower wrote to it (open"
            " replicas read-only); remove the file and its -wal, -shm and -bottomless-replica"
            " files to restore it afresh"
        )

    # ------------------------------------------------------------ applying

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        """SQLite's WAL write lock, held through the follower's connection."""
        assert self._connection is not None
        self._connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._connection.execute("ROLLBACK")
            raise
        self._connection.execute("COMMIT")

    def _header(self) -> IndexHeader:
        header = self.wal.index_header()
        if header is None:  # BEGIN IMMEDIATE has just read (or rebuilt) it
            self._conflict("the wal-index header is invalid while the write lock is held")
        assert header is not None
        return header

    def _checked_header(self) -> IndexHeader:
        """The wal-index header, checked to end where this follower left the WAL."""
        assert self.position is not None
        header = self._header()
        expected = self.position.current.wal
        if header.max_frame and (expected is None or (
            header.salt, header.max_frame, header.frame_checksum
        ) != (expected.salt, expected.frames, expected.checksum)):
            self._conflict(f"the WAL ends at frame {header.max_frame}, not where the follower"
                           " left it")
        return header

    def apply(self, pages: Pages, *, db_size: int, page_size: int, target: Point,
              kind: str = "commits") -> None:
        """Apply ``pages`` (the new content of every page that changed; all of them when the
        page size changes) so that the file holds ``target``, as one commit for readers.

        Raises WalNotEmptyError when the page size changes while the WAL holds frames (run
        :meth:`checkpoint` with ``truncate=True`` and try again).
        """
        assert self.position is not None
        with self._write_lock():
            self._apply_locked(pages, db_size, page_size, target, kind)

    def _apply_locked(self, pages: Pages, db_size: int, page_size: int, target: Point,
                      kind: str) -> None:
        assert self.position is not None
        header = self._checked_header()
        if page_size != self.position.page_size and header.max_frame:
            raise WalNotEmptyError(f"page size changes from {self.position.page_size} to"
                                   f" {page_size}")
        base = replace(self.position.current, wal=self.position.current.wal
                       if header.max_frame else None)
        intent = Position(self.db_name, page_size, replace(target, wal=None), base, kind,
                          {"base_page_size": self.position.page_size})
        self.records.write(intent)
        self.position = intent
        wanted = ((n, wal_mode_page(n, p)) for n, p in pages if n <= db_size)
        appended = self.wal.append(header, wanted, db_size, page_size)
        self.wal.publish(header, appended)
        self.position = Position(self.db_name, page_size, replace(target, wal=appended.end))
        self.records.write(self.position, durable=False)

    def apply_restored(self, restored: str, *, db_size: int, page_size: int,
                       target: Point) -> int:
        """Bring the file to the content of the restored file ``restored`` (a generation
        switch, or commits gone from the store), writing only the pages that differ (every
        page when the page size changes). Returns how many pages were written."""
        assert self.position is not None
        written = 0
        with self._write_lock(), open(restored, "rb") as source:
            header = self._checked_header()
            same_size = page_size == self.position.page_size
            with self._current_pages(header) as current:

                def differing() -> Iterator[tuple[int, bytes]]:
                    nonlocal written
                    for pgno in range(1, db_size + 1):
                        page = bytes(wal_mode_page(pgno, source.read(page_size)))
                        if pgno == 1 or not same_size or current(pgno) != page:
                            written += 1
                            yield pgno, page

                self._apply_locked(differing(), db_size, page_size, target, "restore")
        return written

    @contextlib.contextmanager
    def _current_pages(self, header: IndexHeader) -> Iterator[Callable[[int], bytes]]:
        """The committed content of each page: the newest published frame, else the file."""
        assert self.position is not None
        frames = self.wal.indexed_pages(header) if header.max_frame else {}
        page_size = self.position.page_size
        db_pages = header.db_size if header.max_frame else None
        wal_fd = os.open(self.wal.wal_path, os.O_RDONLY) if frames else None

        def page(pgno: int) -> bytes:
            if pgno in frames and wal_fd is not None:
                return os.pread(wal_fd, page_size, self.wal.frame_offset(frames[pgno], page_size))
            if db_pages is not None and pgno > db_pages:
                return b""
            return read_db(self.path, (pgno - 1) * page_size, page_size)

        try:
            yield page
        finally:
            if wal_fd is not None:
                os.close(wal_fd)  # SQLite keeps no lock on the WAL file

    # ------------------------------------------------------------ checkpoints

    def checkpoint(self, *, truncate: bool = False) -> bool:
        """Copy WAL frames back into the database file when enough have gathered; empty the
        WAL (``TRUNCATE``) when it grew past ``max_wal_frames`` or ``truncate`` is set. A
        checkpoint never waits long for readers: a busy one is tried again later. Returns
        whether the WAL is empty afterwards."""
        header = self.wal.index_header()
        if header is None or not header.max_frame:
            return header is not None
        connection = self._connection
        assert connection is not None
        if header.max_frame < self._checkpointed_at:  # emptied by another checkpoint
            self._checkpointed_at = 0
        connection.execute("PRAGMA schema_version").fetchall()  # learn a new page size
        connection.set_busy_timeout(50)
        try:
            if truncate or header.max_frame >= self.max_wal_frames:
                connection.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
                self._checkpointed_at, self.checkpoints = 0, self.checkpoints + 1
                return True
            if header.max_frame - self._checkpointed_at >= self.checkpoint_frames:
                connection.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
                self._checkpointed_at, self.checkpoints = header.max_frame, self.checkpoints + 1
        except apsw.BusyError:
            logger.debug("%s: checkpoint busy (readers), tried again later", self.path)
        finally:
            connection.set_busy_timeout(self.busy_timeout_ms)
        return False

    def wal_frames(self) -> int:
        """Frames the WAL holds now."""
        header = self.wal.index_header()
        return header.max_frame if header is not None else 0

    def close(self) -> None:
        """Close the follower's connection (SQLite checkpoints and removes the WAL if no other
        connection has the file open)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        self.records.close()

"""Turning the file writes SQLite makes into committed transactions (no apsw here).

Two journal modes, two ways to see a commit:

* **Rollback journal** (DELETE, TRUNCATE, PERSIST): pages are written into the database file,
  then the journal is finalized (deleted, truncated or its header zeroed) — that is the commit
  point. :class:`RollbackCapture` remembers which byte ranges were written (and a hash of what
  was there before, so a rolled-back transaction, whose writes restore the old bytes, is not
  mistaken for a commit) and, at finalization, reads the changed pages back.
* **WAL**: a transaction is a run of frames ending in a commit frame (non-zero database size).
  SQLite writes each frame's 24-byte header and then its page. :class:`WalCapture` acts when the
  commit frame's page arrives, before it reaches the file: it reads the transaction's earlier
  frames back from the WAL, stopping at the previous commit frame.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from bottomless import format as fmt
from bottomless.engine.transaction import Transaction
from bottomless.local.files import WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE, DbHeader

ReadFn = Callable[[int, int], bytes]


class RollbackCapture:
    """Collects database-file writes between two journal finalizations."""

    def __init__(self) -> None:
        # offset -> (length, hash of the bytes before the write, or None: past end of file)
        self._before: dict[int, tuple[int, bytes | None]] = {}

    @property
    def dirty(self) -> bool:
        """Whether any write was seen since the last finalization."""
        return bool(self._before)

    def note_write(self, offset: int, length: int, read: ReadFn) -> None:
        """Record a write about to happen at ``offset``; ``read`` reads the file as it is now."""
        if offset not in self._before or self._before[offset][0] < length:
            current = read(offset, length)
            # bytes past the end of the file are new even when they are zeros
            before = fmt.page_digest(current) if len(current) == length else None
            self._before[offset] = (length, before)

    def discard(self) -> None:
        """Forget every recorded write."""
        self._before.clear()

    def finalize(self, read: ReadFn, known_page_size: int,
                 file_size: Callable[[], int]) -> Transaction | None:
        """Return the committed transaction, or ``None`` if nothing changed.

        Called at journal finalization, while the file holds the committed content. When the
        page size differs from ``known_page_size`` every page is included. The recorded writes
        are kept until :meth:`discard`: if the commit fails, SQLite plays the journal back, and
        the restored bytes then match what was recorded, so the rollback ships nothing.
        """
        writes = self._before
        if not writes:
            return None
        header = DbHeader.parse(read(0, 100))
        if header is None:
            return None
        size = header.page_size
        changed = [
            (offset, length)
            for offset, (length, before) in writes.items()
            if before is None
            or fmt.page_digest(read(offset, length).ljust(length, b"\0")) != before
        ]
        if not changed:
            return None
        db_size = header.db_size
        if db_size is None:
            # a pre-3.7 header: the file's size tells (never a read of "everything", which
            # would allocate that much)
            db_size = file_size() // size
        if known_page_size and known_page_size != size:
            numbers = set(range(1, db_size + 1))
        else:
            numbers = set()
            for offset, length in changed:
                numbers.update(range(offset // size + 1, (offset + length - 1) // size + 2))
        pages = {
            n: read((n - 1) * size, size).ljust(size, b"\0")
            for n in sorted(numbers)
            if n <= db_size
        }
        if not pages:
            return None  # only pages past the (rolled back) end changed
        return Transaction(pages, db_size, size)


class WalCapture:
    """Recognizes commit frames among WAL writes and gathers their transactions."""

    def __init__(self) -> None:
        self.page_size = 0
        # frame index, page number, db size, salts of the commit frame whose page is awaited
        self._commit: tuple[int, int, int, bytes] | None = None
        # the last commit frame and its page, to recognize padding copies of it
        self._last: tuple[int, int, int, bytes, bytes] | None = None
        self._last_header: int | None = None
        #: this transaction rewrote a page in place, so SQLite fixes up frame checksums (the
        #: commit frame's header last) after the commit frame: the commit is complete only then
        self.rewrote_in_place = False
        # the lowest frame rewritten in place: a frame header written at or before it means
        # SQLite rolled that back (a rollback, or a savepoint's), as it forgets the fix-up then
        self._rewritten_from = 0

    def _frame_of(self, offset: int, header: bool) -> int | None:
        if not self.page_size or offset < WAL_HEADER_SIZE:
            return None
        stride = WAL_FRAME_HEADER_SIZE + self.page_size
        rel = offset - WAL_HEADER_SIZE - (0 if header else WAL_FRAME_HEADER_SIZE)
        return rel // stride + 1 if rel >= 0 and rel % stride == 0 else None

    def on_header(self, data: bytes) -> None:
        """The 32-byte WAL header is being (re)written: a new WAL starts."""
        (self.page_size,) = struct.unpack_from(">I", data, 8)
        self._commit = None
        self._last = None
        self._last_header = None
        self.take_rewrite()

    def take_rewrite(self) -> bool:
        """Whether the transaction rewrote a page in place (see ``rewrote_in_place``); the
        capture forgets it."""
        rewrote, self.rewrote_in_place, self._rewritten_from = self.rewrote_in_place, False, 0
        return rewrote

    def is_commit_header(self, data: bytes, offset: int) -> bool:
        """Whether this write is the (checksum-fixed) header of the last commit frame."""
        return (
            len(data) == WAL_FRAME_HEADER_SIZE
            and self._last is not None
            and self._frame_of(offset, header=True) == self._last[0]
        )

    def on_write(self, data: bytes, offset: int, read: ReadFn) -> Transaction | None:
        """Observe a write to the WAL; return the transaction if this write completes a commit.

        The write has not reached the file yet. ``read`` reads the WAL file as it is now.
        """
        if offset == 0 and len(data) == WAL_HEADER_SIZE:
            self.on_header(data)
            return None
        if not self.page_size:
            existing = read(0, WAL_HEADER_SIZE)
            if len(existing) < WAL_HEADER_SIZE:
                return None
            (self.page_size,) = struct.unpack_from(">I", existing, 8)
        if len(data) == WAL_FRAME_HEADER_SIZE:
            frame = self._frame_of(offset, header=True)
            if frame is not None:
                if frame <= self._rewritten_from:
                    self.take_rewrite()
                pgno, db_size = struct.unpack_from(">II", data)
                self._commit = (frame, pgno, db_size, bytes(data[8:16])) if db_size else None
                self._last_header = frame
            return None
        frame = self._frame_of(offset, header=False)
        if frame is None or len(data) != self.page_size:
            return None
        if self._last_header != frame:  # a page written without its header: in place
            self.rewrote_in_place = True
            self._rewritten_from = min(self._rewritten_from or frame, frame)
        self._last_header = None
        if self._commit is None or self._commit[0] != frame:
            return None
        commit_frame, pgno, db_size, salts = self._commit
        self._commit = None
        if (
            self._last is not None
            and commit_frame == self._last[0] + 1
            and (pgno, db_size, salts, data) == self._last[1:]
        ):
            # padding frame: a copy of the previous commit frame in the same WAL, nothing new
            self._last = (commit_frame, pgno, db_size, salts, bytes(data))
            return None
        pages = {pgno: bytes(data)}
        stride = WAL_FRAME_HEADER_SIZE + self.page_size
        frame = commit_frame - 1
        while frame >= 1:
            start = WAL_HEADER_SIZE + (frame - 1) * stride
            header = read(start, WAL_FRAME_HEADER_SIZE)
            if len(header) < WAL_FRAME_HEADER_SIZE:
                break
            number, size_after = struct.unpack_from(">II", header)
            if size_after:
                break  # previous commit frame: the transaction starts after it
            if number not in pages:
                pages[number] = read(start + WAL_FRAME_HEADER_SIZE, self.page_size)
            frame -= 1
        self._last = (commit_frame, pgno, db_size, salts, bytes(data))
        return Transaction(
            {n: p for n, p in sorted(pages.items()) if n <= db_size}, db_size, self.page_size
        )


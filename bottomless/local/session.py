"""Telling a process crash from a power cut, so that the next open knows what to trust.

bottomless writes its local state file (and, in async mode, its spool) without ``fsync``,
while SQLite fsyncs its own WAL (``synchronous=FULL``, the default). A killed process loses
nothing: the kernel still holds those pages. A power cut can:

* in async mode the local file may then hold commits that are neither spooled nor uploaded.
  Continuing the lineage would ship later commits on top of a bucket that lacks those, and
  every restore after that would be a state the database never was;
* in sync mode the state file may be older than the bucket by many commits (each of which
  the local file holds), which looks like another writer's work.

So every process that opens a database for replication records, durably, that a session is
open on this boot of the machine (``<db>-bottomless-session``, with whether it replicates
asynchronously), and holds a shared ``flock`` on that file while it runs. The last one to
close, with nothing left to upload, makes the state and the spool durable and records a clean
end. The first open that finds a session left open on an earlier boot knows a power cut (or a
crash of the whole machine) interrupted it, and the replicator decides accordingly.

The clean end also records what the database file looked like then (:func:`file_stamp`:
size, modification time, inode) and the commit it was at. If the next open finds the same
commit recorded but the stamp changed, something may have written the file without
bottomless (the ``sqlite3`` program, another SQLite library), or it was copied, moved or
touched: :meth:`SessionMarker.changed_outside` says so, the open compares the file's pages
with the bucket's state at that commit, and if they differ treats the file as disagreeing
with the bucket instead of replicating on top of a change the bucket lacks. A stamp is only
taken when SQLite has closed the file and it stands alone, with no WAL frames or hot journal
beside it that another connection could still move into it.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Callable
from typing import Any, Literal

from bottomless.local.files import fsync_dir

logger = logging.getLogger(__name__)

_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
#: records are padded to this size, the one older versions write without truncating the file;
#: a clean end with its stamp's digest fits in it too (leaving them no tail to misread)
_RECORD_SIZE = 128
#: a WAL no larger than its header holds no frames
_WAL_HEADER_SIZE = 32

#: how a session that a machine restart interrupted replicated
Interrupted = Literal["async", "sync"]


def boot_id() -> str:
    """An id of the running boot of this machine; ``""`` where the system does not tell."""
    try:
        with open(_BOOT_ID_PATH) as stream:
            return stream.read().strip()
    except OSError:
        return ""


def file_stamp(db_path: str) -> dict[str, Any] | None:
    """The database file's size, modification time and inode; None if the file is missing or
    not alone: WAL frames or a hot journal that another connection could still move into it.
    (A journal's own changes are left out: a rollback that deletes or truncates one does not
    change the database, and an outside commit always changes the file itself.)"""
    try:
        stat = os.stat(db_path)
        wal = os.stat(db_path + "-wal").st_size
    except FileNotFoundError:
        if not os.path.exists(db_path):
            return None
        wal = 0
    if wal > _WAL_HEADER_SIZE:
        return None
    try:
        with open(db_path + "-journal", "rb") as journal:
            if journal.read(8).strip(b"\0"):
                return None  # a hot journal: a rollback would still write the file
    except FileNotFoundError:
        pass
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ino": stat.st_ino}


def stamp_digest(stamp: dict[str, Any]) -> str:
    """A short, fixed-width digest of a :func:`file_stamp` (the record must stay small)."""
    text = f"{stamp['size']}:{stamp['mtime_ns']}:{stamp['ino']}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _difference(now: dict[str, Any] | None) -> str:
    """What the file looks like now, in words, once its stamp differs."""
    if now is None:
        return "it has WAL frames or a hot journal beside it now"
    when = datetime.datetime.fromtimestamp(now["mtime_ns"] / 1e9, tz=datetime.UTC)
    return (f"its size, modification time or inode changed: {now['size']} bytes, modified at"
            f" {when.isoformat(timespec='milliseconds')}")


class SessionMarker:
    """The session marker of one database file (see the module docstring)."""

    def __init__(self, db_path: str) -> None:
        self.db_path = db_path
        self.path = db_path + "-bottomless-session"
        self._fd: int | None = None
        self._pid = 0
        self._created = False

    def _read(self) -> dict[str, object] | None:
        try:
            with open(self.path, "rb") as stream:
                raw = stream.read()
        except FileNotFoundError:
            return None
        if not raw:
            return None  # created by an open that failed before recording anything
        try:
            record = json.loads(raw.rstrip(b" \n\0"))
            if isinstance(record, dict) and {"open", "boot", "async"} <= record.keys():
                return record
        except ValueError:
            pass
        return {"open": True, "boot": "", "async": True, "unreadable": True}

    def interrupted(self) -> Interrupted | None:
        """How the session was replicating when the machine last went down, if it was open.

        Call it under the replicator's open lock. A session counts as interrupted when no live
        process holds it and its marker says open and was written on another boot (on a
        system without boot ids: any unclean end). A marker that cannot be read (a power cut
        can tear it) counts as an interrupted async session, the cautious reading. ``None``:
        no marker, a clean end, a live session, or one of this boot (a process crash).
        """
        if self._held_by_others():
            return None
        record = self._read()
        if record is None or not record["open"]:
            return None
        if record.get("unreadable"):
            logger.warning("%s is unreadable: treating the last session as interrupted",
                           self.path)
            return "async"
        boot = str(record["boot"])
        if boot and boot == boot_id():
            return None
        return "async" if record["async"] else "sync"

    def _held_by_others(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True  # a process in the session holds its shared lock
        finally:
            os.close(fd)  # (closing releases the lock if we got it)
        return False

    def join(self) -> None:
        """Take part in the session (a shared lock, so that no closing process records a
        clean end meanwhile); :meth:`begin` then records it. Call under the open lock."""
        if self._fd is not None:
            return
        self._created = not os.path.exists(self.path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits while a last process records a clean end
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._pid = fd, os.getpid()

    def begin(self, asynchronous: bool) -> None:
        """Record, durably, that this process replicates the database on this boot (after
        :meth:`join`, once an interrupted session has been dealt with)."""
        if self._fd is None:
            raise RuntimeError("SessionMarker.begin() before join()")
        current = self._read()
        # opens are serialized (the replicator's open lock): no other begin() runs now
        if current is not None and current["open"] and current["boot"] == boot_id():
            asynchronous = asynchronous or bool(current["async"])
        self._write(self._fd, is_open=True, asynchronous=asynchronous)
        if self._created:
            fsync_dir(os.path.dirname(os.path.abspath(self.path)))
            self._created = False

    def end(self, clean: bool = False, make_durable: Callable[[], None] | None = None,
            at: tuple[str, int] | None = None) -> None:
        """Leave the session; the last process out records a clean end if ``clean``.

        ``clean`` means nothing is left to upload. ``make_durable`` is called first, to fsync
        what the marker then vouches for (the state file and the spool). ``at``: the
        generation and commit the file is at, recorded with its :func:`file_stamp`.
        """
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if os.getpid() != self._pid:
                return  # a forked child: the lock it inherited is its parent's, hands off
            if clean:
                try:
                    # another process still in the session holds its shared lock
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return
                if make_durable is not None:
                    make_durable()
                stamp = file_stamp(self.db_path) if at is not None else None
                self._write(fd, is_open=False, asynchronous=False,
                            left=[*at, stamp_digest(stamp)] if stamp and at else None)
        finally:
            os.close(fd)

    def changed_outside(self, at: tuple[str, int] | None) -> str | None:
        """Why the file may not be as the last clean end left it at commit ``at`` (generation,
        commit), or None: no such record (another commit, a crash, an older version), or
        the file is as it was. A copy, a move to another disk or a ``touch`` changes the
        stamp too: the caller confirms with the content before it believes it."""
        record = self._read()
        left = record.get("left") if record is not None and not record["open"] else None
        if at is None or not isinstance(left, list) or len(left) != 3 or left[:2] != list(at):
            return None
        now = file_stamp(self.db_path)
        if now is not None and stamp_digest(now) == left[2]:
            return None
        what = _difference(now)
        return (f"the database file changed after bottomless last closed it at commit {at[1]}"
                f" ({what}): something wrote it without bottomless (the sqlite3 program,"
                " another SQLite library), so the bucket lacks that change")

    def forget_stamp(self) -> None:
        """Drop the file stamp of the last clean end: bottomless itself is replacing the
        file (a restore into it), which is no change made outside it."""
        record = self._read()
        if record is None or record["open"] or "left" not in record:
            return
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._write(fd, is_open=False, asynchronous=False)
        except BlockingIOError:
            pass  # a live session: its own end records the file anew
        finally:
            os.close(fd)

    def _write(self, fd: int, *, is_open: bool, asynchronous: bool,
               left: list[Any] | None = None) -> None:
        fields: dict[str, Any] = {"open": is_open, "async": asynchronous, "boot": boot_id(),
                                  "pid": os.getpid()}
        if left is not None:  # a clean end: its boot and pid tell nothing, its stamp must fit
            fields.update(boot="", left=left)
            del fields["pid"]
        record = json.dumps(fields, separators=(",", ":")).encode()
        os.pwrite(fd, record.ljust(_RECORD_SIZE - 1) + b"\n", 0)
        os.ftruncate(fd, max(len(record) + 1, _RECORD_SIZE))  # no tail of a longer record
        os.fsync(fd)

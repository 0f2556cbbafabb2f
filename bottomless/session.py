"""Telling a process crash from a power cut, for databases replicated asynchronously.

An async commit is appended to the spool without an fsync, while SQLite fsyncs its own WAL
(``synchronous=FULL``, the default). A killed process loses nothing: the kernel still holds the
spool's pages. A power cut can: the local file may then hold commits that are neither spooled
nor uploaded, and the state file may be older than the bucket. Continuing the lineage from
there would ship later commits on top of a bucket that lacks those, and every restore after
that would be a state the database never was.

So every process that opens a database in async mode records, durably, that an async session
is open on this boot of the machine (``<db>-bottomless-queue.session``), and holds a shared
``flock`` on that file while it runs. The last one to close, with nothing left to upload,
makes the state and the spool durable and records a clean end. The first open that finds a
session left open on an earlier boot knows the spool may have lost entries and starts a new
generation from the local file (a full snapshot) instead of continuing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable

from bottomless.localdb import fsync_dir

logger = logging.getLogger(__name__)

_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
_RECORD_SIZE = 128


def boot_id() -> str:
    """An id of the running boot of this machine; ``""`` where the system does not tell."""
    try:
        with open(_BOOT_ID_PATH) as stream:
            return stream.read().strip()
    except OSError:
        return ""


class SessionMarker:
    """The async session marker of one database file (see the module docstring)."""

    def __init__(self, db_path: str) -> None:
        self.path = db_path + "-bottomless-queue.session"
        self._fd: int | None = None

    def left_open_by_restart(self) -> bool:
        """Whether an async session was still open when the machine last went down.

        True when the marker says open and was written on another boot (or on a system
        without boot ids: then any unclean end counts), or when it cannot be read (a power cut
        can tear it). False when there is no marker or the last session ended cleanly.
        """
        try:
            with open(self.path, "rb") as stream:
                raw = stream.read()
        except FileNotFoundError:
            return False
        try:
            record = json.loads(raw.rstrip(b" \n\0"))
            is_open, boot = bool(record["open"]), str(record["boot"])
        except (ValueError, KeyError, TypeError):
            logger.warning("%s is unreadable: treating the last session as interrupted",
                           self.path)
            return True
        return is_open and (not boot or boot != boot_id())

    def begin(self) -> None:
        """Record an open async session on this boot, durably, and hold it until :meth:`end`."""
        if self._fd is not None:
            return
        created = not os.path.exists(self.path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits while a last process records a clean end
            self._write(fd, is_open=True)
            if created:
                fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def end(self, clean: bool, make_durable: Callable[[], None]) -> None:
        """Leave the session; the last process out records a clean end if ``clean``.

        ``clean`` means nothing is left to upload. ``make_durable`` is called first, to fsync
        what the marker then vouches for (the state file and the spool).
        """
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if clean:
                try:
                    # another process still in the session holds its shared lock
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return
                make_durable()
                self._write(fd, is_open=False)
        finally:
            os.close(fd)

    def remove(self) -> None:
        """Forget an interrupted session once it has been dealt with."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _write(self, fd: int, *, is_open: bool) -> None:
        record = json.dumps({"open": is_open, "boot": boot_id(), "pid": os.getpid()}).encode()
        os.pwrite(fd, record.ljust(_RECORD_SIZE - 1) + b"\n", 0)
        os.fsync(fd)

"""Small file-system helpers every layer may use: durable directory entries, whole writes,
leftovers of killed processes.

This module sits at the bottom with ``errors.py`` and imports nothing of bottomless.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import time


def fsync_dir(directory: str) -> None:
    """Make the entries of ``directory`` (names created, renamed, removed) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """``pwrite`` all of ``data`` at ``offset`` (a large write may be cut short)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written == 0:  # no progress (never seen on a regular file): fail, never spin
            raise OSError(errno.EIO, f"pwrite wrote nothing at offset {offset}")
        view, offset = view[written:], offset + written


def remove_abandoned(prefix: str, older_than: float) -> list[str]:
    """Delete the files named ``prefix…`` that a killed process left: their owner holds an
    exclusive ``flock`` on each while it lives, and they were not written to for
    ``older_than`` seconds. Returns the paths deleted."""
    removed = []
    for leftover in glob.glob(glob.escape(prefix) + "*"):
        try:
            fd = os.open(leftover, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if time.time() - os.fstat(fd).st_mtime > older_than:
                os.unlink(leftover)
                removed.append(leftover)
        except OSError:
            pass  # its owner holds it (or it is gone already)
        finally:
            os.close(fd)
    return removed

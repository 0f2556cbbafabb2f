"""Small file-system helpers every layer may use: durable directory entries, whole writes.

This module sits at the bottom with ``errors.py`` and imports nothing of bottomless.
"""

from __future__ import annotations

import errno
import os


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

"""The ``<db>-bottomless.lock`` file: it serialises the open-time checks of one local file
across processes, and keeps the file's writer id; and :func:`try_flock`, for other lock
files."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator


@contextlib.contextmanager
def open_lock(db_path: str) -> Iterator[int]:
    """Hold the open lock of ``db_path`` (flock); yields the lock file's descriptor."""
    fd = os.open(db_path + "-bottomless.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def try_flock(path: str, wait: float = 0.0) -> Iterator[bool]:
    """Try for up to ``wait`` seconds to hold an exclusive ``flock`` on the file ``path``
    (created if missing); yields whether it is held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.005)
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def local_writer_id(lock_fd: int, fresh: bytes) -> bytes:
    """The writer id of this local file, kept in its lock file so that it survives a failed
    first open (a retry must not look like a second writer); ``fresh`` if it has none."""
    stored = os.pread(lock_fd, 64, 0).strip()
    try:
        writer = bytes.fromhex(stored.decode())
        if len(writer) == len(fresh):
            return writer
    except ValueError:
        pass
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, fresh.hex().encode(), 0)
    return fresh

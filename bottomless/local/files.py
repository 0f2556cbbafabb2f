"""The local side: reading a database's committed content (file plus WAL) and the state file.

Nothing here imports apsw. Descriptors kept open for the life of the process (closing any
descriptor of a file drops every POSIX lock the process holds on it, SQLite's included) have
one owner each: :data:`KEPT_DESCRIPTORS` for database and ``-shm`` files, :data:`STATE_FILES`
for state files.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import struct
import sys
import threading
from dataclasses import dataclass, replace

# re-exported for this layer's callers; it lives at the bottom, where backends use it too
from bottomless.osutil import fsync_dir as fsync_dir

logger = logging.getLogger(__name__)

WAL_HEADER_SIZE = 32
WAL_FRAME_HEADER_SIZE = 24
_WAL_MAGIC = (0x377F0682, 0x377F0683)

# Which file an open descriptor is, told without stat(). On Linux >= 6.13 a stat() marks the
# file's timestamps as seen, so the next write to it takes a fine-grained timestamp and dirties
# the inode; on ext4 a stat-then-write per commit measured about 70 us slower commits (the WAL's
# fdatasync pays for it). /proc/self/fd/N names the file open as N, "(deleted)" once removed.
_PROC_FD = "/proc/self/fd"
#: whether descriptors are told apart through /proc/self/fd (else by inode number); tests turn
#: it off to run the fallback
HAS_PROC_FD = sys.platform.startswith("linux") and os.path.isdir(_PROC_FD)

FileIdentity = str | int


def file_identity(fd: int) -> FileIdentity:
    """What :func:`still_named` compares: the name Linux gives ``fd``, else its inode number."""
    if HAS_PROC_FD:
        return os.readlink(f"{_PROC_FD}/{fd}")
    return os.fstat(fd).st_ino


def still_named(fd: int, identity: FileIdentity, path: str) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (neither removed nor replaced).

    ``identity`` comes from :func:`file_identity` when ``fd`` was opened from ``path``. On
    Linux the check reads ``/proc/self/fd`` and never stats the file (see above). Like
    SQLite, which keeps its own descriptors, it keeps to the file first opened when a directory
    of ``path`` is a symbolic link switched to another target.
    """
    if isinstance(identity, str):
        try:
            name = os.readlink(f"{_PROC_FD}/{fd}")
        except OSError:
            return False
        # removed, maybe even before file_identity() ran: never trust such a descriptor
        return name == identity and not name.endswith(" (deleted)")
    try:
        return os.stat(path).st_ino == identity
    except FileNotFoundError:
        return False


def _is_removed(fd: int) -> bool:
    """Whether the file open as ``fd`` has no name left."""
    if HAS_PROC_FD:
        with contextlib.suppress(OSError):
            return os.readlink(f"{_PROC_FD}/{fd}").endswith(" (deleted)")
        return False
    return os.fstat(fd).st_nlink == 0


def _open_identified(path: str, flags: int) -> tuple[int, FileIdentity]:
    """``os.open`` plus :func:`file_identity`, closing the descriptor if the latter fails."""
    fd = os.open(path, flags)
    try:
        return fd, file_identity(fd)
    except BaseException:
        os.close(fd)
        raise


class KeptDescriptors:
    """Read-only descriptors of database files and their ``-shm`` files, one kept per path.

    :data:`KEPT_DESCRIPTORS` owns them for the process. As closing a descriptor drops the
    process's POSIX locks on the file, SQLite's included, none is closed while SQLite may hold
    one (see :meth:`shm_header`): there is no reset hook; :meth:`kept` tells which serves a path.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._db: dict[str, tuple[int, FileIdentity]] = {}
        self._shm: dict[str, tuple[int, FileIdentity]] = {}

    def kept(self, path: str) -> int | None:
        """The descriptor kept for ``path`` (a database or ``-shm`` file), if any."""
        with self._lock:
            entry = self._db.get(path) or self._shm.get(path)
        return entry[0] if entry is not None else None

    def read_db(self, path: str, offset: int, amount: int) -> bytes:
        """Read ``amount`` bytes at ``offset`` of the database file (short at end of file)."""
        with self._lock:
            entry = self._db.get(path)
            if entry is None or not still_named(entry[0], entry[1], path):
                # the previous descriptor (if any) is deliberately left open, see above
                entry = _open_identified(path, os.O_RDONLY)
                self._db[path] = entry
        return os.pread(entry[0], amount, offset)

    def shm_header(self, path: str) -> bytes | None:
        """The first 96 bytes of the ``-shm`` file at ``path``, ``None`` if there is none.

        SQLite keeps its WAL locks on this file: its descriptor is closed only once the file is
        removed (by SQLite, as the last connection of the last process closes, so no lock of
        this process can be on it); one of a file merely no longer at ``path`` is left open.
        """
        with self._lock:
            entry = self._shm.get(path)
            if entry is not None and not still_named(entry[0], entry[1], path):
                if _is_removed(entry[0]):
                    os.close(entry[0])
                del self._shm[path]
                entry = None
            if entry is None:
                try:
                    entry = _open_identified(path, os.O_RDONLY)
                except FileNotFoundError:
                    return None
                self._shm[path] = entry
            return os.pread(entry[0], 96, 0)


KEPT_DESCRIPTORS = KeptDescriptors()


def read_db(path: str, offset: int, amount: int) -> bytes:
    """Read ``amount`` bytes at ``offset`` of the database file (short at end of file)."""
    return KEPT_DESCRIPTORS.read_db(path, offset, amount)


def file_size(path: str) -> int:
    """Size of ``path`` in bytes, 0 if it does not exist."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


@dataclass(frozen=True)
class DbHeader:
    """The fields of the 100-byte SQLite header that replication needs."""

    page_size: int
    db_size: int | None  # in-header size, None if not trustworthy

    @classmethod
    def parse(cls, header: bytes) -> DbHeader | None:
        """Parse a header; ``None`` if ``header`` is not an SQLite database header."""
        if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
            return None
        (raw_size,) = struct.unpack_from(">H", header, 16)
        page_size = 65536 if raw_size == 1 else raw_size
        change_counter, db_size = struct.unpack_from(">II", header, 24)
        (valid_for,) = struct.unpack_from(">I", header, 92)
        return cls(page_size, db_size if db_size and valid_for == change_counter else None)


def wal_checksum(data: bytes, s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
    """SQLite's WAL checksum over ``data`` (a multiple of 8 bytes), continuing from s0, s1."""
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


@dataclass
class WalContent:
    """The committed frames of a WAL file: where the newest copy of each page is."""

    page_size: int
    db_size: int
    frames: dict[int, int]  # page number -> offset of its data in the WAL file
    last_commit_frame: int
    published: int | None = None  #: frames the wal-index publishes (None: it has no say)


def wal_index_limit(wal_path: str) -> tuple[int, tuple[int, int]] | None:
    """``(mxFrame, salts)`` from the wal-index (``-shm``) header, if it is valid.

    That is what SQLite itself considers committed. A valid commit frame past it (written by a
    process that died before publishing it) is not part of the database.
    """
    header = KEPT_DESCRIPTORS.shm_header(wal_path[: -len("-wal")] + "-shm")
    if header is None or len(header) < 96 or header[:48] != header[48:96]:
        return None  # none, or one being rewritten
    _version, _unused, _change, is_init, _big, _size, max_frame = struct.unpack_from(
        "=IIIBBHI", header, 0
    )
    salt1, salt2, c0, c1 = struct.unpack_from("=IIII", header, 32)
    # the header's checksum is the WAL checksum, in this machine's byte order
    if not is_init or wal_checksum(header[:40], 0, 0, sys.byteorder == "big") != (c0, c1):
        return None
    return max_frame, (salt1, salt2)


def _published_frames(limit: tuple[int, tuple[int, int]] | None, header: bytes) -> int | None:
    """Frames of the WAL starting with ``header`` that index ``limit`` publishes (None: no say)."""
    if limit is None:
        return None
    if tuple(struct.pack("=I", s) for s in limit[1]) == (header[16:20], header[20:24]):
        return limit[0]
    # the index holds no frame and the WAL a header it does not know: a writer started this
    # WAL and died before publishing a commit, so SQLite has none
    return 0 if limit[0] == 0 else None


def scan_wal(path: str, *, published_only: bool = True) -> WalContent | None:
    """Find every committed, checksum-valid frame of a WAL; ``None`` if it holds none.

    Frames past the wal-index's ``mxFrame`` are ignored when the index is valid, and all of
    them when it holds none and the WAL's header is not the one it knows. Under SQLite's write
    lock the index is valid and current (its holder ran any recovery needed), so what is left
    is what SQLite itself reads. ``published_only=False``: every valid commit, as a recovery
    would find them, whatever the index says.
    """
    limit = wal_index_limit(path)  # read first: SQLite publishes after writing frames
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below; the WAL holds no locks
    except FileNotFoundError:
        return None
    with handle:
        header = handle.read(WAL_HEADER_SIZE)
        if len(header) < WAL_HEADER_SIZE:
            return None
        magic, _version, page_size, _ckpt, salt1, salt2, c0, c1 = struct.unpack(">8I", header)
        if magic not in _WAL_MAGIC or page_size < 512 or page_size & (page_size - 1):
            return None
        big = magic & 1 == 1
        published = _published_frames(limit, header)
        max_frame = published if published_only else None
        s0, s1 = wal_checksum(header[:24], 0, 0, big)
        if (s0, s1) != (c0, c1):
            return None
        frames: dict[int, int] = {}
        pending: dict[int, int] = {}
        result = WalContent(page_size, 0, {}, 0, published)
        index = 0
        while max_frame is None or index < max_frame:
            offset = WAL_HEADER_SIZE + index * (WAL_FRAME_HEADER_SIZE + page_size)
            frame = handle.read(WAL_FRAME_HEADER_SIZE + page_size)
            if len(frame) < WAL_FRAME_HEADER_SIZE + page_size:
                break
            pgno, db_size, fsalt1, fsalt2, f0, f1 = struct.unpack_from(">6I", frame)
            if (fsalt1, fsalt2) != (salt1, salt2) or pgno == 0:
                break
            s0, s1 = wal_checksum(frame[:8], s0, s1, big)
            s0, s1 = wal_checksum(frame[WAL_FRAME_HEADER_SIZE:], s0, s1, big)
            if (s0, s1) != (f0, f1):
                break
            index += 1
            pending[pgno] = offset + WAL_FRAME_HEADER_SIZE
            if db_size:
                frames.update(pending)
                pending.clear()
                result.db_size, result.last_commit_frame = db_size, index
        if not result.last_commit_frame:
            return None
        result.frames = frames
        return result


def unpublished_commit(db_path: str) -> int | None:
    """Where in the WAL a valid commit past what the wal-index publishes starts (a writer died
    between writing its commit frame and publishing it), or None. Call under SQLite's write
    lock. SQLite reads without that commit and the next writer overwrites it, but a recovery
    (once no connection is left on the file) would adopt it."""
    wal = scan_wal(db_path + "-wal", published_only=False)
    if wal is None or wal.published is None or wal.last_commit_frame <= wal.published:
        return None
    return WAL_HEADER_SIZE + wal.published * (WAL_FRAME_HEADER_SIZE + wal.page_size)


class LocalImage:
    """The committed content of a local database: its file overlaid with its WAL.

    Only meaningful while SQLite's write lock on the database is held, so that no commit and no
    WAL reset can happen underneath.
    """

    def __init__(self, db_path: str) -> None:
        self.db_path = db_path
        self.wal = scan_wal(db_path + "-wal")
        file_bytes = file_size(db_path)
        header = DbHeader.parse(read_db(db_path, 0, 100)) if file_bytes >= 100 else None
        if self.wal is not None:
            self.page_size = self.wal.page_size
            self.db_size = self.wal.db_size
        elif header is not None:
            self.page_size = header.page_size
            self.db_size = header.db_size or file_bytes // header.page_size
        else:
            self.page_size = 0
            self.db_size = 0
        self._wal_handle: int | None = None

    def page(self, pgno: int) -> bytes:
        """Content of page ``pgno`` (1-based), zero-filled past the end of the file."""
        if self.wal is not None and pgno in self.wal.frames:
            if self._wal_handle is None:
                self._wal_handle = os.open(self.db_path + "-wal", os.O_RDONLY)
            data = os.pread(self._wal_handle, self.page_size, self.wal.frames[pgno])
        else:
            data = read_db(self.db_path, (pgno - 1) * self.page_size, self.page_size)
        return data.ljust(self.page_size, b"\0")

    def close(self) -> None:
        """Release the WAL descriptor."""
        if self._wal_handle is not None:
            os.close(self._wal_handle)
            self._wal_handle = None


# ---------------------------------------------------------------- state file


@dataclass
class LocalState:
    """What this local file has replicated: the generation and the last commit in it."""

    db_name: str
    generation: str
    seq: int
    digest: str
    page_size: int
    writer: str
    location: str
    #: async durability: the last spool entry included in an uploaded commit
    spooled_through: int = 0

    @property
    def digest_bytes(self) -> bytes:
        """The last object's digest as bytes."""
        return bytes.fromhex(self.digest)

    @property
    def writer_bytes(self) -> bytes:
        """The writer id as bytes."""
        return bytes.fromhex(self.writer)


def state_path(db_path: str) -> str:
    """Path of the state file kept beside ``db_path``."""
    return db_path + "-bottomless"


#: bytes of the state file's record, rewritten in place (a longer one makes a new file)
STATE_RECORD_SIZE = 1024


class StateFiles:
    """The state files this process keeps open, and the record each last held.

    The state file is read and written on every commit, so both are made cheap: a read is one
    pread() on a descriptor kept open (parsed again only when the bytes changed; mtime is too
    coarse to tell), and an update is one pwrite() of a fixed-size record into the existing
    file (every process writes it under SQLite's write lock). Neither stats the file (see
    above). :data:`STATE_FILES` owns them for the process, descriptors being per process;
    :func:`read_state`, :func:`write_state` and :func:`sync_state` go through it, and
    :meth:`close_all` is the reset hook (as for a process that never opened one).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, tuple[bytes, LocalState]] = {}
        self._fds: dict[str, tuple[int, FileIdentity]] = {}

    def is_open(self, db_path: str) -> bool:
        """Whether a descriptor of ``db_path``'s state file is kept."""
        with self._lock:
            return state_path(db_path) in self._fds

    def forget(self, db_path: str) -> None:
        """Close the kept descriptor of ``db_path``'s state file, if any, and its record."""
        path = state_path(db_path)
        with self._lock:
            handle = self._fds.pop(path, None)
            self._records.pop(path, None)
        if handle is not None:
            os.close(handle[0])

    def close_all(self) -> None:
        """Close every kept descriptor and forget every record."""
        with self._lock:
            handles, self._fds = list(self._fds.values()), {}
            self._records.clear()
        for fd, _identity in handles:
            os.close(fd)

    def _fd(self, path: str) -> int | None:
        """The kept descriptor of the state file at ``path``, (re)opened if it was replaced;
        ``None`` if there is no such file. Call with the lock held."""
        handle = self._fds.get(path)
        if handle is not None:
            if still_named(handle[0], handle[1], path):
                return handle[0]
            os.close(handle[0])  # replaced by another process's new file, or removed
            del self._fds[path]
        try:
            handle = _open_identified(path, os.O_RDWR)
        except FileNotFoundError:
            return None
        self._fds[path] = handle
        return handle[0]

    def read(self, db_path: str) -> LocalState | None:
        """Load the state file; ``None`` if it is missing or unreadable (logged)."""
        path = state_path(db_path)
        try:
            with self._lock:
                try:
                    fd = self._fd(path)
                    if fd is None:
                        return None
                    raw = os.pread(fd, STATE_RECORD_SIZE * 2, 0)
                    if b"\n" not in raw and len(raw) == STATE_RECORD_SIZE * 2:  # oversized
                        raw = os.pread(fd, 1 << 20, 0)
                except OSError as e:
                    if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                        raise
                    with open(path, "rb") as stream:  # someone else's, or a read-only mount
                        raw = stream.read()
                cached = self._records.get(path)
            # the record ends at its newline: an in-place update of a longer file leaves a tail
            raw = raw.split(b"\n", 1)[0]
            if cached is not None and cached[0] == raw:
                return replace(cached[1])
            doc = json.loads(raw.rstrip(b" \0"))
            values = {k: doc[k] for k in LocalState.__dataclass_fields__ if k in doc}
            state = LocalState(**values)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.warning("ignoring unreadable bottomless state file %s: %s", path, e)
            return None
        with self._lock:
            self._records[path] = (raw, replace(state))
        return state

    def write(self, db_path: str, state: LocalState) -> None:
        """Record ``state``: in place when the file exists, else created atomically."""
        path = state_path(db_path)
        record = json.dumps(vars(state)).encode()  # a flat dataclass: no deep copy needed
        raw = record.ljust(STATE_RECORD_SIZE - 1) + b"\n"
        with self._lock:
            fd = self._fd(path)
            if fd is not None and len(record) < STATE_RECORD_SIZE:
                os.pwrite(fd, raw, 0)
                self._records[path] = (raw.split(b"\n", 1)[0], replace(state))
                return
            if fd is not None:
                os.close(fd)
                del self._fds[path]
            tmp = f"{path}.{secrets.token_hex(6)}.tmp"
            with open(tmp, "wb") as out:
                out.write(raw)
            os.replace(tmp, path)
            self._fds[path] = _open_identified(path, os.O_RDWR)
            self._records[path] = (raw.split(b"\n", 1)[0], replace(state))

    def sync(self, db_path: str) -> None:
        """Make the state file, and its name in the directory, durable (``fsync``)."""
        with self._lock, contextlib.suppress(FileNotFoundError):
            fd = os.open(state_path(db_path), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(os.path.dirname(os.path.abspath(db_path)))


STATE_FILES = StateFiles()


def read_state(db_path: str) -> LocalState | None:
    """Load the state file; ``None`` if it is missing or unreadable (logged)."""
    return STATE_FILES.read(db_path)


def write_state(db_path: str, state: LocalState) -> None:
    """Record ``state``: in place when the file exists, else created atomically."""
    STATE_FILES.write(db_path, state)


def sync_state(db_path: str) -> None:
    """Make the state file, and its name in the directory, durable (``fsync``)."""
    STATE_FILES.sync(db_path)


def remove_local_files(db_path: str, *, include_db: bool) -> None:
    """Remove leftovers of a database that is gone: journal, WAL, shm and state file."""
    suffixes = ["-journal", "-wal", "-shm", "-bottomless"] + ([""] if include_db else [])
    # "-bottomless.lock" and "-bottomless-session" stay: processes hold them open
    suffixes += [f"-bottomless-queue{s}" for s in ("", ".lock", ".intent")]
    suffixes += [f"-bottomless-spool{s}" for s in ("", "-wal", "-shm", "-journal", ".lock")]
    for suffix in suffixes:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(db_path + suffix)
    STATE_FILES.forget(db_path)


"""The ``bottomless`` SQLite VFS: apsw glue only.

It inherits the default VFS, so the local file stays SQLite's working copy, watches writes to
the main database, its rollback journal and its WAL, and hands each committed transaction to
the :class:`~bottomless.engine.replicator.Replicator` of that database *before* SQLite's
commit point. A failed upload becomes an SQLite I/O error at that point, so SQLite rolls back
and the local file never gets ahead of the bucket. Temporary files pass straight through.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import apsw

from bottomless.backends.registry import open_store
from bottomless.engine.replicator import ProgressFactory, Replicator
from bottomless.errors import BottomlessError, ConfigError
from bottomless.local.files import WAL_FRAME_HEADER_SIZE, LocalImage, file_size, read_db
from bottomless.settings import (
    SETTINGS_TOKEN_PARAMETER,
    SQLITE_URI_PARAMETERS,
    Settings,
    resolve,
)
from bottomless.sqlite.capture import WalCapture
from bottomless.sqlite.databases import DatabaseEntry as _Entry
from bottomless.sqlite.databases import OpenDatabases
from bottomless.sqlite.locks import sqlite_write_lock
from bottomless.sqlite.readonly import ReadOnlyFile

logger = logging.getLogger(__name__)

VFS_NAME = "bottomless"
STATUS_PRAGMA = "bottomless_status"
_JOURNAL_SUFFIX = "-journal"
_WAL_SUFFIX = "-wal"

_WATCHED_FCNTLS = frozenset({
    apsw.SQLITE_FCNTL_CKPT_START, apsw.SQLITE_FCNTL_CKPT_DONE,
    apsw.SQLITE_FCNTL_COMMIT_PHASETWO, apsw.SQLITE_FCNTL_PRAGMA,
})


class SettingsTokens:
    """Settings objects handed from ``connect`` to ``xOpen`` through a URI token.

    A URI can only carry text, so ``connect`` issues a token for its :class:`Settings`, puts it
    in the URI as ``SETTINGS_TOKEN_PARAMETER``, and ``xOpen`` takes the settings back by it.
    The process has one, :data:`settings_tokens`; it is thread-safe.
    """

    def __init__(self) -> None:
        self._by_token: dict[str, Settings] = {}
        self._lock = threading.Lock()

    def issue(self, settings: Settings) -> str:
        """Keep ``settings`` for one open and return the token that names them."""
        token = secrets.token_hex(8)
        with self._lock:
            self._by_token[token] = settings
        return token

    def take(self, token: str) -> Settings | None:
        """The settings ``token`` names, forgotten at once; ``None`` if unknown or taken."""
        with self._lock:
            return self._by_token.pop(token, None)

    def discard(self, token: str) -> None:
        """Forget ``token`` if it was not taken (the open failed before ``xOpen``)."""
        with self._lock:
            self._by_token.pop(token, None)

    def clear(self) -> None:
        """Forget every token (a reset hook for tests)."""
        with self._lock:
            self._by_token.clear()


#: the process's settings handed to ``xOpen``, by token
settings_tokens = SettingsTokens()


class BottomlessVFS(apsw.VFS):
    """Replicating VFS; one per process, registered under the name ``bottomless``."""

    def __init__(self, settings: Settings | None = None, name: str = VFS_NAME) -> None:
        self.settings = settings
        self.name = name
        #: progress reporting for long uploads at open (set by the CLI on a terminal)
        self.progress: ProgressFactory | None = None
        #: the databases open through this VFS and their replicators
        self.databases = OpenDatabases(self._open_replicator)
        super().__init__(name, "")

    # -------------------------------------------------------- replicators

    def _open_replicator(self, path: str, settings: Settings) -> Replicator:
        store = open_store(settings)
        try:
            replicator = Replicator(path, settings, store, partial(sqlite_write_lock, path))
            replicator.progress = self.progress
            replicator.open()
        except BaseException:
            store.close()
            raise
        return replicator

    def flush_all(self) -> None:
        """At a clean exit: upload what async databases still hold, finish snapshots."""
        self.databases.close_all()

    def replicator_for(self, db_path: str) -> Replicator | None:
        """The replicator of an open database, if any."""
        return self.databases.replicator_for(db_path)

    # -------------------------------------------------------- VFS methods

    def xFullPathname(self, name: str) -> str:  # noqa: N802
        """The absolute path, symbolic links resolved, as SQLite's unix VFS makes it.

        The inherited method fails when the path holds a symbolic link: SQLite's VFS then
        answers SQLITE_OK_SYMLINK, which apsw reports as an error (a deploy layout with a
        ``current`` link, or macOS's ``/tmp``, could not be opened at all)."""
        return os.path.realpath(name)

    def xSleep(self, microseconds: int) -> int:  # noqa: N802
        """Sleep without the GIL (SQLite's busy handler calls this while it waits for a lock).

        apsw's inherited ``xSleep`` keeps the GIL while it sleeps, which stops every other
        Python thread, including the lock holder's commit running in this VFS: connections in
        threads then time out with "database is locked" instead of waiting their turn.
        """
        time.sleep(microseconds / 1_000_000)
        return microseconds

    def xOpen(self, name: str | apsw.URIFilename | None, flags: list[int]) -> apsw.VFSFile:  # noqa: N802
        """Open a file; main databases, their journals and WALs are watched."""
        kind = flags[0]
        if name is None or not kind & (
            apsw.SQLITE_OPEN_MAIN_DB | apsw.SQLITE_OPEN_MAIN_JOURNAL | apsw.SQLITE_OPEN_WAL
        ):
            return apsw.VFSFile("", name, flags)
        if kind & apsw.SQLITE_OPEN_MAIN_DB:
            assert isinstance(name, apsw.URIFilename)
            path = name.filename()
            settings = self._settings_for(name)
            if kind & apsw.SQLITE_OPEN_READONLY:
                # it cannot commit: no lease, no upload, no restore (as SQLite, it fails on a
                # missing file); it reads what a writer of this process commits all the same
                return ReadOnlyFile("", name, flags)
            try:
                entry = self.databases.acquire(path, settings)
            except OSError as e:
                if isinstance(e, BottomlessError):
                    raise
                # as SQLite says it (a missing directory, no permission), with the cause
                directory = os.path.dirname(os.path.abspath(path))
                why = (f"the directory {directory} does not exist"
                       if not os.path.isdir(directory) else str(e))
                cant_open = apsw.CantOpenError(f"unable to open database file {path}: {why}")
                for code in ("result", "extendedresult"):  # as apsw's own carry them
                    setattr(cant_open, code, apsw.SQLITE_CANTOPEN)
                raise cant_open from e
            try:
                return MainDbFile(self, entry, path, name, flags)
            except BaseException:
                self.databases.release(entry)
                raise
        path = name if isinstance(name, str) else name.filename()
        for suffix, cls in ((_JOURNAL_SUFFIX, JournalFile), (_WAL_SUFFIX, WalFile)):
            if path.endswith(suffix):
                owner = self.databases.get(path[: -len(suffix)])
                if owner is not None:
                    return cls(owner, name, flags)
        return apsw.VFSFile("", name, flags)

    def _settings_for(self, name: apsw.URIFilename) -> Settings:
        repeated = sorted({key for key in name.parameters if name.parameters.count(key) > 1})
        if repeated:  # SQLite would read the first and ignore the rest: say so instead
            raise ConfigError(f"URI parameter {repeated[0]} is given more than once in"
                              f" {name.filename()}'s URI; give it once", field=repeated[0])
        params = {key: name.uri_parameter(key) or "" for key in name.parameters}
        token = params.pop(SETTINGS_TOKEN_PARAMETER, None)
        base = settings_tokens.take(token) if token else None
        for key in SQLITE_URI_PARAMETERS:
            params.pop(key, None)
        return resolve(base or self.settings, params)

    def xDelete(self, filename: str, syncdir: bool) -> None:  # noqa: N802
        """Delete a file; deleting a rollback journal is the commit point in DELETE mode."""
        entry = None
        if filename.endswith(_JOURNAL_SUFFIX):
            entry = self.databases.get(filename[: -len(_JOURNAL_SUFFIX)])
        if entry is None:
            super().xDelete(filename, syncdir)
            return
        finalize_journal(entry, apsw.SQLITE_IOERR_DELETE)
        with _failing_commit(entry.replicator):
            super().xDelete(filename, syncdir)
        _committed(entry.replicator, apsw.SQLITE_IOERR_DELETE, in_place=True)  # still locked


def _raise_io(code: int, error: BottomlessError) -> None:
    failure = apsw.exception_for(code)  # SQLite's code, and the reason as its message too
    failure.args = (f"disk I/O error: replication failed: {error}",)
    raise failure from error


def finalize_journal(entry: _Entry, code: int) -> None:
    """A rollback journal is being finalized: replicate the transaction it protected."""
    replicator = entry.replicator
    path = replicator.db_path

    def read(offset: int, amount: int) -> bytes:
        return read_db(path, offset, amount)

    with replicator.lock:
        if not entry.capture.dirty:
            return
        known = replicator.state.page_size if replicator.state else 0
        txn = entry.capture.finalize(read, known, lambda: file_size(path))
        if txn is not None:
            try:
                replicator.replicate(txn, lambda: LocalImage(path))
            except BottomlessError as e:
                replicator.commit_failed()
                _raise_io(code, e)
        entry.capture.discard()


_base_file_control = apsw.VFSFile.xFileControl  # called once per statement: skip super()
_wal_sync = apsw.VFSFile.xSync


class MainDbFile(apsw.VFSFile):
    """The main database file: records writes, serves ``PRAGMA bottomless_status``."""

    def __init__(
        self, vfs: BottomlessVFS, entry: _Entry, path: str, name: apsw.URIFilename,
        flags: list[int],
    ) -> None:
        super().__init__("", name, flags)
        self._vfs = vfs
        self._entry = entry
        self._path = path
        self._in_checkpoint = False
        self._closed = False

    def _read_now(self, offset: int, amount: int) -> bytes:
        return bytes(super().xRead(amount, offset))

    def xWrite(self, data: bytes, offset: int) -> None:  # noqa: N802
        """Write through, remembering what a rollback-mode commit must ship."""
        if not self._in_checkpoint:
            self._entry.capture.note_write(offset, len(data), self._read_now)
        super().xWrite(data, offset)

    def xFileControl(self, op: int, ptr: int) -> bool:  # noqa: N802
        """Watch checkpoints and commits; answer the status pragma."""
        if op not in _WATCHED_FCNTLS:  # most calls (lock timeouts, size hints, ...): fast path
            passed: bool = _base_file_control(self, op, ptr)
            return passed
        if op == apsw.SQLITE_FCNTL_CKPT_START:
            self._in_checkpoint = True
        elif op == apsw.SQLITE_FCNTL_CKPT_DONE:
            self._in_checkpoint = False
        elif op == apsw.SQLITE_FCNTL_COMMIT_PHASETWO:
            # a write transaction is over, its commit point (journal finalization, WAL commit
            # frame) long recorded: anything still prepared is from one that failed
            self._entry.replicator.transaction_over()
        elif op == apsw.SQLITE_FCNTL_PRAGMA:
            pragma = apsw.VFSFcntlPragma(ptr)
            name, value = pragma.name.lower(), (pragma.value or "").strip("'\"").lower()
            if name == STATUS_PRAGMA:
                pragma.result = json.dumps(self._entry.replicator.status())
                return True
            if name == "journal_mode" and value in ("memory", "off"):
                # no journal file means no commit point bottomless can see: refuse, loudly
                raise apsw.SQLError(
                    f"bottomless cannot replicate journal_mode={value}: commits would not be"
                    " seen; use WAL, DELETE, TRUNCATE or PERSIST"
                )
        result: bool = super().xFileControl(op, ptr)
        return result

    def xClose(self) -> None:  # noqa: N802
        """Close, releasing the replicator when the last file of the database closes.

        A connection the garbage collector frees (left unclosed in a reference cycle) closes
        in the middle of whatever code allocated at that moment, bottomless's own included,
        which may hold a lock the release needs: then the release runs on a thread of its
        own, once that code has let go."""
        super().xClose()
        if not self._closed:
            self._closed = True
            if _collector.running_here() and not sys.is_finalizing():  # (no new threads then)
                threading.Thread(target=self._vfs.databases.release, args=(self._entry,),
                                 name="bottomless-close", daemon=True).start()
            else:
                self._vfs.databases.release(self._entry)


class _Collector:
    """Which thread, if any, runs a garbage collection now (``gc.callbacks``)."""

    def __init__(self) -> None:
        self._thread: int | None = None
        gc.callbacks.append(self._phase)

    def _phase(self, phase: str, info: dict[str, int]) -> None:
        self._thread = threading.get_ident() if phase == "start" else None

    def running_here(self) -> bool:
        """Whether this thread is inside a collection (freeing what it found)."""
        return self._thread == threading.get_ident()


_collector = _Collector()


class JournalFile(apsw.VFSFile):
    """A rollback journal: truncation to zero (TRUNCATE) or a zeroed header (PERSIST) commits."""

    def __init__(self, entry: _Entry, name: Any, flags: list[int]) -> None:
        super().__init__("", name, flags)
        self._entry = entry

    def xTruncate(self, newsize: int) -> None:  # noqa: N802
        """Truncating the journal to zero finalizes it."""
        if newsize != 0:
            super().xTruncate(newsize)
            return
        finalize_journal(self._entry, apsw.SQLITE_IOERR_TRUNCATE)
        with _failing_commit(self._entry.replicator):
            super().xTruncate(newsize)
        _committed(self._entry.replicator, apsw.SQLITE_IOERR_TRUNCATE, in_place=True)

    def xWrite(self, data: bytes, offset: int) -> None:  # noqa: N802
        """Zeroing the journal header finalizes it."""
        if not (offset == 0 and len(data) >= 28 and not any(data)):
            super().xWrite(data, offset)
            return
        finalize_journal(self._entry, apsw.SQLITE_IOERR_WRITE)
        with _failing_commit(self._entry.replicator):
            super().xWrite(data, offset)
        _committed(self._entry.replicator, apsw.SQLITE_IOERR_WRITE, in_place=True)


class WalFile(apsw.VFSFile):
    """A WAL: the page of a commit frame is held back until its transaction is durable."""

    def __init__(self, entry: _Entry, name: Any, flags: list[int]) -> None:
        super().__init__("", name, flags)
        self._entry = entry
        self._capture = WalCapture()

    def _read_now(self, offset: int, amount: int) -> bytes:
        return bytes(super().xRead(amount, offset))

    @property
    def awaiting_fixup(self) -> bool:
        """Whether this WAL's commit waits for SQLite to fix its frames' checksums."""
        return self._entry.replicator.awaiting_fixup

    def xWrite(self, data: bytes, offset: int) -> None:  # noqa: N802
        """Write through; a commit frame's page first goes to the store.

        The replicated position is recorded while SQLite still holds the WAL write lock (the
        next writer, maybe in another process, numbers its commit after it): right after the
        commit frame, or after the commit frame's header once SQLite has fixed its checksum.
        """
        replicator = self._entry.replicator
        if replicator.awaiting_fixup:
            if self._capture.is_commit_header(data, offset):
                with _failing_commit(replicator):
                    super().xWrite(data, offset)
                _committed(replicator, apsw.SQLITE_IOERR_WRITE)
                return
            if len(data) != WAL_FRAME_HEADER_SIZE:
                # SQLite fixes checksums with frame headers only: anything else starts another
                # transaction, so the one waiting failed before its commit point
                replicator.commit_failed()
        txn = self._capture.on_write(data, offset, self._read_now)
        if txn is None:
            if replicator.awaiting_fixup:  # a commit waits while SQLite fixes checksums
                with _failing_commit(replicator):
                    super().xWrite(data, offset)
            else:
                super().xWrite(data, offset)
            return
        path = replicator.db_path
        image: Callable[[], LocalImage] = lambda: _image_with(path, txn)  # noqa: E731
        try:
            replicator.replicate(txn, image)
        except BaseException as e:
            replicator.commit_failed()
            if isinstance(e, BottomlessError):
                _raise_io(apsw.SQLITE_IOERR_WRITE, e)
            raise
        with _failing_commit(replicator):  # the commit point: if it fails, no commit
            super().xWrite(data, offset)
        fixup_follows = self._capture.take_rewrite()
        try:
            replicator.commit_written(fixup_follows=fixup_follows)
        except BottomlessError as e:
            _raise_io(apsw.SQLITE_IOERR_WRITE, e)

    def xSync(self, flags: int) -> None:  # noqa: N802
        """Sync; a failure right after a commit makes SQLite report that commit as failed."""
        try:
            _wal_sync(self, flags)
        except BaseException:
            self._entry.replicator.sync_failed()
            raise


def _committed(replicator: Replicator, code: int, *, in_place: bool = False) -> None:
    """SQLite passed a transaction's commit point (``in_place``: in the database file, a
    rollback journal mode): record or spool it; if it cannot be spooled, SQLite gets the I/O
    error ``code`` (the replicator resyncs)."""
    try:
        replicator.commit_done(in_place=in_place)
    except BottomlessError as e:
        _raise_io(code, e)


@contextlib.contextmanager
def _failing_commit(replicator: Replicator) -> Iterator[None]:
    """Around the write that is a transaction's commit point: if it fails, the transaction
    did not commit, and what :meth:`Replicator.replicate` prepared for it is dropped."""
    try:
        yield
    except BaseException:
        replicator.commit_failed()
        raise


def _image_with(path: str, txn: Any) -> LocalImage:
    """Local content after ``txn``: the committed WAL plus the transaction's own pages."""
    image = LocalImage(path)
    base_page = image.page
    pages = dict(txn.pages)

    def page(pgno: int) -> bytes:
        return pages[pgno] if pgno in pages else base_page(pgno)

    image.page = page  # type: ignore[method-assign]
    image.db_size = txn.db_size
    image.page_size = txn.page_size
    return image


class VFSRegistration:
    """The process's one registered :class:`BottomlessVFS`, owner of every open database.

    SQLite keeps VFSes by name for the whole process, so there is one, :data:`registration`;
    it is thread-safe. The VFS flushes its databases at a clean exit.
    """

    def __init__(self) -> None:
        self._vfs: BottomlessVFS | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> BottomlessVFS | None:
        """The registered VFS, or ``None`` before the first registration."""
        return self._vfs

    def register(self, settings: Settings | None = None) -> BottomlessVFS:
        """Register the VFS (once) and return it; ``settings`` replace its defaults."""
        return self._register(settings, replace=True)

    def ensure(self) -> BottomlessVFS:
        """The registered VFS, registering it without defaults if it is not yet."""
        return self._register(None, replace=False)

    def _register(self, settings: Settings | None, *, replace: bool) -> BottomlessVFS:
        with self._lock:
            if self._vfs is None:
                self._vfs = BottomlessVFS(settings)
                atexit.register(self._vfs.flush_all)
            elif replace:
                self._vfs.settings = settings
            return self._vfs

    def replicator_for(self, db_path: str) -> Replicator | None:
        """The replicator of ``db_path`` if it is open through the registered VFS."""
        registered = self._vfs
        return registered.replicator_for(db_path) if registered is not None else None


#: the process's bottomless VFS, once registered
registration = VFSRegistration()


def register(settings: Settings | None = None) -> BottomlessVFS:
    """Register the ``bottomless`` VFS (once per process) and return it.

    ``settings`` become the defaults of connections that pass none; URI parameters still win.
    Calling it again replaces the defaults.
    """
    return registration.register(settings)

"""The application-facing calls: connect, register, restore, status, and ls, verify, gc."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import logging
import os
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, overload

from bottomless.backends.base import PageStore
from bottomless.backends.registry import open_store
from bottomless.errors import (
    ConfigError,
    LocalFileExistsError,
    NotReplicatedError,
)
from bottomless.format import default_db_name, validate_db_name
from bottomless.local.files import file_size
from bottomless.local.session import SessionMarker
from bottomless.ops import catalog
from bottomless.ops.catalog import CommitInfo, GenerationInfo, VerifyReport
from bottomless.ops.restore import RestoreResult, restore_file
from bottomless.ops.retention import GcReport, collect_garbage
from bottomless.replica.bookmark import bookmark_from_status
from bottomless.settings import SETTINGS_TOKEN_PARAMETER, Settings, parse_duration, resolve

logger = logging.getLogger(__name__)

# apsw and the VFS (the engine under it) are imported by the calls that open databases, not
# here: restore, ls, verify and gc (and the CLI's start-up) never load them
if TYPE_CHECKING:
    import apsw


def register(settings: Settings | None = None) -> None:
    """Register the VFS named ``"bottomless"`` with SQLite.

    Afterwards any ``apsw.Connection("file:app.db?vfs=bottomless&...", flags=...|SQLITE_OPEN_URI)``
    replicates. ``settings`` are the defaults for connections that bring none; URI parameters
    override them, and ``LIBSQL_BOTTOMLESS_*`` environment variables fill in what they leave.
    """
    from bottomless.sqlite import vfs as _vfs

    _vfs.register(settings)


def connect(path: str, settings: Settings | None = None, **kwargs: Any) -> apsw.Connection:
    """Open ``path`` through the bottomless VFS and return the apsw connection.

    Before the connection reads a byte, a missing or empty local file is restored from the
    store, and an existing one is checked against the replica (see ``initial_replication``);
    a read-only open (``flags=apsw.SQLITE_OPEN_READONLY``) touches no store. ``kwargs`` go
    to :class:`apsw.Connection`.
    Raises ReplicaConflictError, ConfigError or StoreError (all BottomlessError).
    """
    import apsw

    from bottomless.sqlite import vfs as _vfs

    _vfs.registration.ensure()
    query = {"vfs": _vfs.VFS_NAME}
    token = _vfs.settings_tokens.issue(settings) if settings is not None else None
    if token:
        query[SETTINGS_TOKEN_PARAMETER] = token
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?" + urllib.parse.urlencode(query)
    flags = kwargs.pop("flags", apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
    try:
        return apsw.Connection(uri, flags=flags | apsw.SQLITE_OPEN_URI, **kwargs)
    finally:
        if token:
            _vfs.settings_tokens.discard(token)


def log_sqlite(level: int = logging.WARNING) -> None:
    """Route SQLite's own log (``sqlite3_log``) to the ``bottomless.sqlite`` logger.

    SQLite's messages are logged at most at ``level``. Call it once, before opening databases;
    it configures SQLite for the whole process.
    """
    import apsw.ext

    apsw.ext.log_sqlite(level=level, logger=logging.getLogger("bottomless.sqlite"))


def _apsw_of(connection: Any) -> apsw.Connection:
    """The apsw connection under a :mod:`bottomless.dbapi` connection, or ``connection``."""
    inner: apsw.Connection = getattr(connection, "apsw_connection", connection)
    return inner


def wait_durable(connection: Any, timeout: float | None = None) -> None:
    """Block until every transaction committed so far on this database is in the store.

    ``connection`` is an apsw connection or a :mod:`bottomless.dbapi` one.

    Immediate in sync mode. In async mode it waits for the uploader (of this or another
    process). Raises DurabilityTimeoutError (a TimeoutError) after ``timeout`` seconds.
    """
    from bottomless.sqlite import vfs as _vfs

    connection = _apsw_of(connection)
    replicator = _vfs.registration.replicator_for(connection.filename)
    if replicator is None:
        raise NotReplicatedError("this connection was not opened through the bottomless VFS")
    replicator.wait_durable(timeout)


def status(connection: Any) -> dict[str, Any]:
    """Replication status of a bottomless connection (same as ``PRAGMA bottomless_status``).

    ``connection`` is an apsw connection or a :mod:`bottomless.dbapi` one.
    """
    from bottomless.sqlite import vfs as _vfs

    text = _apsw_of(connection).pragma(_vfs.STATUS_PRAGMA)
    if not text:
        raise NotReplicatedError("this connection was not opened through the bottomless VFS")
    result: dict[str, Any] = json.loads(text)
    return result


def position(connection: Any) -> str:
    """A bookmark of the last replicated commit of a bottomless connection's database, for
    :meth:`bottomless.Replica.wait_for` (read-your-writes). In async mode call
    :func:`wait_durable` first, so that it covers every commit made so far."""
    return bookmark_from_status(status(connection))


def restore(
    path: str,
    settings: Settings | None = None,
    *,
    db_name: str | None = None,
    generation: str | None = None,
    commit: int | None = None,
    timestamp: dt.datetime | str | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> RestoreResult:
    """Write a replicated state of a database to ``path`` as a plain SQLite file.

    By default the newest commit of the newest generation. ``commit`` picks an exact commit
    (of ``generation``, default the newest), ``timestamp`` the last commit at or before that
    moment (a datetime, or ISO 8601 text such as ``2026-11-25T10:00:00Z``). ``db_name``
    defaults to ``settings.db_name``, then to the base name of ``path``. The store is only
    read. An existing non-empty ``path`` is replaced only with ``overwrite=True``, else
    LocalFileExistsError (raised too if another connection writes it, or reads its WAL, as
    the restore starts, or it is open through bottomless in this process); its WAL or hot
    journal is first folded into it, so that a crash before the replacement leaves it whole. Raises
    ConfigError (bad db_name or timestamp, or both commit and timestamp),
    ReplicaNotFoundError, CorruptObjectError, RestoreError or StoreError; a target outside
    what the bucket holds fails with the nearest restorable points in the message.
    """
    settings = resolve(settings)
    name = validate_db_name(db_name or settings.db_name or default_db_name(path))
    if os.path.exists(path) and not os.path.isfile(path):
        raise LocalFileExistsError(f"{path} exists and is not a regular file", path=path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, "the directory to restore into does not exist",
                                directory)
    if file_size(path) > 0 and not overwrite:
        raise LocalFileExistsError(
            f"{path} exists; pass overwrite=True (CLI: --force) to replace it", path=path
        )
    moment = _moment(commit, timestamp)
    if overwrite:
        if _open_here(path):
            raise LocalFileExistsError(
                f"{path} is open through bottomless in this process; close its connections"
                " before replacing it", path=path,
            )
        _fold_into_file(path)
    store = open_store(settings, read_only=True)
    try:
        return restore_file(
            store, name, path, generation=generation, seq=commit, timestamp=moment,
            parallelism=settings.parallelism, progress=progress,
            # a restore is no write made outside bottomless: the next open must not take it
            # for one (the file it replaces may have been closed cleanly at the same commit)
            before_replace=lambda _result: SessionMarker(path).forget_stamp(),
        )
    finally:
        store.close()


def _open_here(path: str) -> bool:
    """Whether ``path`` is open through the bottomless VFS in this process (never, if that
    was never imported: a restore does not import it)."""
    vfs = sys.modules.get("bottomless.sqlite.vfs")
    current = vfs.registration.current if vfs is not None else None
    return current is not None and current.replicator_for(os.path.abspath(path)) is not None


def _fold_into_file(path: str) -> None:
    """Before ``path`` is replaced: fold its WAL, or roll back its hot journal, into the file.

    The replacement deletes them first (an old WAL beside the restored file would be replayed
    into it), so a crash before the restored file takes its place would otherwise leave the
    old database without the commits its WAL held, or a hot journal's half-written
    transaction without the journal that undoes it. Raises LocalFileExistsError if another
    connection is writing the database, or reading its WAL, at that moment. A file SQLite
    cannot read or fold (not a database, read-only) is left as it is, and replaced whole.
    """
    if file_size(path + "-wal") == 0 and file_size(path + "-journal") == 0:
        return
    import apsw

    try:
        db = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READWRITE)
    except apsw.Error:
        return  # not openable: nothing SQLite could fold
    try:
        db.setbusytimeout(1000)
        db.execute("SELECT count(*) FROM sqlite_master").fetchall()  # recovers either
        wal = db.execute("PRAGMA journal_mode").fetchall()[0][0] == "wal"
        busy = wal and bool(db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()[0][0])
        if not busy:
            db.execute("BEGIN IMMEDIATE; ROLLBACK")  # BusyError while another one writes
    except apsw.BusyError:
        busy = True
    except apsw.Error as e:  # not a database, read-only …: replaced as it is
        logger.warning("%s: could not fold its %s into it before replacing it (%s)", path,
                       "WAL" if file_size(path + "-wal") else "journal", e)
        busy = False
    finally:
        db.close()
    if busy:
        raise LocalFileExistsError(
            f"{path} is in use by another connection; close it before replacing it", path=path
        )


def parse_timestamp(text: str) -> dt.datetime:
    """Parse ISO 8601 text (``Z`` allowed); naive times are UTC. Raises ConfigError."""
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"invalid timestamp {text!r}: use ISO 8601, for example 2026-11-25T10:00:00Z"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _moment(commit: int | None, timestamp: dt.datetime | str | None) -> dt.datetime | None:
    """The aware datetime a point-in-time target names, if any; raises ConfigError."""
    if commit is not None and timestamp is not None:
        raise ConfigError("pass either commit or timestamp, not both", field="timestamp")
    moment = parse_timestamp(timestamp) if isinstance(timestamp, str) else timestamp
    if moment is not None and moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment


@contextlib.contextmanager
def _opened_store(settings: Settings | None) -> Iterator[tuple[Settings, PageStore]]:
    """The resolved settings and their store, closed afterwards; for ls, verify and gc, which
    never create a missing bucket."""
    resolved = resolve(settings)
    store = open_store(resolved, read_only=True)
    try:
        yield resolved, store
    finally:
        store.close()


@overload
def ls(db_name: None = None, settings: Settings | None = None) -> list[str]: ...


@overload
def ls(
    db_name: str, settings: Settings | None = None, *, generation: None = None
) -> list[GenerationInfo]: ...


@overload
def ls(db_name: str, settings: Settings | None = None, *, generation: str) -> list[CommitInfo]: ...


def ls(
    db_name: str | None = None,
    settings: Settings | None = None,
    *,
    generation: str | None = None,
) -> list[str] | list[GenerationInfo] | list[CommitInfo]:
    """List what the store holds, as ``bottomless ls`` shows it.

    Without ``db_name``: the names of the databases that have at least one generation. With
    ``db_name``: its generations, oldest first (when each started and why, its snapshots, its
    commits and their times); an unknown database has none. With ``generation`` too: that
    generation's commits, in order (number, time, pages, bytes). ``settings`` default to the
    ``LIBSQL_BOTTOMLESS_*`` environment. The store is only read.

    Raises ConfigError (an invalid ``db_name``, or ``generation`` without ``db_name``),
    ReplicaNotFoundError (no such ``generation``), CorruptObjectError (a manifest or commit
    header does not parse) or StoreError.
    """
    if db_name is None:
        if generation is not None:
            raise ConfigError("listing commits needs a db_name as well as a generation",
                              field="db_name")
        with _opened_store(settings) as (_, store):
            return catalog.list_databases(store)
    name = validate_db_name(db_name)
    with _opened_store(settings) as (resolved, store):
        if generation is None:
            return catalog.describe_generations(store, name)
        return catalog.describe_commits(store, name, generation, resolved.parallelism)


def verify(
    db_name: str,
    settings: Settings | None = None,
    *,
    generation: str | None = None,
    commit: int | None = None,
    timestamp: dt.datetime | str | None = None,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Check every object of ``db_name``, restore a point to a temporary file and check it.

    Every snapshot, part and commit is read and checked (checksums, the chain of commits,
    parts against their manifests); then the target (as for :func:`restore`: the newest
    commit, or ``generation`` / ``commit`` / ``timestamp``) is restored and
    ``PRAGMA integrity_check`` runs on it. The store is only read. ``progress`` is called with
    the size of each object read.

    Problems found in the bucket are collected, not raised: check ``report.ok`` and read
    ``report.problems``, which name each faulty object. Raises ConfigError (bad db_name or
    timestamp, or both commit and timestamp) or StoreError (the store cannot be read).
    """
    name = validate_db_name(db_name)
    moment = _moment(commit, timestamp)
    with _opened_store(settings) as (resolved, store):
        return catalog.verify(
            store, name, generation=generation, seq=commit, timestamp=moment,
            parallelism=resolved.parallelism, progress=progress,
        )


def gc(
    db_name: str,
    settings: Settings | None = None,
    *,
    older_than: dt.timedelta | str | None = None,
    keep_snapshots: int | None = None,
    dry_run: bool = False,
) -> GcReport:
    """Delete the objects of ``db_name`` that no point inside retention needs.

    Every point newer than ``older_than`` (a timedelta or text such as ``7d``; ``0s`` keeps
    only the newest state; default ``settings.retention``) stays restorable, so do the newest
    ``keep_snapshots`` snapshots (default ``settings.keep_snapshots``) and the newest state.
    When no snapshot of the newest generation stands at the window's start, gc first builds
    one there from the bucket (as a background snapshot is built, with the ``compression``,
    ``parallelism`` and ``snapshot_part_mb`` settings), so that the log before it can go too;
    ``report.snapshot_built`` names its commit. With ``dry_run`` nothing is built or deleted
    and the report says what would be. Deletions run in an order that a gc killed half-way
    leaves no broken point behind; a writer may keep committing meanwhile.

    Raises ConfigError (bad db_name, duration or ``keep_snapshots``), CorruptObjectError (a
    snapshot manifest, or the log the snapshot is built from, does not parse; nothing is
    deleted then) or StoreError.
    """
    name = validate_db_name(db_name)
    if keep_snapshots is not None and keep_snapshots < 0:
        raise ConfigError(f"keep_snapshots must be 0 or more, not {keep_snapshots}",
                          field="keep_snapshots", value=keep_snapshots)
    with _opened_store(settings) as (resolved, store):
        window = older_than if older_than is not None else resolved.retention
        return collect_garbage(
            store, name,
            older_than=parse_duration(window) if isinstance(window, str) else window,
            keep_snapshots=resolved.keep_snapshots if keep_snapshots is None else keep_snapshots,
            dry_run=dry_run, compression=resolved.compression,
            parallelism=resolved.parallelism, part_mb=resolved.snapshot_part_mb,
        )

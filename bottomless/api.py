"""The application-facing calls: connect, register, restore, status."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import urllib.parse
from collections.abc import Callable
from typing import Any

import apsw
import apsw.ext

from bottomless.backends.base import open_store
from bottomless.errors import BottomlessError, ConfigError
from bottomless.format import default_db_name, validate_db_name
from bottomless.local.files import file_size
from bottomless.ops.restore import RestoreResult, restore_file
from bottomless.settings import SETTINGS_TOKEN_PARAMETER, Settings, resolve
from bottomless.sqlite import vfs as _vfs


def register(settings: Settings | None = None) -> None:
    """Register the VFS named ``"bottomless"`` with SQLite.

    Afterwards any ``apsw.Connection("file:app.db?vfs=bottomless&...", flags=...|SQLITE_OPEN_URI)``
    replicates. ``settings`` are the defaults for connections that bring none; URI parameters
    override them, and ``LIBSQL_BOTTOMLESS_*`` environment variables fill in what they leave.
    """
    _vfs.register(settings)


def connect(path: str, settings: Settings | None = None, **kwargs: Any) -> apsw.Connection:
    """Open ``path`` through the bottomless VFS and return the apsw connection.

    Before the connection reads a byte, a missing or empty local file is restored from the
    store, and an existing one is checked against the replica (see ``initial_replication``).
    ``kwargs`` go to :class:`apsw.Connection`. Raises ReplicaConflictError, ConfigError or
    StoreError (all BottomlessError).
    """
    if _vfs._registered is None:
        _vfs.register(None)
    query = {"vfs": _vfs.VFS_NAME}
    token = _vfs.settings_token(settings) if settings is not None else None
    if token:
        query[SETTINGS_TOKEN_PARAMETER] = token
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?" + urllib.parse.urlencode(query)
    flags = kwargs.pop("flags", apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
    try:
        return apsw.Connection(uri, flags=flags | apsw.SQLITE_OPEN_URI, **kwargs)
    finally:
        if token:
            _vfs._settings_by_token.pop(token, None)


def log_sqlite(level: int = logging.WARNING) -> None:
    """Route SQLite's own log (``sqlite3_log``) to the ``bottomless.sqlite`` logger.

    SQLite's messages are logged at most at ``level``. Call it once, before opening databases;
    it configures SQLite for the whole process.
    """
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
    connection = _apsw_of(connection)
    registered = _vfs._registered
    replicator = registered.replicator_for(connection.filename) if registered else None
    if replicator is None:
        raise BottomlessError("this connection was not opened through the bottomless VFS")
    replicator.wait_durable(timeout)


def status(connection: Any) -> dict[str, Any]:
    """Replication status of a bottomless connection (same as ``PRAGMA bottomless_status``).

    ``connection`` is an apsw connection or a :mod:`bottomless.dbapi` one.
    """
    text = _apsw_of(connection).pragma(_vfs.STATUS_PRAGMA)
    if not text:
        raise BottomlessError("this connection was not opened through the bottomless VFS")
    result: dict[str, Any] = json.loads(text)
    return result


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
    read. An existing non-empty ``path`` is replaced only with ``overwrite=True``. Raises
    ReplicaNotFoundError, CorruptObjectError, RestoreError or StoreError; a target outside what
    the bucket holds fails with the nearest restorable points in the message.
    """
    settings = resolve(settings)
    name = validate_db_name(db_name or settings.db_name or default_db_name(path))
    if file_size(path) > 0 and not overwrite:
        raise BottomlessError(f"{path} exists; pass overwrite=True (CLI: --force) to replace it")
    if commit is not None and timestamp is not None:
        raise ConfigError("pass either commit or timestamp, not both")
    moment = parse_timestamp(timestamp) if isinstance(timestamp, str) else timestamp
    if moment is not None and moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    store = open_store(settings)
    try:
        return restore_file(
            store, name, path, generation=generation, seq=commit, timestamp=moment,
            parallelism=settings.parallelism, progress=progress,
        )
    finally:
        store.close()


def parse_timestamp(text: str) -> dt.datetime:
    """Parse ISO 8601 text (``Z`` allowed); naive times are UTC. Raises ConfigError."""
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"invalid timestamp {text!r}: use ISO 8601, for example 2026-11-25T10:00:00Z"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)

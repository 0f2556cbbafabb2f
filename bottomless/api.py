"""The application-facing calls: connect, register, restore, status."""

from __future__ import annotations

import json
import os
import urllib.parse
from typing import Any

import apsw

from bottomless import vfs as _vfs
from bottomless.errors import BottomlessError
from bottomless.format import validate_db_name
from bottomless.localdb import file_size
from bottomless.pagestore import open_store
from bottomless.restore import RestoreResult, restore_file
from bottomless.settings import SETTINGS_TOKEN_PARAMETER, Settings, resolve


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


def status(connection: apsw.Connection) -> dict[str, Any]:
    """Replication status of a bottomless connection (same as ``PRAGMA bottomless_status``)."""
    text = connection.pragma(_vfs.STATUS_PRAGMA)
    if not text:
        raise BottomlessError("this connection was not opened through the bottomless VFS")
    result: dict[str, Any] = json.loads(text)
    return result


def restore(
    path: str,
    settings: Settings | None = None,
    *,
    db_name: str | None = None,
    overwrite: bool = False,
) -> RestoreResult:
    """Write the newest replicated state of a database to ``path`` as a plain SQLite file.

    ``db_name`` defaults to ``settings.db_name``, then to the base name of ``path``. The store is
    only read. An existing non-empty ``path`` is replaced only with ``overwrite=True``. Raises
    ReplicaNotFoundError, CorruptObjectError, RestoreError or StoreError.
    """
    settings = resolve(settings)
    name = validate_db_name(db_name or settings.db_name or os.path.basename(path))
    if file_size(path) > 0 and not overwrite:
        raise BottomlessError(f"{path} exists; pass overwrite=True (CLI: --force) to replace it")
    store = open_store(settings)
    try:
        return restore_file(store, name, path, parallelism=settings.parallelism)
    finally:
        store.close()

"""Opening a database file for a DB-API connection: through the bottomless VFS, by URI."""

from __future__ import annotations

import os
import urllib.parse

import apsw

from bottomless.settings import SETTINGS_TOKEN_PARAMETER, Settings
from bottomless.sqlite import vfs as _vfs


def _uri_with(database: str, extra: dict[str, str]) -> str:
    base, hash_mark, fragment = database.partition("#")
    separator = "&" if "?" in base else "?"
    return base + separator + urllib.parse.urlencode(extra) + hash_mark + fragment


def _shared_memory(path: str, params: dict[str, str]) -> str:
    """The ``memdb`` URI of a shared in-memory database (``mode=memory&cache=shared``, as
    Django's test database is): apsw's SQLite has no shared cache, so each connection would
    get a database of its own; memdb shares one between the connections of the process that
    name it with a leading ``/``, for as long as one of them is open."""
    rest = {k: v for k, v in params.items() if k not in ("mode", "cache", "vfs")}
    name = "/" + (path.lstrip("/") or ":memory:")
    return "file:" + urllib.parse.quote(name) + "?" + urllib.parse.urlencode(
        {"vfs": "memdb", **rest})


def open_database(database: str, uri: bool, settings: Settings | None, cache: int
                  ) -> apsw.Connection:
    """Open ``database``: files through the bottomless VFS, in-memory databases plainly.

    A URI that names another ``vfs`` is opened as it is. apsw's errors are not translated
    here: the caller turns them into DB-API exceptions.
    """
    flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    if not uri and database in (":memory:", ""):
        return apsw.Connection(database, flags=flags, statementcachesize=cache)
    extra = {"vfs": _vfs.VFS_NAME}
    if uri:
        parsed = urllib.parse.urlsplit(database)
        params = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
        path = parsed.path if parsed.scheme == "file" else database
        if "vfs" not in params and params.get("cache") == "shared" and (
            params.get("mode") == "memory" or path == ":memory:"
        ):
            database = _shared_memory(path, params)
            params["vfs"] = "memdb"
        if params.get("vfs") == _vfs.VFS_NAME:  # named already: settings= still applies
            del extra["vfs"]
        elif "vfs" in params or params.get("mode") == "memory" or path in ("", ":memory:"):
            return apsw.Connection(database, flags=flags | apsw.SQLITE_OPEN_URI,
                                   statementcachesize=cache)
        if parsed.scheme != "file":
            database = "file:" + urllib.parse.quote(database)
        target = database
    else:
        target = "file:" + urllib.parse.quote(os.path.abspath(database))
    _vfs.registration.ensure()
    token = _vfs.settings_tokens.issue(settings) if settings is not None else None
    if token:
        extra[SETTINGS_TOKEN_PARAMETER] = token
    try:
        return apsw.Connection(_uri_with(target, extra), flags=flags | apsw.SQLITE_OPEN_URI,
                               statementcachesize=cache)
    finally:
        if token:
            _vfs.settings_tokens.discard(token)

"""The Django database backend: Django's SQLite backend over :mod:`bottomless.dbapi`.

Everything Django's own ``django.db.backends.sqlite3`` does (SQL, schema editing, introspection,
the functions it registers on each connection) is reused unchanged; only the DB-API module
underneath is swapped, so every commit of a file database is replicated before it returns.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from itertools import tee
from typing import Any

from django.db.backends.sqlite3 import base as sqlite_base
from django.db.backends.sqlite3._functions import register as register_functions
from django.utils.asyncio import async_unsafe

from bottomless import dbapi as Database  # noqa: N812  (Django's name for the DB-API module)
from bottomless.django.client import DatabaseClient
from bottomless.django.creation import DatabaseCreation
from bottomless.django.features import DatabaseFeatures
from bottomless.django.operations import DatabaseOperations
from bottomless.django.options import (
    check_options,
    is_bottomless_option,
    settings_from_options,
)
from bottomless.settings import Settings

# the adapters and converters Django's backend registers on sqlite3 at import apply to
# bottomless.dbapi too: it asks sqlite3's registries after its own (see bottomless.dbapi.types)

class DatabaseWrapper(sqlite_base.DatabaseWrapper):  # type: ignore[misc]
    """A Django SQLite database whose file is replicated by bottomless.

    ``OPTIONS`` takes the :class:`bottomless.Settings` fields (see
    :mod:`bottomless.django.options`) next to the SQLite backend's own options. A bad
    bottomless option raises :class:`bottomless.ConfigError` when the first connection opens.
    """

    Database = Database
    client_class = DatabaseClient
    creation_class = DatabaseCreation
    features_class = DatabaseFeatures
    ops_class = DatabaseOperations

    def bottomless_settings(self) -> Settings:
        """The replication settings of this database, from its ``OPTIONS`` and the environment.

        Raises ConfigError naming each bad option.
        """
        options: Mapping[str, Any] = self.settings_dict["OPTIONS"]
        check_options(options, self.alias)
        return settings_from_options(options, self.alias)

    def get_connection_params(self) -> dict[str, Any]:
        """Django's SQLite connection parameters plus ``settings`` for bottomless."""
        settings = self.bottomless_settings()
        kwargs: dict[str, Any] = super().get_connection_params()
        for name in [name for name in kwargs if is_bottomless_option(name)]:
            del kwargs[name]
        if isinstance(kwargs["database"], os.PathLike):
            kwargs["database"] = os.fspath(kwargs["database"])
        kwargs["settings"] = settings
        return kwargs

    @async_unsafe  # type: ignore[untyped-decorator]
    def get_new_connection(self, conn_params: dict[str, Any]) -> Database.Connection:
        """Open the database through bottomless and prepare it as Django's SQLite backend does:
        its SQL functions, foreign keys on, atomic table renames, then ``init_command``."""
        connection = Database.connect(**conn_params)
        register_functions(connection)
        commands = ["PRAGMA foreign_keys = ON", "PRAGMA legacy_alter_table = OFF"]
        commands += [command.strip() for command in self.init_commands if command.strip()]
        for command in commands:
            # closed at once, not whenever the cursor is collected: a statement left active
            # (PRAGMA journal_mode returns a row) makes COMMIT fail ("SQL statements in progress")
            connection.execute(command).close()
        return connection

    def create_cursor(self, name: str | None = None) -> SQLiteCursorWrapper:
        """A cursor taking Django's ``%s`` / ``%(name)s`` placeholders."""
        cursor: SQLiteCursorWrapper = self.connection.cursor(factory=SQLiteCursorWrapper)
        return cursor


class SQLiteCursorWrapper(Database.Cursor):
    """A :mod:`bottomless.dbapi` cursor that takes Django's placeholder styles.

    ``%s`` ("format") becomes ``?`` and ``%(name)s`` ("pyformat") becomes ``:name``; a literal
    ``%s`` is written ``%%s``, as with Django's SQLite backend.
    """

    # the conversion itself is Django's (a plain function, not tied to sqlite3.Cursor)
    convert_query = sqlite_base.SQLiteCursorWrapper.convert_query

    def execute(self, query: str, params: Any = None) -> SQLiteCursorWrapper:
        """Execute ``query`` with Django-style placeholders."""
        if params is None:
            return super().execute(query)  # type: ignore[return-value]
        names = list(params) if isinstance(params, Mapping) else None
        return super().execute(  # type: ignore[return-value]
            self.convert_query(query, param_names=names), params
        )

    def executemany(self, query: str, param_list: Iterable[Any]) -> SQLiteCursorWrapper:
        """Execute ``query`` once per parameter set; a generator is consumed only once."""
        peek, param_list = tee(iter(param_list))
        first = next(peek, None)
        names = list(first) if first and isinstance(first, Mapping) else None
        return super().executemany(  # type: ignore[return-value]
            self.convert_query(query, param_names=names), param_list
        )

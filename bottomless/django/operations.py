"""SQL operations: Django's SQLite ones, with the version check made against apsw's SQLite."""

from __future__ import annotations

from django.db.backends.sqlite3 import operations as sqlite_operations

from bottomless import dbapi


class DatabaseOperations(sqlite_operations.DatabaseOperations):  # type: ignore[misc]
    """Django's SQLite operations over :mod:`bottomless.dbapi`."""

    def force_group_by(self) -> list[str]:
        """SQLite before 3.39 needs ``GROUP BY TRUE`` for an aggregate over no columns."""
        return ["GROUP BY TRUE"] if dbapi.sqlite_version_info < (3, 39) else []

"""Database features, decided by the SQLite library bottomless runs on.

Django's SQLite backend reads the version of the SQLite library behind the ``sqlite3`` module;
bottomless runs on apsw's, which may be newer or older, so the version-dependent features are
decided again from :data:`bottomless.dbapi.sqlite_version_info`.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from django.db.backends.sqlite3 import features as sqlite_features

from bottomless import dbapi

#: the one Django test skipped for a SQLite version (see Django's SQLite features)
_JSON_QUOTES_REASON = "SQLite does not parse escaped double quotes in the JSON path notation"
_JSON_QUOTES_TEST = (
    "model_fields.test_jsonfield.TestQuerying.test_lookups_special_chars_double_quotes"
)


class DatabaseFeatures(sqlite_features.DatabaseFeatures):  # type: ignore[misc]
    """Django's SQLite features, with the version checks made against apsw's SQLite."""

    can_alter_table_drop_column = dbapi.sqlite_version_info >= (3, 35, 5)

    @cached_property
    def django_test_skips(self) -> dict[str, set[str]]:
        """Django's own skips; the JSON-path one depends on this SQLite's version."""
        skips: dict[str, set[str]] = dict(super().django_test_skips)
        skips.pop(_JSON_QUOTES_REASON, None)
        if dbapi.sqlite_version_info < (3, 47):
            skips[_JSON_QUOTES_REASON] = {_JSON_QUOTES_TEST}
        return skips

    @cached_property
    def can_return_columns_from_insert(self) -> Any:
        """``INSERT ... RETURNING`` needs SQLite 3.35."""
        return dbapi.sqlite_version_info >= (3, 35)

"""pytest plugin: pandas's own SQL tests (``pandas/tests/io/test_sql.py``) on bottomless.

pandas builds every SQLite case of its suite from two fixtures of that module: ``sqlite_str``
(a ``sqlite:///`` URL that the SQLAlchemy engines and connections come from) and
``sqlite_buildin`` (a ``sqlite3`` connection, the DB-API path). Loaded with
``-p bottomless_pandas``, this plugin imports that module before pytest collects it and
replaces the two fixtures with ones that give a ``sqlite+bottomless:///`` URL and a
:mod:`bottomless.dbapi` connection on a file, so every case pandas derives from them runs on
replicated databases. The store comes from the ``LIBSQL_BOTTOMLESS_*`` environment the caller
sets.
"""

from __future__ import annotations

import contextlib
import importlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import bottomless.dbapi


@pytest.fixture
def sqlite_str(temp_file: Path) -> str:
    """A replicated file database's URL (pandas's: ``sqlite:///{temp_file}``)."""
    pytest.importorskip("sqlalchemy")
    return f"sqlite+bottomless:///{temp_file}"


@pytest.fixture
def sqlite_buildin(tmp_path: Path) -> Iterator[Any]:
    """A bottomless.dbapi connection on a file (pandas's: ``sqlite3.connect(":memory:")``)."""
    path = tmp_path / f"buildin-{uuid.uuid4()}.db"  # a db_name of its own, as pandas has
    with contextlib.closing(bottomless.dbapi.connect(str(path))) as closing, closing as conn:
        yield conn


def pytest_configure(config: pytest.Config) -> None:
    """Put the two fixtures into pandas's module before pytest collects it from there."""
    suite = importlib.import_module("pandas.tests.io.test_sql")
    for fixture in (sqlite_str, sqlite_buildin):
        name = fixture.__name__
        if not hasattr(suite, name):
            raise pytest.UsageError(f"pandas's test_sql.py has no fixture {name!r} any more")
        setattr(suite, name, fixture)

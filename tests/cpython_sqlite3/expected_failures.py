"""CPython ``test.test_sqlite3`` tests that cannot pass against ``bottomless.dbapi``.

Test id (without the ``test.test_sqlite3.`` prefix) -> the reason, in one line. ``run.py``
counts these as ``xfail`` and reports any that passes as ``XPASS``, so the lists stay honest.
"""

from __future__ import annotations

#: differences that no setting removes
EXPECTED_FAILURES: dict[str, str] = {
    "test_regression.RegressionTests.test_bind_mutating_list":
        "apsw binds a list in place and crashes if an adapter empties it, so bottomless binds"
        " a copy: no IndexError",
    "test_dbapi.ModuleTests.test_shared_cache_deprecated":
        "apsw's SQLite is built with SQLITE_OMIT_SHARED_CACHE: enable_shared_cache(True)"
        " raises OperationalError",
    "test_dbapi.OpenTests.test_open_undecodable_uri":
        "apsw's Python VFS layer cannot take a file name that is not UTF-8",
    "test_dbapi.OpenTests.test_open_with_undecodable_path":
        "apsw's Python VFS layer cannot take a file name that is not UTF-8",
}

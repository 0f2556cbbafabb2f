"""CPython ``test.test_sqlite3`` tests that cannot pass against ``bottomless.dbapi``.

Test id (without the ``test.test_sqlite3.`` prefix) -> the reason, in one line. ``run.py``
takes :func:`for_python` of the running interpreter, counts those tests as ``xfail`` and
reports any that passes as ``XPASS``, and any that the suite lacks as ``STALE``, so the lists
stay honest.
"""

from __future__ import annotations

#: differences that no setting removes, on every Python version
EXPECTED_FAILURES: dict[str, str] = {
    "test_regression.RegressionTests.test_bind_mutating_list":
        "apsw binds a list in place and crashes if an adapter empties it, so bottomless binds"
        " a copy: no IndexError",
    "test_dbapi.OpenTests.test_open_undecodable_uri":
        "apsw's Python VFS layer cannot take a file name that is not UTF-8",
    "test_dbapi.OpenTests.test_open_with_undecodable_path":
        "apsw's Python VFS layer cannot take a file name that is not UTF-8",
}

#: differences in tests that only some Python versions have:
#: (first, last) version, inclusive (None: open-ended) -> test id -> reason
BY_VERSION: list[tuple[tuple[int, int] | None, tuple[int, int] | None, dict[str, str]]] = [
    (None, (3, 11), {
        "test_dbapi.ModuleTests.test_shared_cache_deprecated":
            "apsw's SQLite is built with SQLITE_OMIT_SHARED_CACHE: enable_shared_cache(True)"
            " raises OperationalError",
    }),
]


def for_python(version: tuple[int, ...]) -> dict[str, str]:
    """The expected failures on Python ``version`` (``sys.version_info``)."""
    found = dict(EXPECTED_FAILURES)
    for first, last, listed in BY_VERSION:
        if (first is None or tuple(version[:2]) >= first) and (
            last is None or tuple(version[:2]) <= last
        ):
            found.update(listed)
    return found

"""Run CPython's own ``test.test_sqlite3`` suite against ``bottomless.dbapi``.

    python tests/cpython_sqlite3/run.py             # bottomless.dbapi installed as sqlite3
    python tests/cpython_sqlite3/run.py --stdlib    # the real sqlite3: checks the harness
    python tests/cpython_sqlite3/run.py -k Blob -v  # only test ids containing "Blob"
    python tests/cpython_sqlite3/run.py --json out.json
    python tests/cpython_sqlite3/run.py --db-name t  # every file database replicates as 't'

In this (fresh) interpreter ``bottomless.dbapi`` becomes ``sqlite3`` and ``sqlite3.dbapi2``
in ``sys.modules`` before the suite is imported, so every ``import sqlite3`` in it gets
bottomless. ``sqlite3.dump`` stays the standard library's (``Connection.iterdump`` uses it);
``sqlite3.__main__`` (the CLI that 3.12's ``test_cli`` tests) is then found in the package,
``bottomless/dbapi/__main__.py``.
File databases replicate to the in-memory backend, a fresh namespace per test, so a test that
deletes its file and reconnects gets an empty database, as it would with ``sqlite3``. The
suite's file name, ``@test_<pid>_tmpæ``, is not a valid db_name itself; bottomless derives
one from it (``test_<pid>_tmp_-<hash>``).

Each test is printed with its outcome. Known differences are listed, with their reasons, in
``expected_failures.py`` beside this file (some for some Python versions only): those count
as ``xfail``, and one that passes is reported as ``XPASS``. The exit status is 0 when nothing
else failed and nothing else passed unexpectedly.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import tempfile
import time
import traceback
import unittest
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SUITE = "test.test_sqlite3"


def expected_failures(*, db_name: bool = False) -> dict[str, str]:
    """Full test id -> reason, from ``expected_failures.py``, for this Python version."""
    spec = importlib.util.spec_from_file_location("_cpython_xfail", HERE / "expected_failures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    listed: dict[str, str] = module.for_python(sys.version_info)
    return {f"{SUITE}.{test}": reason for test, reason in listed.items()}


def install_bottomless() -> Any:
    """Make ``import sqlite3`` (and ``sqlite3.dbapi2``) return ``bottomless.dbapi``."""
    sys.path.insert(0, str(ROOT))
    importlib.import_module("sqlite3.dump")  # the standard library's, kept for iterdump
    dump = sys.modules["sqlite3.dump"]
    for name in [n for n in sys.modules if n == "sqlite3" or n.startswith("sqlite3.")]:
        del sys.modules[name]
    dbapi = importlib.import_module("bottomless.dbapi")
    sys.modules["sqlite3"] = dbapi
    sys.modules["sqlite3.dbapi2"] = dbapi
    sys.modules["sqlite3.dump"] = dump
    return dbapi


def _format(err: Any) -> str:
    return "".join(traceback.format_exception(*err))


class _Result(unittest.TextTestResult):
    """Records one outcome per test id and gives each test a fresh replica namespace."""

    def __init__(self, *args: Any, expected: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.expected = expected
        self.outcomes: dict[str, str] = {}
        self.details: dict[str, str] = {}
        self._count = 0

    def startTest(self, test: unittest.TestCase) -> None:  # noqa: N802 - unittest's name
        self._count += 1
        os.environ["LIBSQL_BOTTOMLESS_BUCKET"] = f"cpython-sqlite3-{os.getpid()}-{self._count}"
        super().startTest(test)

    def _record(self, test: Any, outcome: str, detail: str = "") -> None:
        name = test.id()
        if name in self.outcomes and self.outcomes[name] not in ("ok", "skip"):
            return  # an error in tearDown after a failure: keep the first
        self.outcomes[name] = outcome
        if detail:
            self.details[name] = detail

    def addSuccess(self, test: unittest.TestCase) -> None:  # noqa: N802
        super().addSuccess(test)
        self._record(test, "ok")

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:  # noqa: N802
        super().addFailure(test, err)
        self._record(test, "FAIL", _format(err))

    def addError(self, test: Any, err: Any) -> None:  # noqa: N802
        super().addError(test, err)
        self._record(test, "ERROR", _format(err))

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:  # noqa: N802
        super().addSkip(test, reason)
        self._record(test, "skip", reason)

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:  # noqa: N802
        super().addExpectedFailure(test, err)
        self._record(test, "ok")  # the suite's own expectedFailure: behaves like sqlite3

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:  # noqa: N802
        super().addUnexpectedSuccess(test)
        self._record(test, "FAIL", "unexpected success of the suite's own expectedFailure")

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:  # noqa: N802
        super().addSubTest(test, subtest, err)
        if err is not None:
            kind = "FAIL" if issubclass(err[0], test.failureException) else "ERROR"
            self._record(test, kind, f"{subtest}\n{_format(err)}")


def _filtered(suite: unittest.TestSuite, pattern: str | None) -> unittest.TestSuite:
    if not pattern:
        return suite
    kept = unittest.TestSuite()
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            sub = _filtered(item, pattern)
            if sub.countTestCases():
                kept.addTest(sub)
        elif pattern in item.id():
            kept.addTest(item)
    return kept


def main(argv: list[str] | None = None) -> int:
    """Run the suite and print a line per test; 0 when it matches the expected failures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--stdlib", action="store_true", help="test the real sqlite3 instead")
    parser.add_argument("-k", dest="pattern", help="only test ids containing this text")
    parser.add_argument("-v", "--verbose", action="store_true", help="print tracebacks")
    parser.add_argument("--json", help="write {test id: outcome} and a summary to this file")
    parser.add_argument(
        "--db-name", help="LIBSQL_BOTTOMLESS_DB_NAME for every file database (the suite's"
        " '@test_<pid>_tmpæ' file name is not a valid default)",
    )
    args = parser.parse_args(argv)

    expected = {} if args.stdlib else expected_failures(db_name=bool(args.db_name))
    if not args.stdlib:
        os.environ["LIBSQL_BOTTOMLESS_BACKEND"] = "memory"
        os.environ.pop("LIBSQL_BOTTOMLESS_DB_NAME", None)
        if args.db_name:
            os.environ["LIBSQL_BOTTOMLESS_DB_NAME"] = args.db_name
        module = install_bottomless()
        print(f"sqlite3 is {module.__name__} (SQLite {module.sqlite_version})")
    else:
        import sqlite3

        print(f"sqlite3 is the standard library's (SQLite {sqlite3.sqlite_version})")

    workdir = tempfile.mkdtemp(prefix="cpython-sqlite3-")
    os.chdir(workdir)  # the suite writes its TESTFN files into the working directory
    package = importlib.import_module(SUITE)
    suite = _filtered(unittest.defaultTestLoader.loadTestsFromModule(package), args.pattern)

    with open(os.devnull, "w") as quiet:
        runner = unittest.TextTestRunner(
            stream=quiet, verbosity=0,
            resultclass=lambda *a, **k: _Result(*a, expected=expected, **k),
        )
        started = time.monotonic()
        result = runner.run(suite)
        elapsed = time.monotonic() - started
    assert isinstance(result, _Result)

    counts: dict[str, int] = {}
    final: dict[str, str] = {}
    for name, outcome in sorted(result.outcomes.items()):
        if name in expected:
            outcome = "XPASS" if outcome == "ok" else "xfail" if outcome != "skip" else "skip"
        final[name] = outcome
        counts[outcome] = counts.get(outcome, 0) + 1
        line = f"{outcome:5} {name}"
        if outcome in ("xfail", "XPASS"):
            line += f"  # {expected[name]}"
        print(line)
        if args.verbose and outcome in ("FAIL", "ERROR") and name in result.details:
            print("      " + result.details[name].rstrip().replace("\n", "\n      "))
    stale = sorted(set(expected) - set(final)) if not args.pattern else []
    for name in stale:
        print(f"STALE {name}  # on the expected-failure list but not in the suite")
    summary = ", ".join(f"{counts[k]} {k}" for k in sorted(counts))
    print(f"\n{len(final)} tests in {elapsed:.1f}s: {summary}")

    if args.json:
        with open(args.json, "w") as out:
            json.dump({"outcomes": final, "counts": counts, "stale": stale,
                       "details": {k: v for k, v in result.details.items()
                                   if final.get(k) in ("FAIL", "ERROR")}}, out, indent=1)
    bad = counts.get("FAIL", 0) + counts.get("ERROR", 0) + counts.get("XPASS", 0) + len(stale)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

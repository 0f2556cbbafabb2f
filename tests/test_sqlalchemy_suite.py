"""SQLAlchemy's compliance suite: sqlite+bottomless passes all that sqlite+pysqlite passes.

Both runs use ``tests/sqla_suite/`` (same requirements class, file databases; bottomless
replicates to a local directory) in two subprocesses started together, each in its own
scratch directory, and report through JUnit XML. Together they take about 30 s on two cores,
so the test runs by default.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from helpers import assert_suite_parity

SUITE = Path(__file__).parent / "sqla_suite"
DRIVERS = ("pysqlite", "bottomless")
#: the plugin renames each test class per database: ``FooTest_sqlite+pysqlite_3_40_1``
BACKEND_SUFFIX = re.compile(r"_sqlite\+\w+?_\d[\d_]*$")


def _start(driver: str, workdir: Path) -> subprocess.Popen[str]:
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    command = [
        sys.executable, "-m", "pytest", "-c", str(SUITE / "setup.cfg"), "--rootdir", str(SUITE),
        str(SUITE / "test_suite.py"), "--db", driver, "-q",
        f"--junitxml={workdir / 'results.xml'}",
    ]
    return subprocess.Popen(
        command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )


def _test_id(classname: str, name: str) -> str:
    """``Class::test``, the backend suffix taken off the class."""
    return f"{BACKEND_SUFFIX.sub('', classname.rsplit('.', 1)[-1])}::{name}"


def test_bottomless_passes_everything_pysqlite_passes(tmp_path: Path) -> None:
    runs = {driver: _start(driver, tmp_path / driver) for driver in DRIVERS}
    # SQLAlchemy 2.1 passes ~1500 tests on SQLite with these requirements
    assert_suite_parity(tmp_path, runs, "pysqlite", _test_id, at_least=1000)
    # and it really ran through bottomless: commits were replicated to the local bucket
    commits = list((tmp_path / "bottomless" / "replicas").glob("*/generations/*/commits/*"))
    assert len(commits) > 100, f"only {len(commits)} commit objects replicated"

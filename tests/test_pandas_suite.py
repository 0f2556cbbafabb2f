"""pandas's own SQL tests on bottomless pass everything they pass on sqlite3.

``pandas/tests/io/test_sql.py`` ships inside pandas. Its SQLite cases (``-k sqlite``: the
SQLAlchemy engine, connection and URL cases, and the ``sqlite3`` DB-API ones) run twice, in
two subprocesses started together: as pandas ships them, and with the plugin in
``tests/pandas_suite/`` that points them at ``sqlite+bottomless://`` and
:mod:`bottomless.dbapi` connections on replicated files. Data files pandas leaves out of its
wheel skip their tests in both runs (``--no-strict-data-files``). Together the runs take about
40 s on two cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import assert_suite_parity

PLUGIN_DIR = Path(__file__).parent / "pandas_suite"
RUNS = ("sqlite3", "bottomless")


def _start(run: str, suite: Path, workdir: Path) -> subprocess.Popen[str]:
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "LIBSQL_BOTTOMLESS_"))}
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(suite),
               "--no-strict-data-files", "-k", "sqlite", "-q",
               f"--junitxml={workdir / 'results.xml'}"]
    if run == "bottomless":
        command[3:3] = ["-p", "bottomless_pandas"]
        env.update(PYTHONPATH=os.pathsep.join([str(PLUGIN_DIR), env.get("PYTHONPATH", "")]),
                   LIBSQL_BOTTOMLESS_BACKEND="file",
                   LIBSQL_BOTTOMLESS_BUCKET=str(workdir / "bucket"))
    return subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_bottomless_passes_every_sqlite_case_of_pandas_that_sqlite3_passes(
        tmp_path: Path) -> None:
    pandas = pytest.importorskip("pandas")
    suite = Path(pandas.__file__).parent / "tests" / "io" / "test_sql.py"
    if not suite.exists():
        pytest.skip("this pandas was installed without its tests")
    runs = {run: _start(run, suite, tmp_path / run) for run in RUNS}
    # pandas 3.1 passes 437 SQLite cases without its data files
    assert_suite_parity(tmp_path, runs, "sqlite3", lambda classname, name: name, at_least=300)
    # and the cases really ran through bottomless: their databases are in the bucket
    replicated = [d for d in (tmp_path / "bottomless" / "bucket").iterdir() if d.is_dir()]
    assert len(replicated) > 200, f"only {len(replicated)} databases replicated"

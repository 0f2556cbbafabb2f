"""CPython's own ``test.test_sqlite3`` suite, run against ``bottomless.dbapi``.

``tests/cpython_sqlite3/run.py`` installs ``bottomless.dbapi`` as ``sqlite3`` in a fresh
interpreter and runs the standard library's suite; every test must pass except those listed,
with a reason, in ``tests/cpython_sqlite3/expected_failures.py`` -- and a listed test that
starts to pass fails this test too, so the list stays honest.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

RUNNER = Path(__file__).parent / "cpython_sqlite3" / "run.py"


def _suite_missing() -> str | None:
    for module in ("_sqlite3", "test.test_sqlite3", "_testcapi"):
        try:
            found = importlib.util.find_spec(module)
        except ImportError:
            found = None
        if found is None:
            return f"{module} is not importable on this Python ({sys.version.split()[0]})"
    return None


@pytest.mark.skipif(_suite_missing() is not None, reason=str(_suite_missing()))
@pytest.mark.parametrize("db_name", [None, "t"], ids=["default-db-name", "explicit-db-name"])
def test_cpython_sqlite3_suite_passes(tmp_path: Path, db_name: str | None) -> None:
    """Every test of the suite passes, or fails as ``expected_failures.py`` says it must."""
    report = tmp_path / "report.json"
    command = [sys.executable, str(RUNNER), "--json", str(report)]
    if db_name:
        command += ["--db-name", db_name]
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert report.exists(), f"no report:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(report.read_text())
    outcomes: dict[str, str] = result["outcomes"]
    assert len(outcomes) > 400, f"only {len(outcomes)} tests ran: {result['counts']}"

    broken = {name: result["details"].get(name, "") for name, outcome in outcomes.items()
              if outcome in ("FAIL", "ERROR")}
    fixed = sorted(name for name, outcome in outcomes.items() if outcome == "XPASS")
    assert not broken, "failing against bottomless.dbapi:\n" + "\n".join(
        f"--- {name}\n{detail[-1500:]}" for name, detail in sorted(broken.items())
    )
    assert not fixed, (
        "these pass now: remove them from tests/cpython_sqlite3/expected_failures.py:\n"
        + "\n".join(fixed)
    )
    assert not result["stale"], f"listed but not in the suite: {result['stale']}"
    assert done.returncode == 0, done.stdout[-3000:]

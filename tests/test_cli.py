"""The ``bottomless`` command line, run as a user runs it (a separate process)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from helpers import integrity, rows

import bottomless


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LIBSQL_BOTTOMLESS_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "bottomless", *args], capture_output=True, text=True,
        env=full_env, timeout=120,
    )


@pytest.fixture
def replica(tmp_path: Any) -> tuple[str, list[Any]]:
    replicas = str(tmp_path / "replicas")
    db = bottomless.connect(str(tmp_path / "app.db"), bottomless.Settings(backend="file",
                                                                          bucket=replicas))
    db.execute("CREATE TABLE t(x); INSERT INTO t VALUES(1); INSERT INTO t VALUES(2)")
    expected = db.execute("SELECT * FROM t").fetchall()
    db.close()
    return replicas, expected


def test_restore_with_options(tmp_path: Any, replica: tuple[str, list[Any]]) -> None:
    replicas, expected = replica
    out = str(tmp_path / "out.db")
    result = _cli("restore", "app.db", "-o", out, "--backend", "file", "--bucket", replicas)
    assert result.returncode == 0, result.stderr
    assert "restored app.db" in result.stdout
    assert integrity(out) == "ok" and rows(out) == expected


def test_restore_from_env(tmp_path: Any, replica: tuple[str, list[Any]]) -> None:
    replicas, expected = replica
    out = str(tmp_path / "env.db")
    result = _cli("restore", "app.db", "-o", out, env={
        "LIBSQL_BOTTOMLESS_BACKEND": "file", "LIBSQL_BOTTOMLESS_BUCKET": replicas})
    assert result.returncode == 0, result.stderr
    assert rows(out) == expected


def test_restore_refuses_to_overwrite(tmp_path: Any, replica: tuple[str, list[Any]]) -> None:
    replicas, expected = replica
    out = tmp_path / "busy.db"
    out.write_bytes(b"precious")
    result = _cli("restore", "app.db", "-o", str(out), "--backend", "file", "--bucket", replicas)
    assert result.returncode == 1 and "--force" in result.stderr
    assert out.read_bytes() == b"precious"
    forced = _cli("restore", "app.db", "-o", str(out), "--force", "--backend", "file",
                  "--bucket", replicas)
    assert forced.returncode == 0, forced.stderr
    assert rows(str(out)) == expected


def test_clear_errors_not_tracebacks(tmp_path: Any, replica: tuple[str, list[Any]]) -> None:
    replicas, _ = replica
    missing = _cli("restore", "nope.db", "-o", str(tmp_path / "n.db"), "--backend", "file",
                   "--bucket", replicas)
    assert missing.returncode == 1
    assert "no replica of 'nope.db'" in missing.stderr and "Traceback" not in missing.stderr
    bad = _cli("restore", "app.db", "-o", str(tmp_path / "b.db"),
               env={"LIBSQL_BOTTOMLESS_TIMEOUT": "soon"})
    assert bad.returncode == 1
    assert "LIBSQL_BOTTOMLESS_TIMEOUT" in bad.stderr and "Traceback" not in bad.stderr
    name = _cli("restore", "../x", "-o", str(tmp_path / "c.db"), "--backend", "file",
                "--bucket", replicas)
    assert name.returncode == 1 and "db_name" in name.stderr


def test_console_script_and_help() -> None:
    result = _cli("--help")
    assert result.returncode == 0 and "restore" in result.stdout
    script = os.path.join(os.path.dirname(sys.executable), "bottomless")
    assert os.path.exists(script)
    assert subprocess.run([script, "restore", "--help"], capture_output=True,
                          text=True).stdout.count("--output") == 1

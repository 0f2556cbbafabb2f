"""The ``bottomless`` command line, run as a user runs it (a separate process)."""

from __future__ import annotations

import dataclasses
import json
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


def test_ls_verify_gc_print_what_the_library_returns(
    replica: tuple[str, list[Any]]
) -> None:
    replicas, _ = replica
    where = ("--backend", "file", "--bucket", replicas)
    settings = bottomless.Settings(backend="file", bucket=replicas)
    databases = _cli("ls", "--json", *where)
    assert bottomless.ls(settings=settings) == ["app.db"]
    assert json.loads(databases.stdout) == [{"db_name": "app.db"}]
    generations = bottomless.ls("app.db", settings)
    listed = _cli("ls", "app.db", "--json", *where)
    assert json.loads(listed.stdout) == [dataclasses.asdict(g) for g in generations]
    commits = _cli("ls", "app.db", "--generation", generations[0].generation, "--json", *where)
    assert json.loads(commits.stdout) == [
        dataclasses.asdict(c)
        for c in bottomless.ls("app.db", settings, generation=generations[0].generation)
    ]
    verified = _cli("verify", "app.db", "--json", *where)
    assert verified.returncode == 0 and json.loads(verified.stdout)["ok"] is True
    planned = _cli("gc", "app.db", "--older-than", "0s", "--dry-run", "--json", *where)
    assert json.loads(planned.stdout)["deleted"] == bottomless.gc(
        "app.db", settings, older_than="0s", dry_run=True).deleted
    orphan = _cli("ls", "--generation", generations[0].generation, *where)
    assert orphan.returncode == 2 and "DB_NAME" in orphan.stderr

"""The examples run: the SeaweedFS crash-and-restore script, and the web app across a lost disk."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from helpers import remove_db

import bottomless

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.s3
def test_seaweedfs_example() -> None:
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "seaweedfs", "run_example.py")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every acknowledged order survived the crash" in result.stdout
    assert "integrity_check: ok" in result.stdout


def test_webapp_survives_losing_its_file(tmp_path: Any) -> None:
    sys.path.insert(0, os.path.join(ROOT, "examples", "webapp"))
    try:
        from app import create_app
    finally:
        sys.path.pop(0)
    settings = bottomless.Settings(backend="file", bucket=str(tmp_path / "replicas"))
    path = str(tmp_path / "todo.db")
    client = create_app(path, settings).test_client()
    for title in ("buy milk", "write tests"):
        assert client.post("/todos", json={"title": title}).status_code == 201
    assert client.post("/todos/1/done").status_code == 200
    assert client.post("/todos", json={}).status_code == 400
    before = client.get("/todos").get_json()
    assert [t["title"] for t in before] == ["buy milk", "write tests"] and before[0]["done"]
    assert client.get("/status").get_json()["last_replicated_commit"] >= 3
    remove_db(path)
    restarted = create_app(path, settings).test_client()
    assert restarted.get("/todos").get_json() == before


def test_the_demo_runs_and_says_in_one_line_when_the_store_cannot_be_reached(
        tmp_path: Any) -> None:
    demo = os.path.join(ROOT, "examples", "demo.py")
    done = subprocess.run([sys.executable, demo, "--dir", str(tmp_path / "file")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "restored 5 rows, integrity_check: ok" in done.stdout
    unreachable = subprocess.run(
        [sys.executable, demo, "--backend", "s3", "--endpoint", "http://127.0.0.1:9",
         "--dir", str(tmp_path / "s3")],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "LIBSQL_BOTTOMLESS_MAX_RETRIES": "0",
             "LIBSQL_BOTTOMLESS_TIMEOUT": "2"},
    )
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("demo: s3://demo at http://127.0.0.1:9")
    assert "Traceback" not in unreachable.stderr

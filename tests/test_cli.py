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


def test_local_file_errors_and_odd_targets_are_one_line(
    tmp_path: Any, replica: tuple[str, list[Any]]
) -> None:
    replicas, _ = replica
    store = ("--backend", "file", "--bucket", replicas)
    for output in (str(tmp_path / "no" / "such" / "dir.db"),):
        result = _cli("restore", "app.db", "-o", output, *store)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.startswith("error: ") and "does not exist" in result.stderr
        assert str(tmp_path / "no" / "such") in result.stderr  # not an internal file's name
        assert "bottomless-restore" not in result.stderr
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    result = _cli("restore", "app.db", "-o", fifo, "--force", *store)
    assert result.returncode == 1 and "not a regular file" in result.stderr
    assert not os.path.isfile(fifo)
    gone = _cli("gc", "nope.db", *store)
    assert gone.returncode == 1 and "no replica of 'nope.db'" in gone.stderr


@pytest.mark.s3
def test_debug_logging_never_shows_credentials(
    tmp_path: Any, s3_settings: dict[str, Any]
) -> None:
    """botocore's own debug output prints request headers: the session token among them."""
    env = {"LIBSQL_BOTTOMLESS_" + k.upper(): str(v) for k, v in s3_settings.items()}
    env["LIBSQL_BOTTOMLESS_SESSION_TOKEN"] = "TOKEN-never-printed"
    result = _cli("-vv", "ls", env=env)
    assert result.returncode == 0, result.stderr
    for secret in ("TOKEN-never-printed", s3_settings["secret_access_key"],
                   s3_settings["access_key_id"]):
        assert secret not in result.stderr


def test_console_script_and_help() -> None:
    result = _cli("--help")
    assert result.returncode == 0 and "restore" in result.stdout
    script = os.path.join(os.path.dirname(sys.executable), "bottomless")
    assert os.path.exists(script)
    assert subprocess.run([script, "restore", "--help"], capture_output=True,
                          text=True).stdout.count("--output") == 1


#: what start-up must not pay for: the SQLite side, settings validation, compression, S3
#: clients and terminal rendering are imported by the commands that use them
HEAVY_MODULES = ("apsw", "pydantic", "pydantic_settings", "zstandard", "botocore", "s3fs",
                 "aiobotocore", "rich", "bottomless.api", "bottomless.settings")

#: runs the CLI in this process, then prints the top-level names of the modules it loaded
_LOADED_BY = """
import json, sys
import bottomless.cli
sys.argv = ["bottomless", *sys.argv[1:]]
try:
    bottomless.cli.main()
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def _modules_loaded_by(*args: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", _LOADED_BY, *args], capture_output=True,
                          text=True, timeout=120)
    loaded: list[str] = json.loads(done.stderr.strip().splitlines()[-1])
    return set(loaded)


@pytest.mark.parametrize("args", [("--help",), ("restore", "--help"), ("follow", "--help")])
def test_help_imports_neither_the_library_nor_the_backends(args: tuple[str, ...]) -> None:
    loaded = _modules_loaded_by(*args)
    assert "bottomless.cli" in loaded
    assert not [m for m in loaded if m in HEAVY_MODULES or m.split(".")[0] in HEAVY_MODULES]


def test_import_bottomless_is_lazy_and_every_public_name_resolves() -> None:
    code = (
        "import sys, bottomless\n"
        f"heavy = {HEAVY_MODULES!r}\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in heavy], sorted(sys.modules)\n"
        "for name in bottomless.__all__:\n"
        "    assert getattr(bottomless, name) is not None, name\n"
        "from bottomless import Settings, restore, Replica, StoreError\n"
        "import bottomless.settings\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


def test_an_unknown_backend_is_refused_with_the_allowed_names(tmp_path: Any) -> None:
    result = _cli("restore", "app.db", "-o", str(tmp_path / "x.db"), "--backend", "nope")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "unknown backend" in result.stderr and "'file'" in result.stderr


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


def test_mistakes_in_options_get_errors_that_name_the_fix(
    tmp_path: Any, replica: tuple[str, list[Any]]
) -> None:
    replicas, _ = replica
    store = ("--backend", "file", "--bucket", replicas)
    typo = _cli("ls", "app.db", "--generation", "20991231T000000000Z-deadbeef", *store)
    assert typo.returncode == 1 and "no generation 20991231T000000000Z-deadbeef" in typo.stderr
    assert "generations: " in typo.stderr
    negative = _cli("promote", "app.db", str(tmp_path / "r.db"), "--timeout", "-5", *store)
    assert negative.returncode == 2 and "--timeout" in negative.stderr
    half = _cli("ls", env={"LIBSQL_BOTTOMLESS_BUCKET": replicas,
                           "LIBSQL_BOTTOMLESS_SECRET_ACCESS_KEY": "s3cr3t-never-shown"})
    assert half.returncode == 1 and "LIBSQL_BOTTOMLESS_ACCESS_KEY_ID" in half.stderr
    assert "s3cr3t" not in half.stderr
    other = tmp_path / "other.db"
    other.write_bytes(b"x" * 4096)
    follow = _cli("follow", "app.db", str(other), *store)
    assert follow.returncode == 1 and "--overwrite" in follow.stderr

"""Failures say clearly what went wrong, quickly, without leaking secrets or losing data."""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import apsw
import pydantic
import pytest
from helpers import integrity, remove_db, rows

import bottomless
from bottomless import format as fmt

MakeSettings = Callable[..., bottomless.Settings]


def _replicate(tmp_path: Any, settings: bottomless.Settings, commits: int = 3) -> str:
    path = str(tmp_path / "e.db")
    db = bottomless.connect(path, settings)
    db.execute("CREATE TABLE t(x)")
    for i in range(commits):
        db.execute("INSERT INTO t VALUES(?)", (i,))
    db.close()
    return path


def test_unreachable_endpoint_fails_fast(tmp_path: Any) -> None:
    settings = bottomless.Settings(endpoint="http://127.0.0.1:9", bucket="b", timeout=2,
                                   max_retries=1, access_key_id="k", secret_access_key="s")
    started = time.monotonic()
    with pytest.raises(bottomless.StoreError) as info:
        bottomless.connect(str(tmp_path / "u.db"), settings)
    assert time.monotonic() - started < 60
    assert "http://127.0.0.1:9" in str(info.value) and "connect" in str(info.value).lower()


@pytest.mark.s3
def test_missing_bucket_without_create(tmp_path: Any, s3_settings: dict[str, Any]) -> None:
    settings = bottomless.Settings(**{**s3_settings, "bucket": "no-such-bucket-here",
                                      "create_bucket": False})
    with pytest.raises(bottomless.StoreError) as info:
        bottomless.connect(str(tmp_path / "m.db"), settings)
    assert "no-such-bucket-here" in str(info.value)
    assert "LIBSQL_BOTTOMLESS_CREATE_BUCKET" in str(info.value)


@pytest.mark.s3
def test_missing_bucket_is_created(tmp_path: Any, s3_settings: dict[str, Any],
                                   seaweed: Any) -> None:
    name = f"created-{os.urandom(4).hex()}"
    settings = bottomless.Settings(**{**s3_settings, "bucket": name})
    _replicate(tmp_path, settings)
    target = str(tmp_path / "r.db")
    bottomless.restore(target, settings, db_name="e.db")
    seaweed.drop_bucket(name)


def _commit_file(settings: bottomless.Settings, seq: int) -> str:
    store = bottomless.open_store(settings)
    keys = [k for k in store.list_keys("e.db/")
            if "/commits/" in k and fmt.seq_from_key(k) == seq]
    assert len(keys) == 1
    return os.path.join(settings.bucket, keys[0])


def test_corrupted_commit_is_named(tmp_path: Any, make_settings: MakeSettings) -> None:
    settings = make_settings("file")
    _replicate(tmp_path, settings)
    victim = _commit_file(settings, 2)
    with open(victim, "rb") as handle:
        data = bytearray(handle.read())
    data[len(data) // 2] ^= 0x10
    os.chmod(victim, 0o644)
    with open(victim, "wb") as handle:
        handle.write(bytes(data))
    target = tmp_path / "c.db"
    with pytest.raises(bottomless.CorruptObjectError) as info:
        bottomless.restore(str(target), settings, db_name="e.db")
    assert "commits/0000000000000002" in str(info.value) and "checksum" in str(info.value)
    assert not target.exists(), "a failed restore must not leave a file behind"


def test_gap_in_chain_names_last_good_commit(tmp_path: Any, make_settings: MakeSettings) -> None:
    settings = make_settings("file")
    _replicate(tmp_path, settings, commits=4)
    os.unlink(_commit_file(settings, 3))
    with pytest.raises(bottomless.RestoreError) as info:
        bottomless.restore(str(tmp_path / "g.db"), settings, db_name="e.db")
    assert "missing commit 3" in str(info.value) and "commit 2" in str(info.value)


def test_object_from_elsewhere_is_refused(tmp_path: Any, make_settings: MakeSettings) -> None:
    settings = make_settings("file")
    _replicate(tmp_path, settings, commits=4)
    first, second = _commit_file(settings, 2), _commit_file(settings, 3)
    os.chmod(second, 0o644)
    with open(first, "rb") as src, open(second, "wb") as dst:
        dst.write(src.read())
    with pytest.raises(bottomless.CorruptObjectError) as info:
        bottomless.restore(str(tmp_path / "x.db"), settings, db_name="e.db")
    assert "commits/0000000000000003" in str(info.value)


def test_missing_replica(tmp_path: Any, make_settings: MakeSettings) -> None:
    settings = make_settings("file")
    os.makedirs(settings.bucket)
    with pytest.raises(bottomless.ReplicaNotFoundError, match=r"no replica of 'ghost\.db'"):
        bottomless.restore(str(tmp_path / "ghost.db"), settings)


def test_commands_that_only_read_never_create_the_bucket(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    """A mistyped bucket must not turn into a new, empty one that reports nothing to do."""
    settings = make_settings("file")
    for read in (lambda: bottomless.restore(str(tmp_path / "ghost.db"), settings),
                 lambda: bottomless.ls(None, settings), lambda: bottomless.verify("g", settings),
                 lambda: bottomless.gc("g", settings)):
        with pytest.raises(bottomless.ReplicaNotFoundError, match="does not exist"):
            read()
    assert not os.path.exists(settings.bucket)


@pytest.mark.s3
def test_secrets_absent_from_logs_and_errors(tmp_path: Any, s3_settings: dict[str, Any],
                                             caplog: pytest.LogCaptureFixture) -> None:
    settings = bottomless.Settings(**s3_settings)
    secret = settings.secret_access_key
    assert secret is not None
    caplog.set_level(logging.DEBUG)
    path = _replicate(tmp_path, settings)
    remove_db(path)
    bottomless.connect(path, settings).close()
    wrong = bottomless.Settings(**{**s3_settings, "secret_access_key": "WRONG-secret-value"})
    remove_db(path)
    with pytest.raises(bottomless.BottomlessError) as info:
        bottomless.restore(path, wrong, db_name="nothing")
    text = caplog.text + str(info.value) + repr(settings) + repr(bottomless.open_store(settings))
    assert secret.get_secret_value() not in text
    assert "WRONG-secret-value" not in text


def test_every_error_class_is_exported() -> None:
    from bottomless import errors

    defined = {name for name, value in vars(errors).items()
               if isinstance(value, type) and issubclass(value, Exception)
               and value.__module__ == errors.__name__}
    assert defined <= set(bottomless.__all__), sorted(defined - set(bottomless.__all__))
    assert all(getattr(bottomless, name) is getattr(errors, name) for name in defined)


# ---------------------------------------------------------------- facts as attributes


def test_store_errors_carry_the_key(make_settings: MakeSettings) -> None:
    store = bottomless.open_store(make_settings("memory"))
    with pytest.raises(bottomless.ObjectNotFoundError) as missing:
        store.get("nowhere/key")
    assert missing.value.key == "nowhere/key"
    store.put_if_absent("here/key", b"x")
    with pytest.raises(bottomless.ObjectExistsError) as exists:
        store.put_if_absent("here/key", b"y")
    assert exists.value.key == "here/key"
    assert str(exists.value).endswith("here/key already exists")


def test_corrupt_object_error_carries_the_key(tmp_path: Any,
                                              make_settings: MakeSettings) -> None:
    settings = make_settings("file")
    _replicate(tmp_path, settings)
    victim = _commit_file(settings, 2)
    os.chmod(victim, 0o644)
    with open(victim, "r+b") as handle:
        handle.truncate(10)
    with pytest.raises(bottomless.CorruptObjectError) as info:
        bottomless.restore(str(tmp_path / "c.db"), settings, db_name="e.db")
    assert info.value.key is not None and info.value.key in str(info.value)
    assert fmt.seq_from_key(info.value.key) == 2
    with pytest.raises(bottomless.CorruptObjectError) as direct:
        fmt.decode_batch(b"not an object at all, but long enough to have a trailer", "a/b")
    assert direct.value.key == "a/b"


def test_restore_onto_a_file_raises_local_file_exists(tmp_path: Any,
                                                      make_settings: MakeSettings) -> None:
    settings = make_settings("file")
    path = _replicate(tmp_path, settings)
    with pytest.raises(bottomless.LocalFileExistsError) as info:
        bottomless.restore(path, settings, db_name="e.db")
    assert isinstance(info.value, FileExistsError)
    assert info.value.path == path and "overwrite=True" in str(info.value)


def test_lease_conflict_names_holder_and_expiry(tmp_path: Any,
                                                make_settings: MakeSettings) -> None:
    settings = make_settings("file", db_name="leased", initial_replication="force")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = bottomless.connect(str(tmp_path / "a" / "db"), settings)
    try:
        before = dt.datetime.now(dt.UTC)
        with pytest.raises(bottomless.ReplicaConflictError) as info:
            bottomless.connect(str(tmp_path / "b" / "db"), settings)
    finally:
        first.close()
    error = info.value
    assert error.db_name == "leased" and error.key == "leased/lease"
    assert error.holder is not None and f"pid {os.getpid()}" in error.holder
    assert error.holder in str(error)
    assert error.expires_at is not None
    assert before < error.expires_at <= before + dt.timedelta(seconds=settings.lease_ttl + 5)


def test_config_error_names_each_problem_without_secrets() -> None:
    secret = 987654321  # not a string: pydantic rejects it, and must not repeat it
    with pytest.raises(bottomless.ConfigError) as info:
        bottomless.Settings(durability="eventually", timeout=0, secret_access_key=secret)
    error = info.value
    assert not isinstance(error, pydantic.ValidationError)
    problems = {p.field: p for p in error.problems}
    assert set(problems) == {"durability", "timeout", "secret_access_key"}
    assert problems["durability"].value == "eventually"
    assert problems["durability"].allowed == ("sync", "async")
    assert problems["timeout"].value == 0 and "greater than 0" in problems["timeout"].reason
    assert problems["secret_access_key"].value is None
    assert str(secret) not in str(error) and str(secret) not in repr(error.problems)
    assert error.field is None  # several settings are at fault
    with pytest.raises(bottomless.ConfigError) as one:
        bottomless.Settings(db_name="../etc")
    assert one.value.field == "db_name" and one.value.value == "../etc"
    assert "LIBSQL_BOTTOMLESS_DB_NAME" in str(one.value)


def test_status_of_a_connection_bottomless_does_not_replicate_names_the_problem(
    tmp_path: Any,
) -> None:
    """A plain apsw connection has no replication: a specific error, a ValueError too."""
    plain = apsw.Connection(str(tmp_path / "plain.db"))
    for call in (bottomless.status, bottomless.wait_durable):
        with pytest.raises(bottomless.NotReplicatedError, match="not opened through"):
            call(plain)
    with pytest.raises(ValueError):
        bottomless.status(plain)


def _crashed_wal_database(path: str) -> None:
    """A WAL database as a crash leaves it: its newest commits in the -wal file only."""
    live = apsw.Connection(path + ".live")
    for pragma in ("journal_mode=wal", "wal_autocheckpoint=0"):
        live.execute(f"PRAGMA {pragma}").fetchall()  # apsw runs a statement as it is read
    live.execute("CREATE TABLE t(x); INSERT INTO t VALUES ('in the file')")
    live.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    live.execute("INSERT INTO t VALUES ('in the WAL only')")
    for suffix in ("", "-wal"):
        shutil.copyfile(path + ".live" + suffix, path + suffix)
    live.close()


def test_a_crash_while_restore_replaces_a_file_leaves_the_old_one_whole(
    tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """overwrite=True deletes the old file's WAL before the restored file takes its place (an
    old WAL would be replayed into the new file). A crash in between must not cost the old
    database the commits its WAL held: they are folded into the file first."""
    settings = make_settings("file")
    _replicate(tmp_path, settings)
    path = str(tmp_path / "old.db")
    _crashed_wal_database(path)

    def crash(src: str, dst: str) -> None:
        raise KeyboardInterrupt  # the process dies before the restored file is in place

    monkeypatch.setattr("bottomless.ops.restore.os.replace", crash)
    with pytest.raises(KeyboardInterrupt):
        bottomless.restore(path, settings, db_name="e.db", overwrite=True)
    monkeypatch.undo()
    assert rows(path, "SELECT x FROM t") == [("in the file",), ("in the WAL only",)]
    assert integrity(path) == "ok"


def test_restore_refuses_to_replace_a_database_in_use(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    settings = make_settings("file")
    _replicate(tmp_path, settings)
    path = str(tmp_path / "busy.db")
    _crashed_wal_database(path)
    reader = apsw.Connection(path)
    reader.execute("BEGIN; SELECT * FROM t")  # a read transaction pins the WAL
    try:
        with pytest.raises(bottomless.LocalFileExistsError, match="in use"):
            bottomless.restore(path, settings, db_name="e.db", overwrite=True)
    finally:
        reader.close()
    assert rows(path, "SELECT count(*) FROM t") == [(2,)]


def test_restore_refuses_a_database_another_process_is_writing(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    """A rollback journal writer in the middle of its transaction: its journal is live, not
    hot, and deleting it would make that writer's commit fail."""
    settings = make_settings("file")
    _replicate(tmp_path, settings)
    path = str(tmp_path / "written.db")
    setup = apsw.Connection(path)
    setup.execute("CREATE TABLE t(x); INSERT INTO t VALUES ('old')")
    setup.close()
    writer = subprocess.Popen(
        [sys.executable, "-c", "import apsw, sys\n"
         f"c = apsw.Connection({path!r})\n"
         "c.execute(\"BEGIN IMMEDIATE; INSERT INTO t VALUES ('in flight')\")\n"
         "print('ready', flush=True); sys.stdin.readline(); c.execute('COMMIT')\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert writer.stdin is not None and writer.stdout is not None
    try:
        assert writer.stdout.readline() == "ready\n"
        with pytest.raises(bottomless.LocalFileExistsError, match="in use"):
            bottomless.restore(path, settings, db_name="e.db", overwrite=True)
    finally:
        writer.stdin.write("\n")
        writer.stdin.close()
        assert writer.wait(30) == 0
    assert rows(path, "SELECT x FROM t") == [("old",), ("in flight",)]


def test_restore_refuses_a_database_open_through_bottomless_here(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    settings = make_settings("file")
    path = str(tmp_path / "e.db")
    db = bottomless.connect(path, settings)
    db.execute("CREATE TABLE t(x)")
    try:
        with pytest.raises(bottomless.LocalFileExistsError, match="open through bottomless"):
            bottomless.restore(path, settings, db_name="e.db", overwrite=True)
    finally:
        db.close()


def test_a_restore_removes_what_killed_restores_left_and_nothing_else(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    """A killed restore leaves its temporary file beside the target. The next restore there
    removes it, but not one a live restore holds (its lock), nor one written a moment ago."""
    import fcntl

    settings = make_settings("file")
    _replicate(tmp_path, settings)
    target = str(tmp_path / "copy.db")
    abandoned, live, fresh = (f"{target}.bottomless-restore-{n}" for n in ("dead", "live", "new"))
    for leftover in (abandoned, live, fresh):
        with open(leftover, "wb") as out:
            out.write(bytes(4096))
    for old in (abandoned, live):
        os.utime(old, (time.time() - 3600, time.time() - 3600))
    holder = os.open(live, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        bottomless.restore(target, settings, db_name="e.db")
    finally:
        os.close(holder)
    assert rows(target, "SELECT count(*) FROM t") == [(3,)]
    assert (os.path.exists(abandoned), os.path.exists(live), os.path.exists(fresh)) == (
        False, True, True)

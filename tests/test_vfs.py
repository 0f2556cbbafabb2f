"""End-to-end replication through the VFS, with real SQLite, on every backend."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import apsw
import pytest
from helpers import FailingStore, integrity, remove_db, replicator, restored, rows

import bottomless
from bottomless import format as fmt
from bottomless.backends.base import PageStore

JOURNAL_MODES = ["delete", "truncate", "persist", "wal"]
MakeSettings = Callable[..., bottomless.Settings]


def _workload(db: apsw.Connection) -> None:
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(10):
        db.execute("INSERT INTO t(v) VALUES(?)", (f"row {i}",))
    with db:
        db.execute("INSERT INTO t(v) SELECT hex(randomblob(3000)) FROM t")
    db.execute("UPDATE t SET v = v || '!' WHERE id % 3 = 0")
    db.execute("DELETE FROM t WHERE id % 7 = 0")


@pytest.mark.parametrize("mode", JOURNAL_MODES)
def test_round_trip(tmp_path: Any, backend: str, make_settings: MakeSettings, mode: str) -> None:
    settings = make_settings(backend)
    path = str(tmp_path / "app.db")
    db = bottomless.connect(path, settings)
    assert db.execute(f"PRAGMA journal_mode={mode}").fetchone()[0] == mode
    _workload(db)
    expected = db.execute("SELECT * FROM t ORDER BY id").fetchall()
    status = bottomless.status(db)
    assert status["last_replicated_commit"] >= 5
    db.close()
    copy = restored(tmp_path, settings, "app.db")
    assert integrity(copy) == "ok"
    assert rows(copy, "SELECT * FROM t ORDER BY id") == expected


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_restore_on_boot(tmp_path: Any, backend: str, make_settings: MakeSettings,
                         mode: str) -> None:
    settings = make_settings(backend)
    path = str(tmp_path / "boot.db")
    db = bottomless.connect(path, settings)
    db.execute(f"PRAGMA journal_mode={mode}")
    _workload(db)
    expected = db.execute("SELECT * FROM t ORDER BY id").fetchall()
    db.close()
    remove_db(path)
    assert not os.path.exists(path)
    db = bottomless.connect(path, settings)
    assert db.execute("SELECT * FROM t ORDER BY id").fetchall() == expected
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # and it keeps replicating on the restored lineage
    db.execute("INSERT INTO t(v) VALUES('after restore')")
    expected = db.execute("SELECT * FROM t ORDER BY id").fetchall()
    db.close()
    assert rows(restored(tmp_path, settings, "boot.db"), "SELECT * FROM t ORDER BY id") == expected


def test_empty_file_is_restored(tmp_path: Any, make_settings: MakeSettings) -> None:
    settings = make_settings("file")
    path = str(tmp_path / "e.db")
    db = bottomless.connect(path, settings)
    _workload(db)
    db.close()
    remove_db(path)
    open(path, "wb").close()
    db = bottomless.connect(path, settings)
    assert db.execute("SELECT count(*) FROM t").fetchone()[0] > 0
    db.close()


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_restart_is_not_a_conflict(tmp_path: Any, backend: str, make_settings: MakeSettings,
                                   mode: str) -> None:
    settings = make_settings(backend)  # initial_replication defaults to "error"
    path = str(tmp_path / "r.db")
    db = bottomless.connect(path, settings)
    db.execute(f"PRAGMA journal_mode={mode}")
    db.execute("CREATE TABLE t(x)")
    db.execute("INSERT INTO t VALUES(1)")
    generation = bottomless.status(db)["generation"]
    db.close()
    for value in (2, 3):
        db = bottomless.connect(path, settings)
        db.execute("INSERT INTO t VALUES(?)", (value,))
        assert bottomless.status(db)["generation"] == generation
        db.close()
    assert rows(restored(tmp_path, settings, "r.db")) == [(1,), (2,), (3,)]


def _local_db(path: str, values: list[int]) -> None:
    db = apsw.Connection(path)
    db.execute("CREATE TABLE t(x)")
    for v in values:
        db.execute("INSERT INTO t VALUES(?)", (v,))
    db.close()


def test_local_file_without_replica_is_uploaded(tmp_path: Any, backend: str,
                                                make_settings: MakeSettings) -> None:
    settings = make_settings(backend)
    path = str(tmp_path / "existing.db")
    _local_db(path, [1, 2, 3])
    bottomless.connect(path, settings).close()
    assert rows(restored(tmp_path, settings, "existing.db")) == [(1,), (2,), (3,)]


def _conflict(tmp_path: Any, settings: bottomless.Settings) -> str:
    """A replica of conflict.db in the bucket and an unrelated local conflict.db."""
    other = tmp_path / "other"
    other.mkdir()
    db = bottomless.connect(str(other / "conflict.db"), settings)
    db.execute("CREATE TABLE t(x)")
    db.execute("INSERT INTO t VALUES('bucket')")
    db.close()
    path = str(tmp_path / "conflict.db")
    _local_db(path, [])
    db = apsw.Connection(path)
    db.execute("INSERT INTO t VALUES('local')")
    db.close()
    return path


def test_policy_error(tmp_path: Any, backend: str, make_settings: MakeSettings) -> None:
    settings = make_settings(backend)
    path = _conflict(tmp_path, settings)
    with pytest.raises(bottomless.ReplicaConflictError) as info:
        bottomless.connect(path, settings)
    message = str(info.value)
    assert "conflict.db" in message and "generation" in message
    assert "initial_replication=force" in message and "skip" in message
    # the bucket is untouched
    assert rows(restored(tmp_path, settings, "conflict.db")) == [("bucket",)]


def test_policy_force(tmp_path: Any, backend: str, make_settings: MakeSettings) -> None:
    settings = make_settings(backend, initial_replication="force")
    path = _conflict(tmp_path, settings)
    db = bottomless.connect(path, settings)
    db.execute("INSERT INTO t VALUES('more')")
    db.close()
    assert rows(restored(tmp_path, settings, "conflict.db")) == [("local",), ("more",)]


def test_policy_skip(tmp_path: Any, backend: str, make_settings: MakeSettings) -> None:
    settings = make_settings(backend, initial_replication="skip")
    path = _conflict(tmp_path, settings)
    db = bottomless.connect(path, settings)
    db.execute("INSERT INTO t VALUES('unreplicated')")
    assert bottomless.status(db)["replicating"] is False
    assert db.execute("SELECT * FROM t").fetchall() == [("local",), ("unreplicated",)]
    db.close()
    # documented: the bucket keeps its own lineage, restores return it
    assert rows(restored(tmp_path, settings, "conflict.db")) == [("bucket",)]


def test_uri_register_path(tmp_path: Any, make_settings: MakeSettings) -> None:
    replicas = tmp_path / "uri-replicas"
    bottomless.register()
    path = tmp_path / "u.db"
    db = apsw.Connection(
        f"file:{path}?vfs=bottomless&backend=file&bucket={replicas}",
        flags=apsw.SQLITE_OPEN_URI | apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE,
    )
    db.execute("CREATE TABLE t(x); INSERT INTO t VALUES(42)")
    db.close()
    settings = bottomless.Settings(backend="file", bucket=str(replicas))
    assert rows(restored(tmp_path, settings, "u.db")) == [(42,)]


def test_many_databases_share_a_bucket(tmp_path: Any, backend: str,
                                       make_settings: MakeSettings) -> None:
    settings = make_settings(backend)
    for name in ("one.db", "two.db"):
        db = bottomless.connect(str(tmp_path / name), settings)
        db.execute("CREATE TABLE t(x)")
        db.execute("INSERT INTO t VALUES(?)", (name,))
        db.close()
    custom = make_settings(backend, db_name="renamed") if backend != "s3" else None
    for name in ("one.db", "two.db"):
        assert rows(restored(tmp_path, settings, name)) == [(name,)]
    if custom is not None:
        db = bottomless.connect(str(tmp_path / "three.db"), custom)
        db.execute("CREATE TABLE t(x); INSERT INTO t VALUES(3)")
        db.close()
        assert rows(restored(tmp_path, custom, "renamed")) == [(3,)]


def _object_keys(store: PageStore, db_name: str) -> list[str]:
    return store.list_keys(fmt.db_prefix(db_name))


def test_one_object_per_commit(tmp_path: Any, make_settings: MakeSettings) -> None:
    settings = make_settings("memory")
    path = str(tmp_path / "count.db")
    db = bottomless.connect(path, settings)
    db.execute("CREATE TABLE t(x)")
    store = replicator(path).store
    before = len(_object_keys(store, "count.db"))
    with db:
        for i in range(100):  # 100 statements, one transaction: one object
            db.execute("INSERT INTO t VALUES(?)", (i,))
    assert len(_object_keys(store, "count.db")) == before + 1
    db.execute("SELECT count(*) FROM t").fetchall()  # a read writes nothing
    assert len(_object_keys(store, "count.db")) == before + 1
    db.execute("BEGIN; INSERT INTO t VALUES(-1); ROLLBACK")  # a rollback writes nothing
    assert len(_object_keys(store, "count.db")) == before + 1
    db.close()


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_vacuum_checkpoint_and_page_size(tmp_path: Any, make_settings: MakeSettings,
                                         mode: str) -> None:
    settings = make_settings("file")
    path = str(tmp_path / "v.db")
    db = bottomless.connect(path, settings)
    db.execute(f"PRAGMA journal_mode={mode}")
    _workload(db)
    db.execute("DELETE FROM t WHERE id > 5")
    db.execute("VACUUM")
    if mode == "wal":
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("INSERT INTO t(v) VALUES('after checkpoint')")
        db.execute("PRAGMA wal_checkpoint(RESTART)")
        db.execute("INSERT INTO t(v) VALUES('after restart')")
        db.execute("PRAGMA journal_mode=delete")
    db.execute("PRAGMA page_size=8192")
    db.execute("VACUUM")
    assert db.execute("PRAGMA page_size").fetchone()[0] == 8192
    db.execute("INSERT INTO t(v) VALUES('big pages')")
    expected = db.execute("SELECT * FROM t ORDER BY id").fetchall()
    db.close()
    copy = restored(tmp_path, settings, "v.db")
    assert integrity(copy) == "ok"
    assert rows(copy, "SELECT * FROM t ORDER BY id") == expected
    assert rows(copy, "PRAGMA page_size") == [(8192,)]



@pytest.mark.parametrize("mode", JOURNAL_MODES)
def test_failed_upload_fails_commit_and_recovers(tmp_path: Any, make_settings: MakeSettings,
                                                mode: str) -> None:
    settings = make_settings("memory")
    path = str(tmp_path / "f.db")
    db = bottomless.connect(path, settings)
    db.execute(f"PRAGMA journal_mode={mode}")
    db.execute("CREATE TABLE t(x)")
    db.execute("INSERT INTO t VALUES(1)")
    rep = replicator(path)
    flaky = FailingStore(rep.store)
    rep.store = flaky
    flaky.down = True
    with pytest.raises(apsw.IOError) as info:
        db.execute("INSERT INTO t VALUES(2)")
    assert "injected outage" in repr(info.value.__cause__)
    assert "injected outage" in bottomless.status(db)["last_error"]
    # the local database did not move ahead of the bucket
    assert db.execute("SELECT * FROM t").fetchall() == [(1,)]
    flaky.down = False
    db.execute("INSERT INTO t VALUES(3)")
    assert db.execute("SELECT * FROM t").fetchall() == [(1,), (3,)]
    db.close()
    assert rows(restored(tmp_path, settings, "f.db")) == [(1,), (3,)]
    if mode != "wal":  # plain sqlite sees the same as the bucket
        assert rows(path) == [(1,), (3,)]


def test_several_connections_one_process(tmp_path: Any, make_settings: MakeSettings) -> None:
    settings = make_settings("file")
    path = str(tmp_path / "multi.db")
    a = bottomless.connect(path, settings)
    a.execute("PRAGMA journal_mode=wal")
    a.execute("CREATE TABLE t(x)")
    b = bottomless.connect(path, settings)
    for i in range(20):
        (a if i % 2 else b).execute("INSERT INTO t VALUES(?)", (i,))
    b.close()
    a.execute("INSERT INTO t VALUES(99)")
    a.close()
    assert sorted(rows(restored(tmp_path, settings, "multi.db"))) == sorted(
        [(i,) for i in range(20)] + [(99,)]
    )


_WRITER = """
import sys, bottomless
settings = bottomless.Settings(backend="file", bucket=sys.argv[2])
db = bottomless.connect(sys.argv[1], settings)
db.set_busy_timeout(30000)
for i in range(int(sys.argv[4])):
    db.execute("INSERT INTO t VALUES(?, ?)", (sys.argv[3], i))
db.close()
"""


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_several_processes_one_file(tmp_path: Any, make_settings: MakeSettings,
                                    mode: str) -> None:
    settings = make_settings("file")
    path = str(tmp_path / "procs.db")
    db = bottomless.connect(path, settings)
    db.execute(f"PRAGMA journal_mode={mode}")
    db.execute("CREATE TABLE t(who, i)")
    db.close()
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    children = [
        subprocess.Popen([sys.executable, str(script), path, settings.bucket, name, "40"])
        for name in ("a", "b", "c")
    ]
    assert [c.wait(timeout=120) for c in children] == [0, 0, 0]
    expected = sorted((w, i) for w in "abc" for i in range(40))
    assert sorted(rows(path)) == expected
    copy = restored(tmp_path, settings, "procs.db")
    assert integrity(copy) == "ok"
    assert sorted(rows(copy)) == expected


def test_status_pragma(tmp_path: Any, make_settings: MakeSettings) -> None:
    db = bottomless.connect(str(tmp_path / "s.db"), make_settings("memory"))
    db.execute("CREATE TABLE t(x)")
    status = json.loads(db.pragma("bottomless_status"))
    assert status["db_name"] == "s.db" and status["backend"] == "memory"
    assert status["last_replicated_commit"] == 1 and status["last_error"] is None
    db.close()


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_a_busy_wait_lets_the_lock_holder_run(tmp_path: Any, make_settings: MakeSettings,
                                              mode: str) -> None:
    """A connection waiting on a lock (busy handler, xSleep) must not stop the holder's thread."""
    settings = make_settings("file")
    path = str(tmp_path / "busy.db")
    holder = bottomless.connect(path, settings)
    holder.execute(f"PRAGMA journal_mode={mode}")
    holder.execute("CREATE TABLE t(x)")
    waiter = bottomless.connect(path, settings)
    waiter.set_busy_timeout(10_000)
    locked = threading.Event()

    def hold() -> None:
        holder.execute("BEGIN IMMEDIATE")
        locked.set()
        for i in range(20):  # 0.1 s of work in short steps, each needing the GIL back
            holder.execute("INSERT INTO t VALUES (?)", (f"holder {i}",))
            time.sleep(0.005)
        holder.execute("COMMIT")

    thread = threading.Thread(target=hold)
    thread.start()
    assert locked.wait(10)
    started = time.monotonic()
    waiter.execute("BEGIN IMMEDIATE")
    waited = time.monotonic() - started
    waiter.execute("INSERT INTO t VALUES ('waiter')")
    waiter.execute("COMMIT")
    thread.join(10)
    # SQLite's busy handler retries every few ms to 100 ms; a sleep holding the GIL made the
    # holder wait out a retry at each step (about 1-2 s here; threads timed out under load)
    assert waited < 0.9, f"waited {waited:.2f} s for a lock held 0.1 s"
    waiter.close()
    holder.close()
    expected = sorted([(f"holder {i}",) for i in range(20)] + [("waiter",)])
    assert sorted(rows(restored(tmp_path, settings, "busy.db"))) == expected


def test_paths_through_symbolic_links_open(tmp_path: Any, make_settings: MakeSettings) -> None:
    """A linked directory (a deploy's ``current``) or a link to the file: SQLite resolves
    them, and so must the VFS (apsw's inherited method failed with "not an error")."""
    settings = make_settings("file")
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "current")
    db = bottomless.connect(str(tmp_path / "current" / "app.db"), settings)
    db.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
    db.close()
    os.symlink(tmp_path / "real" / "app.db", tmp_path / "link.db")
    db = bottomless.connect(str(tmp_path / "link.db"), settings)
    db.execute("INSERT INTO t VALUES (2)")
    db.close()
    assert rows(str(tmp_path / "real" / "app.db")) == [(1,), (2,)]
    assert rows(restored(tmp_path, settings, "app.db")) == [(1,), (2,)]


def test_a_read_only_open_never_writes_to_the_bucket(tmp_path: Any,
                                                     make_settings: MakeSettings) -> None:
    """It cannot commit: no lease, no initial upload, no empty generation for a missing file
    (SQLite refuses to open that read-only, and so does bottomless)."""
    settings = make_settings("file")
    path = str(tmp_path / "local.db")
    plain = apsw.Connection(path)
    plain.execute("CREATE TABLE t(x); INSERT INTO t VALUES ('local only')")
    plain.close()
    reader = bottomless.connect(path, settings, flags=apsw.SQLITE_OPEN_READONLY)
    assert reader.execute("SELECT x FROM t").fetchall() == [("local only",)]
    with pytest.raises(apsw.ReadOnlyError):
        reader.execute("INSERT INTO t VALUES ('no')")
    reader.close()
    with pytest.raises(apsw.CantOpenError):
        bottomless.connect(str(tmp_path / "missing.db"), settings,
                           flags=apsw.SQLITE_OPEN_READONLY)
    assert not os.path.exists(settings.bucket) or not os.listdir(settings.bucket)
    # a writer of the same process is shared: the reader sees its commits
    writer = bottomless.connect(path, settings)
    reader = bottomless.connect(path, settings, flags=apsw.SQLITE_OPEN_READONLY)
    writer.execute("INSERT INTO t VALUES ('replicated')")
    assert reader.execute("SELECT count(*) FROM t").fetchall() == [(2,)]
    reader.close()
    writer.close()
    assert rows(restored(tmp_path, settings, "local.db")) == [("local only",), ("replicated",)]


def test_a_uri_naming_the_vfs_still_takes_settings_from_the_dbapi(
        tmp_path: Any, make_settings: MakeSettings) -> None:
    """``bottomless.dbapi.connect("file:...?vfs=bottomless", uri=True, settings=...)`` in a
    fresh process: no ``bottomless.register()`` needed, and ``settings`` is not ignored."""
    settings = make_settings("file")
    script = (
        "import sys, bottomless, bottomless.dbapi as dbapi\n"
        "settings = bottomless.Settings(backend='file', bucket=sys.argv[2])\n"
        "conn = dbapi.connect(f'file:{sys.argv[1]}?vfs=bottomless', uri=True,"
        " settings=settings)\n"
        "conn.execute('CREATE TABLE t(x)'); conn.execute('INSERT INTO t VALUES (1)')\n"
        "conn.commit(); conn.close()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIBSQL_BOTTOMLESS_")}
    env["LIBSQL_BOTTOMLESS_BUCKET"] = str(tmp_path / "from-the-environment")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "named.db"), settings.bucket],
                   check=True, env=env, timeout=60)
    assert rows(restored(tmp_path, settings, "named.db")) == [(1,)]
    assert not os.path.exists(tmp_path / "from-the-environment")


def test_a_read_only_connection_to_a_wal_database_closes_quietly(
        tmp_path: Any, make_settings: MakeSettings) -> None:
    """At the last close SQLite tries the exclusive lock to checkpoint; the read-only
    descriptor cannot take it, and apsw raised that I/O error from close()."""
    settings = make_settings("file")
    path = str(tmp_path / "wal.db")
    writer = bottomless.connect(path, settings)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
    writer.close()
    for _ in range(2):
        reader = bottomless.connect(path, settings, flags=apsw.SQLITE_OPEN_READONLY)
        assert reader.execute("SELECT x FROM t").fetchall() == [(1,)]
        reader.close()


# ---------------------------------------------------------------- writes that bypass bottomless

def _closed_cleanly(tmp_path: Any, settings: bottomless.Settings, mode: str) -> str:
    """A database written through bottomless in journal ``mode``, then closed."""
    path = str(tmp_path / "outside.db")
    db = bottomless.connect(path, settings)
    db.execute(f"PRAGMA journal_mode={mode}")
    db.execute("CREATE TABLE u(id INTEGER PRIMARY KEY, email TEXT)")
    db.execute("CREATE INDEX u_email ON u(email)")
    db.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50)"
               " INSERT INTO u(email) SELECT 'user' || i FROM n")
    db.execute("CREATE TABLE log(m)")
    db.execute("INSERT INTO log VALUES ('the last commit touches only this table')")
    db.close()
    return path


@pytest.mark.parametrize("mode", ["wal", "delete", "persist", "truncate"])
def test_a_write_that_bypassed_bottomless_is_a_conflict_at_the_next_open(
        tmp_path: Any, make_settings: MakeSettings, mode: str) -> None:
    """Before, in WAL mode the change went unnoticed (the open compared only the last commit's
    pages) and a later commit of the same row made restores fail integrity_check."""
    settings = make_settings("file")
    path = _closed_cleanly(tmp_path, settings, mode)
    plain = sqlite3.connect(path)  # an operator fixing a row with another SQLite
    plain.execute("UPDATE u SET email = 'fixed' WHERE id = 7")
    plain.commit()
    plain.close()
    with pytest.raises(bottomless.ReplicaConflictError, match="without bottomless"):
        bottomless.connect(path, settings)
    forced = settings.model_copy(update={"initial_replication": "force"})
    db = bottomless.connect(path, forced)  # the local file, change included, replicated anew
    db.execute("UPDATE u SET email = email || '!' WHERE id = 7")
    db.close()
    copy = restored(tmp_path, settings, "outside.db")
    assert integrity(copy) == "ok"
    assert rows(copy, "SELECT email FROM u WHERE email = 'fixed!'") == [("fixed!",)]


@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_reading_with_another_sqlite_after_a_clean_close_is_no_conflict(
        tmp_path: Any, make_settings: MakeSettings, mode: str) -> None:
    settings = make_settings("file")
    path = _closed_cleanly(tmp_path, settings, mode)
    for uri in (path, f"file:{path}?mode=ro"):  # a read-only one leaves -wal and -shm behind
        plain = sqlite3.connect(uri, uri=uri.startswith("file:"))
        assert plain.execute("SELECT count(*) FROM u").fetchone() == (50,)
        plain.close()
    # a reader still open when bottomless closes: the WAL it keeps is checkpointed later
    reader = sqlite3.connect(path)
    reader.execute("SELECT count(*) FROM u").fetchone()
    db = bottomless.connect(path, settings)
    db.execute("INSERT INTO log VALUES ('one more')")
    db.close()
    reader.close()  # the last connection: moves the WAL's frames into the file
    db = bottomless.connect(path, settings)
    assert db.execute("SELECT count(*) FROM log").fetchone() == (2,)
    db.close()
    assert rows(restored(tmp_path, settings, "outside.db"), "SELECT count(*) FROM log") == [(2,)]


def test_a_restore_into_the_file_is_not_a_write_outside_bottomless(
        tmp_path: Any, make_settings: MakeSettings) -> None:
    """Going back in time in place: restore an earlier commit over the file, open it again,
    and replication goes on from there."""
    settings = make_settings("file")
    path = _closed_cleanly(tmp_path, settings, "wal")
    bottomless.restore(path, settings, commit=3, overwrite=True)
    db = bottomless.connect(path, settings)
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'log'").fetchone() == (0,)
    db.execute("CREATE TABLE after(x)")
    db.close()
    assert rows(restored(tmp_path, settings, "outside.db"),
                "SELECT name FROM sqlite_master WHERE name IN ('after', 'log')") == [("after",)]


def test_a_copied_moved_or_touched_file_with_the_same_content_is_no_conflict(
        tmp_path: Any, make_settings: MakeSettings) -> None:
    """Its stamp changed (a new inode, a new mtime), its content did not: the open compares
    the pages with the bucket before it believes a write happened."""
    settings = make_settings("file")
    path = _closed_cleanly(tmp_path, settings, "wal")
    copy = tmp_path / "elsewhere.db"
    shutil.copyfile(path, copy)  # a new mtime, then a new inode too
    os.replace(copy, path)
    db = bottomless.connect(path, settings)
    db.execute("INSERT INTO log VALUES ('after the move')")
    db.close()
    os.utime(path)  # touch
    db = bottomless.connect(path, settings)
    assert db.execute("SELECT count(*) FROM log").fetchone() == (2,)
    db.close()


@pytest.mark.parametrize("mode", ["delete", "persist", "truncate", "wal"])
def test_exiting_with_a_transaction_open_is_no_conflict(
        tmp_path: Any, make_settings: MakeSettings, mode: str) -> None:
    """The exit's flush runs while SQLite still has the file open: the rollback that follows
    changes the journal (and nothing of the database), so no stamp is taken then."""
    settings = make_settings("file")
    path = _closed_cleanly(tmp_path, settings, mode)
    script = (
        "import bottomless, sys\n"
        f"db = bottomless.connect({path!r}, bottomless.Settings(backend='file',"
        f" bucket={settings.bucket!r}))\n"
        "db.execute('BEGIN')\n"
        "db.execute(\"INSERT INTO log VALUES ('never committed')\")\n"
        "sys.exit(0)  # no COMMIT, no close\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    db = bottomless.connect(path, settings)
    assert db.execute("SELECT count(*) FROM log").fetchone() == (1,)
    db.close()


def test_a_restore_into_a_missing_path_is_no_conflict(
        tmp_path: Any, make_settings: MakeSettings) -> None:
    settings = make_settings("file")
    path = _closed_cleanly(tmp_path, settings, "wal")
    os.rename(path, path + ".old")
    bottomless.restore(path, settings)  # the newest commit: the one the stamp was taken at
    db = bottomless.connect(path, settings)
    assert db.execute("SELECT count(*) FROM log").fetchone() == (1,)
    db.close()


def test_the_clean_end_record_fits_the_size_older_versions_write(
        tmp_path: Any, make_settings: MakeSettings) -> None:
    """An older version writes its 128-byte record over this one without truncating: a
    longer record would leave a tail it reads as damage (a new generation at every open)."""
    from bottomless.local.session import SessionMarker

    settings = make_settings("file")
    path = _closed_cleanly(tmp_path, settings, "wal")
    marker = path + "-bottomless-session"
    raw = pathlib.Path(marker).read_bytes()
    assert len(raw) == 128 and b'"left"' in raw
    older = json.dumps({"open": False, "async": False, "boot": "b", "pid": 1}).encode()
    with open(marker, "r+b") as handle:
        handle.write(older.ljust(127) + b"\n")
    assert SessionMarker(path).interrupted() is None  # read whole, not as damage


@pytest.mark.parametrize("switch", [("delete", "wal"), ("wal", "delete")])
def test_a_journal_mode_switch_by_another_sqlite_is_no_conflict(
        tmp_path: Any, make_settings: MakeSettings, switch: tuple[str, str]) -> None:
    """Page 1's header changes (format versions, change counter, the writing SQLite's
    version), the content does not."""
    settings = make_settings("file")
    path = _closed_cleanly(tmp_path, settings, switch[0])
    plain = sqlite3.connect(path)
    plain.execute(f"PRAGMA journal_mode={switch[1]}")
    plain.close()
    db = bottomless.connect(path, settings)
    assert db.execute("SELECT count(*) FROM u").fetchone() == (50,)
    db.close()


def test_a_comparison_that_cannot_be_made_does_not_block_the_open(
        tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """No room for the copy (or the bucket unreadable): a warning, and the usual checks."""
    from bottomless.engine import opening

    settings = make_settings("file")
    path = _closed_cleanly(tmp_path, settings, "wal")
    os.utime(path)  # a suspicion to confirm
    leftover = pathlib.Path(path + "-bottomless-check")
    leftover.mkdir()
    (leftover / "copy.db").write_bytes(b"\0" * 4096)  # of a comparison killed half-way

    def full_disk(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(opening, "restore_file", full_disk)
    caplog.set_level(logging.WARNING, logger="bottomless")
    db = bottomless.connect(path, settings)
    db.close()
    assert any("could not be compared" in r.getMessage() for r in caplog.records)
    assert not leftover.exists()

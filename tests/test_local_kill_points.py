"""Kills between two writes of the files kept beside a database.

Each test runs a child that opens the database with one step of bottomless wrapped so that
the child SIGKILLs itself right there; then the database opens again, commits, and the bucket
must restore exactly what the local file holds. The moments are those where a crash once left
the local files saying less than the truth (see each test).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from test_crash import child_env

import bottomless
from bottomless.engine import commit_mark

MakeSettings = Callable[..., bottomless.Settings]

#: ``-c CHILD STEP DB_PATH``: runs STEP; ``kill-*`` steps SIGKILL the child where they say
CHILD = r"""
import os, signal, sys, time
import bottomless
from bottomless.engine import shipper, spool
from bottomless.ops import restore

step, path = sys.argv[1], sys.argv[2]


def killed_after(owner, name):
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

    setattr(owner, name, wrapper)


def killed_instead(owner, name):
    setattr(owner, name, lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL))


if step == "kill-restore-moved":  # the restored file is in place, nothing recorded after
    killed_after(restore, "_move_into_place")
if step == "kill-set-aside":
    killed_after(spool.Spool, "set_aside")
db = bottomless.connect(path)
db.execute("PRAGMA journal_mode=" + os.environ.get("JOURNAL", "WAL"))
if step == "setup":
    db.execute("CREATE TABLE a(k INTEGER PRIMARY KEY, v TEXT)")
    db.execute("CREATE TABLE b(k INTEGER PRIMARY KEY, v TEXT)")
    db.execute("INSERT INTO a VALUES(1, 'a0')")
    db.execute("INSERT INTO b VALUES(1, 'b0')")
    bottomless.wait_durable(db, 30)
    db.execute("UPDATE a SET v = 'a1'")  # the last object holds a's page only
elif step == "kill-spooling":  # SQLite's commit point passed, the spool not written yet
    killed_instead(spool.Spool, "append")
    db.execute("UPDATE b SET v = 'b1'")
elif step == "spool-only":  # b1 stays in the spool: the uploader never runs again
    shipper.AsyncShipper.drain_once = lambda self, state_required=False: False
    db.execute("UPDATE b SET v = 'b1'")
    os.kill(os.getpid(), signal.SIGKILL)
elif step == "next":
    db.execute("UPDATE a SET v = 'a2'")
elif step == "hold":  # reads, then stays open until killed
    print(db.execute("SELECT a.v, b.v FROM a, b").fetchall(), flush=True)
    time.sleep(600)
bottomless.wait_durable(db, 30)
print(db.execute("SELECT a.v, b.v FROM a, b").fetchall(), flush=True)
db.close()
"""


def run(step: str, path: str, env: dict[str, str], *, killed: bool = False) -> str:
    child = subprocess.run([sys.executable, "-c", CHILD, step, path], capture_output=True,
                           env=env, timeout=120)
    expected = -signal.SIGKILL if killed else 0
    assert child.returncode == expected, f"{step}: exit {child.returncode}\n" + (
        child.stderr.decode()[-3000:])
    return child.stdout.decode().strip()


def restored(tmp_path: Any, settings: bottomless.Settings) -> list[tuple[str, str]]:
    target = str(tmp_path / "restored.db")
    bottomless.restore(target, settings, db_name="app.db", overwrite=True)
    with sqlite3.connect(target) as conn:
        found = conn.execute("SELECT a.v, b.v FROM a, b").fetchall()
    conn.close()
    return found


def test_a_kill_between_a_commit_point_and_its_spooling(tmp_path: Any,
                                                        make_settings: MakeSettings) -> None:
    """The commit is in the WAL, and recovery keeps it, but not in the spool: the next open
    must not ship later commits on top of the gap (the restore gave a2 with b0)."""
    settings = make_settings("file", durability="async", max_lag=60)
    env = child_env(settings, LIBSQL_BOTTOMLESS_DB_NAME="app.db")
    path = str(tmp_path / "app.db")
    run("setup", path, env)
    run("kill-spooling", path, env, killed=True)
    assert run("next", path, env) == "[('a2', 'b1')]"
    assert restored(tmp_path, settings) == [("a2", "b1")]


def test_a_sync_commit_after_an_async_process_was_killed_before_spooling(
        tmp_path: Any, make_settings: MakeSettings) -> None:
    """A sync writer has the database open when an async one is killed in the same window:
    its next commit must not ship on top of the gap either."""
    settings = make_settings("file", durability="async", max_lag=60)
    synchronous = settings.model_copy(update={"durability": "sync"})
    env = child_env(settings, LIBSQL_BOTTOMLESS_DB_NAME="app.db", JOURNAL="DELETE")
    path = str(tmp_path / "app.db")
    run("setup", path, env)
    db = bottomless.connect(path, synchronous.model_copy(update={"db_name": "app.db"}))
    try:
        run("kill-spooling", path, env, killed=True)
        db.execute("UPDATE a SET v = 'a2'")
        assert db.execute("SELECT a.v, b.v FROM a, b").fetchall() == [("a2", "b1")]
    finally:
        db.close()
    assert restored(tmp_path, synchronous) == [("a2", "b1")]


@dataclass
class LiveSibling:
    """A database a child set up, open async (``max_lag`` 1 s) in this process, which stays
    open beside the children the test kills."""

    db: Any
    path: str
    env: dict[str, str]
    settings: bottomless.Settings


@contextlib.contextmanager
def live_sibling(tmp_path: Any, make_settings: MakeSettings) -> Iterator[LiveSibling]:
    settings = make_settings("file", durability="async", max_lag=1)
    env = child_env(settings, LIBSQL_BOTTOMLESS_DB_NAME="app.db")
    path = str(tmp_path / "app.db")
    run("setup", path, env)
    db = bottomless.connect(path, settings.model_copy(update={"db_name": "app.db"}))
    try:
        yield LiveSibling(db, path, env, settings)
    finally:
        db.close()


def test_a_live_async_process_ships_a_commit_its_killed_sibling_left(
        tmp_path: Any, make_settings: MakeSettings) -> None:
    """An async process that stays open and commits nothing more: its uploader settles the
    mark a sibling killed before spooling left, so the sibling's commit reaches the bucket
    within about ``max_lag`` (it used to wait for this process's next commit, or the next
    open). This process had not read yet, so SQLite's recovery kept that commit, and its
    readers see it (the test below has the other case)."""
    with live_sibling(tmp_path, make_settings) as live:
        run("kill-spooling", live.path, live.env, killed=True)
        assert live.db.execute("SELECT a.v, b.v FROM a, b").fetchall() == [("a1", "b1")]
        deadline = time.monotonic() + 30
        while (found := restored(tmp_path, live.settings)) != [("a1", "b1")]:
            assert time.monotonic() < deadline, f"the bucket still restores {found}"
            time.sleep(0.25)


def test_a_commit_sqlite_never_published_stays_out_of_the_new_generation(
        tmp_path: Any, make_settings: MakeSettings) -> None:
    """The sibling is killed after writing its commit frame, before SQLite published it in the
    wal-index, while this process has the WAL open: for SQLite that commit never happened (no
    recovery runs), and the next writer overwrites its frames. The generation the mark brings
    must hold what SQLite sees: taken from the whole WAL file, it held the phantom commit, and
    the next commit, shipped on top of it, restored as a malformed database."""
    with live_sibling(tmp_path, make_settings) as live:
        assert live.db.execute("SELECT a.v, b.v FROM a, b").fetchall() == [("a1", "b0")]
        run("kill-spooling", live.path, live.env, killed=True)
        assert live.db.execute("SELECT a.v, b.v FROM a, b").fetchall() == [("a1", "b0")]
        time.sleep(3)  # the watch's turn: a new generation from the local file
        assert restored(tmp_path, live.settings) == [("a1", "b0")]
        live.db.execute("UPDATE a SET v = 'a2'")
        bottomless.wait_durable(live.db, 30)
        assert restored(tmp_path, live.settings) == [("a2", "b0")]


@pytest.mark.parametrize("opened_meanwhile", [False, True], ids=["watch", "open"])
def test_a_commit_never_published_stays_dropped_after_every_process_died(
        tmp_path: Any, make_settings: MakeSettings, opened_meanwhile: bool) -> None:
    """As above, but the sibling that had the WAL open is killed too, before anyone writes,
    so the next open runs SQLite's WAL recovery. The sibling's watch (or an open meanwhile)
    made a generation without the commit SQLite had not published, and that recovery then
    adopted it: the local file had b1, the bucket never got it. The commit is now dropped from
    the WAL when the generation without it is made, so local file and bucket agree."""
    settings = make_settings("file", durability="async", max_lag=1)
    env = child_env(settings, LIBSQL_BOTTOMLESS_DB_NAME="app.db")
    path = str(tmp_path / "app.db")
    run("setup", path, env)
    holder = subprocess.Popen([sys.executable, "-c", CHILD, "hold", path], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().decode().strip() == "[('a1', 'b0')]"
        run("kill-spooling", path, env, killed=True)
        time.sleep(2)  # the holder's watch settles the mark
        if opened_meanwhile:  # no recovery while the holder lives: SQLite reads b0
            assert run("look", path, env) == "[('a1', 'b0')]"
    finally:
        holder.kill()
        holder.wait()
    assert run("next", path, env) == "[('a2', 'b0')]"
    assert restored(tmp_path, settings) == [("a2", "b0")]


def test_a_database_removed_while_a_killed_siblings_mark_waits_is_not_uploaded_empty(
        tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The watch of the tests above must lock the database it replicates, not a new empty
    file in its place: taking SQLite's write lock created one, and an empty generation went
    up as the newest state (the restore gave an empty database)."""
    monkeypatch.setattr(commit_mark, "STALE_SECONDS", 1.0)  # the files go well before that
    with live_sibling(tmp_path, make_settings) as live:
        run("kill-spooling", live.path, live.env, killed=True)
        for suffix in ("", "-wal", "-shm"):
            os.remove(live.path + suffix)
        time.sleep(3)
        assert not os.path.exists(live.path)
        assert restored(tmp_path, live.settings) == [("a1", "b0")]


def test_a_kill_after_a_damaged_spool_was_set_aside(tmp_path: Any,
                                                    make_settings: MakeSettings) -> None:
    """The spool's commit must be in the bucket (from the local file) before the damaged
    spool goes: set aside first, a kill then lost b1 for good."""
    settings = make_settings("file", durability="async", max_lag=60)
    env = child_env(settings, LIBSQL_BOTTOMLESS_DB_NAME="app.db")
    path = str(tmp_path / "app.db")
    run("setup", path, env)
    run("spool-only", path, env, killed=True)
    with open(path + "-bottomless-queue", "r+b") as stream:  # damage the spooled record
        stream.seek(64 + 24 + 100)
        stream.write(b"\xff")
    run("kill-set-aside", path, env, killed=True)
    assert run("next", path, env) == "[('a2', 'b1')]"
    assert restored(tmp_path, settings) == [("a2", "b1")]


def test_a_kill_right_after_a_restore_at_open_took_the_files_place(
        tmp_path: Any, make_settings: MakeSettings) -> None:
    """Without a record of the restore, the restored file was a conflict at every open."""
    settings = make_settings("file", durability="sync")
    env = child_env(settings, LIBSQL_BOTTOMLESS_DB_NAME="app.db")
    os.mkdir(tmp_path / "first")
    os.mkdir(tmp_path / "second")
    run("setup", str(tmp_path / "first" / "app.db"), env)
    path = str(tmp_path / "second" / "app.db")
    run("kill-restore-moved", path, env, killed=True)
    assert run("next", path, env) == "[('a2', 'b0')]"
    assert restored(tmp_path, settings) == [("a2", "b0")]

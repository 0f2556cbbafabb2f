"""A machine restart during an async session: the spool and state file are not fsynced, the
local WAL is. The next open must not continue a lineage that lost writes would break."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import abandon_async, integrity, rows, stop_uploader

import bottomless
from bottomless import session
from bottomless.session import SessionMarker

MakeSettings = Callable[..., bottomless.Settings]


@pytest.fixture
def reboot(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Make this process look as if the machine had restarted since the marker was written."""
    return lambda: monkeypatch.setattr(session, "boot_id", lambda: "a-later-boot")


def marker(path: str) -> dict[str, Any]:
    with open(path + "-bottomless-queue.session", "rb") as stream:
        record: dict[str, Any] = json.loads(stream.read())
    return record


def both_tables(path: str) -> tuple[list[Any], list[Any]]:
    return rows(path, "SELECT x FROM a ORDER BY x"), rows(path, "SELECT x FROM b ORDER BY x")


def spool_a_commit_the_bucket_never_gets(path: str, settings: bottomless.Settings) -> str:
    """Commits on table ``a`` reach the bucket; then commits on ``b`` (other pages) are only
    spooled when the process dies. Returns the generation."""
    db = bottomless.connect(path, settings)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE a(x); CREATE TABLE b(x)")
    for x in (1, 2):
        db.execute("INSERT INTO a VALUES(?)", (x,))
        bottomless.wait_durable(db, 30)  # the last uploaded commit touches a's page only
    stop_uploader(path)
    for x in range(5):
        db.execute("INSERT INTO b VALUES(?)", (x,))
    generation = str(bottomless.status(db)["generation"])
    assert marker(path)["open"] is True
    abandon_async(db, path)
    return generation


@pytest.mark.parametrize("spool", ["lost", "torn"])
def test_restart_with_a_lost_spool_starts_a_new_generation(
    tmp_path: Any, make_settings: MakeSettings, reboot: Callable[[], None], spool: str
) -> None:
    settings = make_settings("file", durability="async", max_lag=60)
    path = str(tmp_path / "p.db")
    old = spool_a_commit_the_bucket_never_gets(path, settings)
    queue = path + "-bottomless-queue"
    if spool == "lost":  # the power cut kept none of the unsynced appends
        os.unlink(queue)
    else:  # or kept the header but not the records it counts
        with open(queue, "r+b") as stream:
            stream.seek(64)
            stream.write(b"\0" * 256)
    reboot()
    db = bottomless.connect(path, settings)
    assert bottomless.status(db)["generation"] != old, "the lineage must not continue"
    db.execute("INSERT INTO a VALUES(3)")
    db.close()
    local = both_tables(path)
    assert local == ([(1,), (2,), (3,)], [(x,) for x in range(5)])
    copy = str(tmp_path / "copy.db")
    bottomless.restore(copy, settings, db_name="p.db")
    assert integrity(copy) == "ok" and both_tables(copy) == local
    assert marker(path)["open"] is False


def test_without_a_restart_the_spool_is_shipped_and_the_lineage_continues(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    settings = make_settings("file", durability="async", max_lag=60)
    path = str(tmp_path / "k.db")
    old = spool_a_commit_the_bucket_never_gets(path, settings)
    db = bottomless.connect(path, settings)  # a crash: the kernel kept the spool
    assert bottomless.status(db)["generation"] == old
    db.close()
    copy = str(tmp_path / "copy.db")
    bottomless.restore(copy, settings, db_name="k.db")
    assert both_tables(copy) == both_tables(path)


def test_a_clean_close_survives_a_restart(
    tmp_path: Any, make_settings: MakeSettings, reboot: Callable[[], None]
) -> None:
    settings = make_settings("file", durability="async", max_lag=60)
    path = str(tmp_path / "c.db")
    db = bottomless.connect(path, settings)
    db.execute("CREATE TABLE t(x)")
    db.execute("INSERT INTO t VALUES(1)")
    generation = bottomless.status(db)["generation"]
    db.close()
    assert marker(path)["open"] is False
    reboot()
    db = bottomless.connect(path, settings)
    assert bottomless.status(db)["generation"] == generation, "nothing was at risk"
    record = marker(path)
    assert record["open"] is True and record["boot"] == "a-later-boot"
    db.close()


def test_sync_mode_keeps_no_session(tmp_path: Any, make_settings: MakeSettings) -> None:
    path = str(tmp_path / "s.db")
    db = bottomless.connect(path, make_settings("file"))
    db.execute("CREATE TABLE t(x)")
    db.close()
    assert not os.path.exists(path + "-bottomless-queue.session")


_HOLDER = """
import sys, bottomless
settings = bottomless.Settings(backend="file", bucket=sys.argv[2], durability="async",
                               max_lag=60)
db = bottomless.connect(sys.argv[1], settings)
db.execute("INSERT INTO t VALUES(2)")
bottomless.wait_durable(db, 30)
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def holder(tmp_path: Any) -> Iterator[Callable[[str, str], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(path: str, bucket: str) -> subprocess.Popen[str]:
        script = tmp_path / "holder.py"
        script.write_text(_HOLDER)
        child = subprocess.Popen([sys.executable, str(script), path, bucket], text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        started.append(child)
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        return child

    yield start
    for child in started:
        child.kill()
        child.wait(10)


def test_the_last_process_out_ends_the_session(
    tmp_path: Any, holder: Callable[[str, str], subprocess.Popen[str]],
    reboot: Callable[[], None],
) -> None:
    bucket = str(tmp_path / "replicas")
    settings = bottomless.Settings(backend="file", bucket=bucket, durability="async", max_lag=60)
    path = str(tmp_path / "m.db")
    db = bottomless.connect(path, settings)
    db.execute("CREATE TABLE t(x)")
    bottomless.wait_durable(db, 30)
    generation = bottomless.status(db)["generation"]
    child = holder(path, bucket)  # a second process in the same session
    db.close()
    assert marker(path)["open"] is True, "the other process is still in the session"
    child.kill()  # it dies with the machine
    child.wait(10)
    reboot()
    db = bottomless.connect(path, settings)
    assert bottomless.status(db)["generation"] != generation
    db.close()
    assert rows(path) == [(2,)]


@pytest.mark.parametrize(
    ("content", "boot", "expected"),
    [
        (None, "b1", False),
        ({"open": False, "boot": "b0"}, "b1", False),
        ({"open": True, "boot": "b1"}, "b1", False),
        ({"open": True, "boot": "b0"}, "b1", True),
        ({"open": True, "boot": ""}, "", True),  # a system that names no boot
        (b"{torn", "b1", True),
    ],
)
def test_marker_verdicts(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, content: Any,
                         boot: str, expected: bool) -> None:
    monkeypatch.setattr(session, "boot_id", lambda: boot)
    db_path = str(tmp_path / "v.db")
    found = SessionMarker(db_path)
    if content is not None:
        raw = content if isinstance(content, bytes) else json.dumps(content).encode()
        with open(found.path, "wb") as stream:
            stream.write(raw)
    assert found.left_open_by_restart() is expected


def test_marker_begin_and_end(tmp_path: Any) -> None:
    db_path = str(tmp_path / "e.db")
    first, second = SessionMarker(db_path), SessionMarker(db_path)
    first.begin()
    second.begin()
    synced: list[str] = []
    first.end(clean=True, make_durable=lambda: synced.append("first"))
    assert synced == [] and marker(db_path)["open"] is True  # second still holds it
    second.end(clean=False, make_durable=lambda: synced.append("second"))
    assert synced == [] and marker(db_path)["open"] is True  # commits left: not clean
    third = SessionMarker(db_path)
    third.begin()
    third.end(clean=True, make_durable=lambda: synced.append("third"))
    assert synced == ["third"] and marker(db_path)["open"] is False
    assert marker(db_path)["boot"] == session.boot_id()

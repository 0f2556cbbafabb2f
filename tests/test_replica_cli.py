"""``bottomless follow``: runs until SIGTERM/SIGINT, one plain status line per new position when
not on a terminal, exit status 1 when the follower stops on an error."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from test_replica import bookmark, content, setup_bank, transfer

import bottomless
from bottomless import format as fmt
from bottomless.backends.registry import open_store
from bottomless.replica.command import status_line
from bottomless.replica.position import read_position

MakeSettings = Callable[..., bottomless.Settings]


def follow(path: str, bucket: str, *extra: str) -> subprocess.Popen[str]:
    """``bottomless follow bank.db PATH`` on the file backend."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIBSQL_BOTTOMLESS_")}
    return subprocess.Popen(
        [sys.executable, "-m", "bottomless", "follow", "bank.db", path, "--backend", "file",
         "--bucket", bucket, "--poll-interval", "0.05", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def wait_until(check: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT])
def test_follow_runs_until_signalled(how: signal.Signals, make_settings: MakeSettings,
                                     tmp_path: Any) -> None:
    primary, path = str(tmp_path / "primary.db"), str(tmp_path / "replica.db")
    settings = make_settings("file", db_name="bank.db")
    writer = bottomless.connect(primary, settings)
    setup_bank(writer)
    process = follow(path, settings.bucket)
    try:
        for _ in range(5):
            transfer(writer, random.Random(1))
        seq = int(bookmark(writer).rsplit(":", 1)[1])

        def caught_up() -> bool:
            position = read_position(path) if os.path.exists(path) else None
            return position is not None and position.current.seq >= seq

        wait_until(caught_up)
        process.send_signal(how)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert f"commit {seq}," in out and "bank.db generation" in out
    assert "\r" not in out  # plain lines when stdout is not a terminal
    assert content(path) == content(primary)
    writer.close()


def test_follow_exits_1_when_the_follower_cannot_start_or_stops(
    make_settings: MakeSettings, tmp_path: Any
) -> None:
    primary, path = str(tmp_path / "primary.db"), str(tmp_path / "replica.db")
    settings = make_settings("file", db_name="bank.db")
    writer = bottomless.connect(primary, settings)
    setup_bank(writer)
    stranger = str(tmp_path / "stranger.db")
    with open(stranger, "w") as handle:
        handle.write("not a database, not a replica")
    out, err = follow(stranger, settings.bucket).communicate(timeout=30)
    assert "error:" in err and "not a bottomless replica" in err
    process = follow(path, settings.bucket)
    try:
        wait_until(lambda: os.path.exists(path + "-bottomless-replica"))
        status = bottomless.status(writer)
        seq = status["last_replicated_commit"] + 1
        batch = fmt.PageBatch(fmt.KIND_COMMIT, status["generation"], seq, 4096, 2,
                              {2: bytes(4096)}, prev=os.urandom(32))  # not the next commit
        store = open_store(settings)
        store.put_if_absent(fmt.commit_key("bank.db", status["generation"], seq),
                            fmt.encode_batch(batch))
        store.close()
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1
    assert "error: the follower stopped" in err and "breaks the commit chain" in err
    assert "STOPPED" in out
    writer.close()


def test_the_status_line() -> None:
    status = {"db_name": "bank.db", "generation": "G", "seq": 7, "lag_seconds": 0.25,
              "commits_applied": 3, "requests": {"get": 3, "get_missing": 9},
              "stopped_by": None, "last_error": "timeout"}
    assert status_line(status) == ("bank.db generation G commit 7, lag 0.250s, 3 applied,"
                                   " 12 requests, last error: timeout")
    assert "STOPPED: bad" in status_line({**status, "stopped_by": "bad"})

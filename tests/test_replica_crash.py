"""A follower killed (SIGKILL) at any moment restarts from its file and continues.

Kills land at each step of the apply protocol (a child that kills itself there), and at random
moments while a writer commits and readers in other processes check every read. After a kill,
a reader that opens the file with no connection left runs SQLite's own WAL recovery, which
publishes every complete commit in the WAL, recorded or not: the position record must never
lag behind that, or the restarted follower would take readers back in time.

Kill counts: the default run does 7 at exact points and 3 at random moments; ``-m slow`` adds
a soak of 40 random kills.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from test_replica import Readers, bookmark, content, setup_bank, transfer

import bottomless
from bottomless.replica import Replica
from bottomless.replica.position import read_position

MakeSettings = Callable[..., bottomless.Settings]

#: a follower in a child process; with a kill point it SIGKILLs itself there, on the nth time
FOLLOWER = r"""
import os, signal, sys, time
import bottomless
from bottomless.replica import Replica, local, position, wal

path, bucket, point, nth = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
seen = [0]

def kill_on(owner, name, when=lambda *a, **k: True):
    original = getattr(owner, name)
    def hooked(*args, **kwargs):
        if when(*args, **kwargs):
            seen[0] += 1
            if seen[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    setattr(owner, name, hooked)

if point == "intent":  # before the write-ahead record of an apply
    kill_on(position.PositionFile, "write", lambda self, pos, durable=True: pos.base is not None)
elif point == "frames":  # half-way through the frames of an apply
    wal._FRAMES_PER_WRITE = 1
    kill_on(wal, "_pwrite_all")
elif point == "publish":  # frames written and synced, the wal-index not updated
    kill_on(wal.WalFile, "publish")
elif point == "settle":  # published, the record not yet settled
    kill_on(position.PositionFile, "write", lambda self, pos, durable=True: not durable)
elif point == "fresh":  # the record written, the WAL empty and its new header not yet written
    kill_on(wal.WalFile, "_new_cycle")
elif point == "checkpoint":  # the WAL just emptied, the record still naming its frames
    checkpoint = local.ReplicaFile.checkpoint
    def after_checkpoint(self, **kwargs):
        result = checkpoint(self, **kwargs)
        if self.wal_frames() == 0 and self.position.current.wal is not None:
            seen[0] += 1
            if seen[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return result
    local.ReplicaFile.checkpoint = after_checkpoint
settings = bottomless.Settings(backend="file", bucket=bucket, db_name="bank.db")
Replica(path, settings, poll_interval=0.02, checkpoint_frames=20, max_wal_frames=60).start()
print("started", flush=True)
time.sleep(60)
"""


def follower(path: str, bucket: str, point: str = "none", nth: int = 0) -> subprocess.Popen[str]:
    """Start a follower child process."""
    return subprocess.Popen([sys.executable, "-c", FOLLOWER, path, bucket, point, str(nth)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def counter_of(path: str) -> int:
    """The commit counter a fresh reader sees (it runs SQLite's recovery if nobody has the file
    open), after checking integrity and the invariant."""
    return int(content(path)[1][0][0])


@pytest.mark.parametrize(("point", "nth", "watched"), [
    ("intent", 3, False), ("frames", 3, False), ("publish", 3, False), ("publish", 3, True),
    ("settle", 3, True), ("checkpoint", 1, False), ("fresh", 1, False),
])
def test_a_follower_killed_at_each_step_of_an_apply_resumes(
    point: str, nth: int, watched: bool, make_settings: MakeSettings, tmp_path: Any
) -> None:
    """``watched``: readers keep the file open through the kill, so SQLite's recovery does not
    run and the restarted follower must publish what the killed one wrote but did not."""
    primary, path = str(tmp_path / "primary.db"), str(tmp_path / "replica.db")
    settings = make_settings("file", db_name="bank.db")
    writer = bottomless.connect(primary, settings)
    setup_bank(writer)
    with Replica(path, settings):
        pass  # restored at the setup's last commit
    rng = random.Random(11)
    for _ in range(5):
        transfer(writer, rng)
    watching = Readers(path, str(tmp_path / "watching"), count=1, hold=True) if watched else None
    child = follower(path, settings.bucket, point, nth)
    stop = threading.Event()

    def write() -> None:  # one commit at a time, so the child makes several applies
        while not stop.wait(0.03):
            transfer(writer, rng)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        child.wait(timeout=60)
    finally:
        stop.set()
        thread.join()
    assert child.returncode == -signal.SIGKILL, child.stderr.read() if child.stderr else ""
    after_kill = counter_of(path)  # a whole commit, maybe one the record calls in flight
    readers = Readers(path, str(tmp_path / "stop"), count=2)
    with Replica(path, settings, poll_interval=0.02) as replica:
        replica.wait_for(bookmark(writer), timeout=30)
        assert replica.status()["last_error"] is None
    seen = readers.finish() + (watching.finish() if watching is not None else [])
    assert min(last for _, _, last, _ in seen) >= after_kill  # nobody went back
    assert content(path) == content(primary)
    position = read_position(path)
    assert position is not None and position.base is None
    writer.close()


def kill_loop(make_settings: MakeSettings, tmp_path: Any, kills: int) -> None:
    """A writer commits continuously; a follower child is killed at random moments and
    restarted; readers check every read throughout."""
    primary, path = str(tmp_path / "primary.db"), str(tmp_path / "replica.db")
    settings = make_settings("file", db_name="bank.db")
    writer = bottomless.connect(primary, settings)
    setup_bank(writer)
    with Replica(path, settings):
        pass
    readers = Readers(path, str(tmp_path / "stop"), count=3)
    stop = threading.Event()
    rng = random.Random(12)

    def write() -> None:  # a busy writer: about 100 commits a second
        while not stop.wait(0.005):
            transfer(writer, rng)

    thread = threading.Thread(target=write)
    thread.start()
    killer = random.Random(13)
    try:
        for _ in range(kills):
            child = follower(path, settings.bucket)
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line == "started\n", line + (child.stderr.read() if child.stderr else "")
            time.sleep(killer.uniform(0.05, 0.5))
            child.send_signal(signal.SIGKILL)
            child.wait()
            counter_of(path)  # readable and whole with no follower running
    finally:
        stop.set()
        thread.join()
    with Replica(path, settings, poll_interval=0.02) as replica:
        replica.wait_for(bookmark(writer), timeout=60)
    seen = readers.finish()
    assert content(path) == content(primary)
    assert all(reads > 0 for reads, *_ in seen)
    writer.close()


def test_a_follower_killed_at_random_moments_resumes(
    make_settings: MakeSettings, tmp_path: Any
) -> None:
    kill_loop(make_settings, tmp_path, kills=3)


@pytest.mark.slow
def test_soak_a_follower_killed_forty_times(make_settings: MakeSettings, tmp_path: Any) -> None:
    kill_loop(make_settings, tmp_path, kills=40)


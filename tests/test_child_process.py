"""The helper-process layer under background snapshots (``engine.child_process``): what it
leaves open, and how it copes with a system short of descriptors or without some calls."""

from __future__ import annotations

import errno
import os
import resource
import selectors
import sys
from typing import Any

import pytest

from bottomless.engine.child_process import ChildProcess, SpawnError

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"),
                                reason="counts descriptors in /proc")

ECHO = ("import os, sys; line = sys.stdin.buffer.readline();"
        " os.write(3, b'got ' + line); sys.stderr.write('bye')")


def _open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None  # gone, and collected


def test_a_conversation_leaves_nothing_open_and_nothing_behind() -> None:
    before = _open_fds()
    child = ChildProcess.start([sys.executable, "-c", ECHO])
    talk = child.converse(b"hello\n", exit_grace=10)
    assert (talk.answer, talk.stderr, talk.returncode) == (b"got hello", b"bye", 0)
    assert _open_fds() == before and _state(child.pid) is None
    # closing again touches nothing: not even a descriptor that took an old number since
    reused = os.open(os.devnull, os.O_RDONLY)
    try:
        child.close()
        os.fstat(reused)
    finally:
        os.close(reused)


@pytest.mark.parametrize("free", range(12))
def test_running_out_of_descriptors_at_start_leaks_none(free: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = max(max(_open_fds()) + 1, 10)
    if hard != resource.RLIM_INFINITY and top + free > hard:
        pytest.skip("cannot set the descriptor limit that low here")
    fillers = []  # every free number below ``top`` taken: the next ones handed out are known
    while (fd := os.open(os.devnull, os.O_RDONLY)) < top:
        fillers.append(fd)
    os.close(fd)
    before = _open_fds()
    resource.setrlimit(resource.RLIMIT_NOFILE, (top + free, hard))  # ``free`` numbers left
    try:
        child = ChildProcess.start([sys.executable, "-c", ECHO])
    except SpawnError as e:
        assert e.errno == errno.EMFILE and e.transient
    else:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        child.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        after = _open_fds()
        for fd in fillers:
            os.close(fd)
    assert after == before


def test_a_watch_that_cannot_be_set_up_kills_and_collects_the_child(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_selector() -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    before = _open_fds()
    child = ChildProcess.start([sys.executable, "-c", "import time; time.sleep(30)"])
    monkeypatch.setattr(selectors, "DefaultSelector", no_selector)
    with pytest.raises(OSError):
        child.converse(b"job\n", exit_grace=10)
    assert _open_fds() == before and _state(child.pid) is None


def test_pidfds_that_waitid_does_not_take_fall_back_to_waitpid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_waitid = getattr(os, "waitid", None)
    if real_waitid is None or not hasattr(os, "P_PIDFD"):
        pytest.skip("no waitid on pidfds here anyway")

    def linux_5_3(idtype: int, ident: int, options: int) -> Any:
        if idtype == os.P_PIDFD:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_waitid(idtype, ident, options)

    monkeypatch.setattr(os, "waitid", linux_5_3)
    child = ChildProcess.start([sys.executable, "-c", ECHO])
    talk = child.converse(b"again\n", exit_grace=10)
    assert (talk.answer, talk.returncode) == (b"got again", 0)
    assert _state(child.pid) is None

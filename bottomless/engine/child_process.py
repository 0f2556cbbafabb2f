"""A helper process that this one talks to without ever waiting for an end of file.

A process forked from this one at the wrong moment (another thread's worker pool, a forking
server) holds a copy of every descriptor open at that moment, for as long as it lives: the
ends of the pipes to a child being started included. So the child is started with
``posix_spawn`` (``subprocess.Popen`` waits for the end of a pipe of its own while it starts
the program), its end is learnt from the process itself (a pidfd where Linux has them, else
``waitpid``), never from a pipe, and what it is sent and what it answers are framed, so that
neither side reads until an end of file to know a message is whole.

The child runs in a session of its own: a Ctrl-C at the terminal reaches the application, not
the child, and the child has no terminal to stop on. It starts with no signal blocked, SIGPIPE
at its default, and only descriptors 0 to 3: stdin (a socket this process writes its request
to), stdout (the null device), stderr (a pipe whose last 64 KiB are kept for the message when
the child dies) and the answer pipe.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import selectors
import signal
import socket
import time
from dataclasses import dataclass

#: the child's descriptor for its answer
ANSWER_FD = 3
#: how much of the child's stderr is kept
STDERR_TAIL = 64 * 1024
#: errors of a start that may well succeed next time: the machine is short of something
TRANSIENT_ERRORS = frozenset({errno.EAGAIN, errno.EMFILE, errno.ENFILE, errno.ENOMEM})
#: signals the child starts with at their default disposition, whatever this process did with
#: them (subprocess does so for the first three; an ignored SIGCHLD would also break the
#: child's own subprocesses)
_DEFAULT_SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ", "SIGCHLD", "SIGHUP", "SIGINT", "SIGTERM",
                 "SIGQUIT")
    if hasattr(signal, name)
)
#: what waitid says of a pidfd on a kernel or sandbox that cannot wait on one
_NO_PIDFD_WAIT = frozenset({errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP})
#: without a pidfd, how often (seconds) to look whether the child has exited
_POLL = 0.05
#: MSG_NOSIGNAL where there is one: a write to a child that is gone fails instead of killing
#: this process with SIGPIPE (an application may have set SIGPIPE back to its default)
_NO_SIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)


def can_spawn() -> bool:
    """Whether this platform can start a child the way this module does."""
    return os.name == "posix" and hasattr(os, "posix_spawn")


class SpawnError(OSError):
    """The child could not be started; ``transient``: the machine was short of a resource."""

    @property
    def transient(self) -> bool:
        """Whether trying again later may well work."""
        return self.errno in TRANSIENT_ERRORS


@dataclass
class Conversation:
    """How a child's run went: its answer line (without the newline; empty if none), the end
    of its stderr, and its exit status (negative: the signal that killed it; None: unknown,
    another part of this process collected it)."""

    answer: bytes
    stderr: bytes
    returncode: int | None


def _high(fd: int) -> int:
    """``fd`` moved to a number of at least 10 (and closed): the child's descriptors 0 to 3
    are copied from these, and none of them may be overwritten before it is copied, as could
    happen were this process's own 0, 1 or 2 closed and their numbers reused."""
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    finally:
        os.close(fd)


class ChildProcess:
    """A running child: :meth:`start` it, then :meth:`converse` with it once."""

    def __init__(self, pid: int, pidfd: int | None, stdin: socket.socket, answers: int,
                 stderr: int) -> None:
        self.pid = pid
        self._pidfd = pidfd
        self._stdin = stdin
        self._answers: int | None = answers
        self._stderr: int | None = stderr
        self._exited = False
        self.returncode: int | None = None

    @classmethod
    def start(cls, argv: list[str]) -> ChildProcess:
        """Start ``argv`` (``argv[0]`` a path) with this process's environment. Raises
        :class:`SpawnError`."""
        with contextlib.ExitStack() as cleanup:
            try:
                parent_end, child_end = socket.socketpair()
                cleanup.enter_context(parent_end)
                cleanup.enter_context(child_end)
                stdin = _high(os.dup(child_end.fileno()))
                cleanup.callback(os.close, stdin)
                answers, answer_end = _high_pipe()
                cleanup.callback(os.close, answers)
                cleanup.callback(os.close, answer_end)
                stderr, stderr_end = _high_pipe()
                cleanup.callback(os.close, stderr)
                cleanup.callback(os.close, stderr_end)
                devnull = _high(os.open(os.devnull, os.O_WRONLY))
                cleanup.callback(os.close, devnull)
                actions = [(os.POSIX_SPAWN_DUP2, stdin, 0),
                           (os.POSIX_SPAWN_DUP2, devnull, 1),
                           (os.POSIX_SPAWN_DUP2, stderr_end, 2),
                           (os.POSIX_SPAWN_DUP2, answer_end, ANSWER_FD)]
                pid = _spawn(argv, actions)
                cleanup.callback(_collect, pid)  # until the child object owns it
                # from here the child owns what this process keeps for it, and whatever goes
                # wrong kills and collects it
                child = cls(pid, None, parent_end, answers, stderr)
                cleanup.pop_all()
                with contextlib.ExitStack() as on_error:
                    on_error.callback(child.close)
                    for fd in (stdin, answer_end, stderr_end, devnull):  # the child has copies
                        with contextlib.suppress(OSError):
                            os.close(fd)
                    with contextlib.suppress(OSError):
                        child_end.close()
                    child._pidfd = _pidfd(pid)
                    parent_end.setblocking(False)
                    if hasattr(socket, "SO_NOSIGPIPE"):  # no MSG_NOSIGNAL there (macOS)
                        parent_end.setsockopt(socket.SOL_SOCKET, socket.SO_NOSIGPIPE, 1)
                    os.set_blocking(answers, False)
                    os.set_blocking(stderr, False)
                    on_error.pop_all()
            except OSError as e:
                raise SpawnError(e.errno, f"cannot start {os.path.basename(argv[0])}:"
                                 f" {e.strerror or e}") from e
        return child

    # ------------------------------------------------------------------ its end

    def poll(self) -> bool:
        """Whether the child has exited (then :attr:`returncode` says how)."""
        if self._exited:
            return True
        try:
            if self._pidfd is not None:
                try:
                    info = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG)
                except ChildProcessError:
                    raise
                except OSError as e:  # a kernel with pidfds but no waitid on them: by pid
                    if e.errno not in _NO_PIDFD_WAIT:
                        raise
                    self._drop_pidfd()
                    return self.poll()
                if info is None:
                    return False
                self.returncode = (info.si_status if info.si_code == os.CLD_EXITED
                                   else -info.si_status)
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if not pid:
                    return False
                self.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # collected elsewhere (SIGCHLD ignored, or a handler)
            self.returncode = None
        self._exited = True
        return True

    def kill(self) -> None:
        """Kill the child if it still runs, and collect it. Through its pidfd, a signal can
        only reach the child; by pid, a child that another part of this process collects
        in the moment between the look and the signal could, in theory, have had its pid
        reused."""
        if self.poll():
            return
        with contextlib.suppress(ProcessLookupError):
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            else:
                os.kill(self.pid, signal.SIGKILL)
        while not self.poll():
            time.sleep(0.005)

    def close(self) -> None:
        """Kill the child if it still runs and release every descriptor kept for it (once:
        a second call does nothing)."""
        try:
            self.kill()
        finally:
            self._stdin.close()
            for fd in (self._answers, self._stderr):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._answers = self._stderr = None
            self._drop_pidfd()

    def _drop_pidfd(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = None

    # ------------------------------------------------------------------ talking to it

    def converse(self, request: bytes, *, exit_grace: float) -> Conversation:
        """Send ``request``, read the answer line as it comes (an answer longer than a pipe
        holds would otherwise block the child) and stderr, until the child has exited; once
        the answer is whole, wait at most ``exit_grace`` seconds for that. Then :meth:`close`.
        """
        answer = bytearray()
        errors = bytearray()
        pending = memoryview(request)
        selector: selectors.BaseSelector | None = None
        answers, stderr = self._answers, self._stderr
        if answers is None or stderr is None:
            raise ValueError("this child was closed already")
        try:
            selector = selectors.DefaultSelector()
            selector.register(self._stdin, selectors.EVENT_WRITE, "stdin")
            selector.register(answers, selectors.EVENT_READ, "answer")
            selector.register(stderr, selectors.EVENT_READ, "stderr")
            if self._pidfd is not None:
                selector.register(self._pidfd, selectors.EVENT_READ, "exit")
            answered_at: float | None = None
            while not self.poll():
                if answered_at is None and b"\n" in answer:
                    answered_at = time.monotonic()
                if answered_at is not None and time.monotonic() - answered_at >= exit_grace:
                    break  # it answered but does not exit: killed below
                timeout = _POLL if self._pidfd is None else None
                if answered_at is not None:
                    left = exit_grace - (time.monotonic() - answered_at)
                    timeout = left if timeout is None else min(timeout, left)
                for key, _ in selector.select(max(0.0, timeout) if timeout is not None
                                              else None):
                    if key.data == "stdin":
                        pending = self._send(pending)
                        if not pending:
                            selector.unregister(self._stdin)
                    elif key.data == "answer":
                        if not _read_into(answers, answer, None):
                            selector.unregister(answers)
                    elif key.data == "stderr" and not _read_into(stderr, errors, STDERR_TAIL):
                        selector.unregister(stderr)
            # what it wrote before it exited is in the pipes already: take it, never wait
            while _read_into(answers, answer, None, wait=False):
                pass
            while _read_into(stderr, errors, STDERR_TAIL, wait=False):
                pass
        finally:
            if selector is not None:
                selector.close()
            self.close()
        line = bytes(answer).split(b"\n", 1)[0]
        return Conversation(line, bytes(errors), self.returncode)

    def _send(self, pending: memoryview) -> memoryview:
        """Send what the socket takes of ``pending``; return the rest (empty once all is sent,
        or when the child is gone), and end the stream once all is sent."""
        try:
            pending = pending[self._stdin.send(pending, _NO_SIGNAL):]
        except BlockingIOError:
            return pending
        except OSError:  # the child is gone, or closed its stdin: its status says why
            return pending[:0]
        if not pending:
            with contextlib.suppress(OSError):
                self._stdin.shutdown(socket.SHUT_WR)
        return pending


def _read_into(fd: int, buffer: bytearray, keep: int | None, *, wait: bool = True) -> bool:
    """Append what ``fd`` has to ``buffer`` (keeping its last ``keep`` bytes); False at the
    end of the stream, or, with ``wait`` false, when there is nothing more to read now."""
    try:
        chunk = os.read(fd, 1 << 16)
    except BlockingIOError:
        return wait
    except OSError:
        return False
    if not chunk:
        return False
    buffer += chunk
    if keep is not None and len(buffer) > keep:
        del buffer[:-keep]
    return True


def _spawn(argv: list[str], actions: list[tuple[int, int, int]]) -> int:
    """``posix_spawn`` in a new session, with no signal blocked; where a new session cannot
    be asked for, in a new process group."""
    try:
        return os.posix_spawn(argv[0], argv, os.environ, file_actions=actions, setsid=True,
                              setsigmask=(), setsigdef=_DEFAULT_SIGNALS)
    except NotImplementedError:
        return os.posix_spawn(argv[0], argv, os.environ, file_actions=actions, setpgroup=0,
                              setsigmask=(), setsigdef=_DEFAULT_SIGNALS)


def _pidfd(pid: int) -> int | None:
    """A pidfd of ``pid`` that ``waitid`` takes, where the system has them (Linux 5.4 and
    later; 5.3 opens pidfds but cannot wait on them), else None."""
    if not hasattr(os, "pidfd_open") or not hasattr(os, "P_PIDFD"):
        return None
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    try:  # a look that collects nothing (WNOWAIT)
        os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        pass  # collected elsewhere already: poll() says so
    except OSError:
        os.close(fd)
        return None
    return fd


def _collect(pid: int) -> None:
    """Kill and collect ``pid``, a child this process just started (and nothing owns yet)."""
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _high_pipe() -> tuple[int, int]:
    """A pipe, both ends moved as :func:`_high` moves them; nothing left open on failure."""
    read_end, write_end = os.pipe()
    try:
        read_end = _high(read_end)
    except BaseException:
        os.close(write_end)
        raise
    try:
        return read_end, _high(write_end)
    except BaseException:
        os.close(read_end)
        raise

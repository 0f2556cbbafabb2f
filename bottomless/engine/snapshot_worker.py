"""Background snapshots built in a child Python process.

A snapshot is built from the bucket (:func:`bottomless.ops.snapshots.compact`): it reads the
previous snapshot and the log since, and uploads the parts that changed. That is seconds of
decoding, hashing and compressing, and in a thread it would hold the interpreter lock the
committing threads need, so sync commits would wait behind it. In a child process it does
not: the parent's thread only waits for the child.

The child is this interpreter again (its interpreter flags, without the user site directory
or the script's directory on its path), given the parent's ``sys.path`` and working directory,
so it imports the same code and resolves the same relative paths. It is started and talked to
as :mod:`bottomless.engine.child_process` says: in a session of its own, through descriptors
that no process forked meanwhile can hold up. The job, settings and secrets included, goes to
it on its stdin as JSON lines (never argv or the environment, where other users of the machine
could read the secrets). It answers with one JSON line on a descriptor of its own (what it
wrote, its requests, its log records, or its error), so nothing a library prints can spoil the
answer. It exits if its parent dies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bottomless.backends.base import PageStore
from bottomless.backends.counting import CountingStore
from bottomless.backends.registry import backend_registry, open_store
from bottomless.engine.child_process import (
    ANSWER_FD,
    ChildProcess,
    Conversation,
    SpawnError,
    can_spawn,
)
from bottomless.errors import BottomlessError, ObjectExistsError, SnapshotProcessError, StoreError
from bottomless.ops.snapshots import compact
from bottomless.settings import Settings

#: how much lower than its parent the child runs (``os.nice``, its first step): commits come
#: first
NICENESS = 5
#: the child's entry point, run with ``-c``. It keeps no descriptor but 0 to 3 (others the
#: application let it inherit might be ports or pipes somebody waits on). Its first stdin line
#: is the parent's sys.path. A child that cannot import bottomless says so on the answer
#: descriptor (its last argument), as a failure to set up: snapshots then go to a thread
_BOOTSTRAP = """
import os, sys
try:
    os.nice(NICENESS)
except (OSError, AttributeError):
    pass
# the open ones, where a listing is sure to name them all (a loop to the limit is slow where
# closerange has no close_range or closefrom; elsewhere /dev/fd may list 0-2 only)
listing = {"linux": "/proc/self/fd", "darwin": "/dev/fd"}.get(sys.platform)
try:
    open_fds = [int(name) for name in os.listdir(listing)] if listing else None
except (OSError, ValueError):
    open_fds = None
if open_fds is None:
    os.closerange(4, max(4, os.sysconf("SC_OPEN_MAX")))
else:
    for fd in open_fds:
        if fd > 3:
            try:
                os.close(fd)
            except OSError:
                pass
import json
def answer(setup, e):
    doc = {"setup": setup, "kind": type(e).__name__,
           "error": f"the snapshot process cannot load bottomless: {e!r}"}
    os.write(int(sys.argv[-1]), json.dumps(doc).encode() + b"\\n")
    raise SystemExit(1)
try:
    sys.path[:] = json.loads(sys.stdin.buffer.readline())
    from bottomless.engine.snapshot_worker import main
except ImportError as e:
    answer(True, e)
except BaseException as e:
    answer(False, e)
sys.exit(main())
""".replace("NICENESS", str(NICENESS))
#: at most this many log records go back to the parent
_RELAYED_RECORDS = 200
#: the level of the third-party records the child relays (its own follow the parent's level)
_OTHERS_LEVEL = logging.WARNING
#: at most this many characters of each of the last lines a dying child wrote to stderr go into
#: the error
_LINE = 500
#: seconds the parent waits for the child to exit once it has answered
_EXIT_GRACE = 30.0


@dataclass(frozen=True)
class SnapshotJob:
    """What to build: the snapshot of ``generation`` at commit ``seq``."""

    db_name: str
    generation: str
    seq: int
    writer: str
    parallelism: int

    def run(self, store: PageStore, settings: Settings,
            counter: Callable[[bytes], None] | None = None) -> None:
        """Build it here, in this process, uploading through ``store``."""
        compact(
            store, db_name=self.db_name, generation=self.generation, seq=self.seq,
            compression=settings.compression, parallelism=self.parallelism,
            writer=self.writer, part_mb=settings.snapshot_part_mb, counter=counter,
        )


@dataclass(frozen=True)
class ChildReport:
    """What a snapshot child reported: objects and bytes it wrote, and its requests by kind
    (as :class:`~bottomless.backends.counting.CountingStore` counts them)."""

    objects: int
    bytes: int
    requests: dict[str, int]
    failures: dict[str, int]
    bytes_read: int


def _registration(store: PageStore) -> tuple[PageStore, tuple[str, str | None] | None]:
    """The store a CountingStore wraps (or ``store`` itself), and how another process can
    open it (:meth:`~bottomless.backends.registry.BackendRegistry.portable`)."""
    inner = store.inner if isinstance(store, CountingStore) else store
    return inner, backend_registry.portable(inner)


def can_use_child(store: PageStore) -> bool:
    """Whether a child process can open ``store`` (or the store a CountingStore wraps) from
    its settings and see its objects, and this interpreter can be started again: an
    application server embedding Python has its own binary as ``sys.executable``."""
    interpreter = os.path.basename(sys.executable or "").lower()
    return (can_spawn() and interpreter.startswith(("python", "pypy"))
            and _registration(store)[1] is not None)


def build_in_child(job: SnapshotJob, settings: Settings, store: PageStore, *,
                   cwd: str | None = None) -> ChildReport:
    """Run ``job`` in a child process, on the backend ``store`` belongs to, and wait for it.

    The child's requests are added to ``store``'s counts when it is a CountingStore, and its
    log records are logged here. ``cwd``: the directory relative paths in ``settings`` were
    resolved against (default: the current one). Raises SnapshotProcessError with the child's
    own message when the snapshot failed, or with the tail of its stderr when the child died;
    its ``at_start`` is true when the child cannot be started or set up here at all.
    """
    inner, registration = _registration(store)
    if registration is None:
        raise SnapshotProcessError(
            f"backend {inner.backend!r} cannot be opened by a child", at_start=True)
    request = json.dumps(_child_path()) + "\n" + json.dumps({
        "settings": settings.portable(), "job": dataclasses.asdict(job),
        "backend": [inner.backend, *registration], "parent": os.getpid(),
        "log_level": logging.getLogger("bottomless").getEffectiveLevel(),
        "cwd": cwd if cwd is not None else working_directory(),
    }) + "\n"
    argv = [sys.executable, *_interpreter_flags(), "-c", _BOOTSTRAP, str(ANSWER_FD)]
    try:
        child = _spawn(argv)
    except SpawnError as e:
        raise SnapshotProcessError(f"cannot start the snapshot process: {e}",
                                   at_start=not e.transient) from e
    try:
        talk = _converse(child, request.encode())
    except OSError as e:  # short of descriptors to watch it with, say: it was killed
        raise SnapshotProcessError(f"lost touch with the snapshot process: {e}") from e
    return _report(_answer(talk.answer), talk.returncode, talk.stderr, store, job.db_name)


def _spawn(argv: list[str]) -> ChildProcess:
    """Start the child (a seam for tests)."""
    return ChildProcess.start(argv)


def _converse(child: ChildProcess, request: bytes) -> Conversation:
    """Hand the child its job and collect its answer (a seam for tests)."""
    return child.converse(request, exit_grace=_EXIT_GRACE)


def working_directory() -> str | None:
    """The current working directory, or None if it was removed."""
    try:
        return os.getcwd()
    except OSError:
        return None


def _child_path() -> list[str]:
    """This process's ``sys.path`` as absolute paths, for the child; entries that cannot be
    resolved (relative ones, after the working directory was removed) are left out. The
    directory this very ``bottomless`` was loaded from comes last, should the path no longer
    lead to it (a plugin loader that took its entry out again)."""
    paths = []
    for entry in sys.path:
        if isinstance(entry, str | os.PathLike):
            with contextlib.suppress(OSError):
                paths.append(os.path.abspath(os.fspath(entry)))
    package_home = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if package_home not in paths:
        paths.append(package_home)
    return paths


def _interpreter_flags() -> list[str]:
    """The flags this interpreter runs with (``-O``, ``-B``, ``-X`` options, ...), then ``-s``
    and ``-P``: ``sys.path`` comes from the parent, neither from the user's site directory
    nor from the working directory."""
    flags: list[str] = getattr(subprocess, "_args_from_interpreter_flags", list)()
    return [*flags, "-s", "-P"]


def _report(answer: dict[str, Any] | None, returncode: int | None, stderr: bytes,
            store: PageStore, db_name: str) -> ChildReport:
    """Turn the child's answer into a report (relaying its counts and log), or raise."""
    if answer is None:
        tail = [line[-_LINE:] for line in
                stderr.decode(errors="replace").strip().splitlines()[-3:]]
        status = ("(its status collected by another part of this process)"
                  if returncode is None else f"with status {returncode}")
        raise SnapshotProcessError(
            f"the snapshot process exited {status} without an answer: "
            + (" | ".join(tail) or "no message"), returncode=returncode,
        )
    report = ChildReport(
        int(answer.get("objects", 0)), int(answer.get("bytes", 0)),
        dict(answer.get("requests", {})), dict(answer.get("failures", {})),
        int(answer.get("bytes_read", 0)),
    )
    if isinstance(store, CountingStore):
        store.merge(report.requests, report.failures, report.bytes_read)
    for name, level, message in answer.get("log", []):
        try:
            logging.getLogger(str(name)).log(int(level), "%s", message,
                                             extra={"db_name": db_name})
        except Exception:  # noqa: BLE001 - the snapshot is stored; a log line is not
            continue
    if "error" in answer:
        kind = answer.get("kind")
        raise SnapshotProcessError(str(answer["error"]), kind=kind,
                                   at_start=bool(answer.get("setup")))
    return report


def _answer(data: bytes) -> dict[str, Any] | None:
    """The child's JSON answer, or None if it gave none (it died first)."""
    try:
        answer = json.loads(data) if data.strip() else None
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


class _Relay(logging.Handler):
    """Keeps the child's log records, to send them to the parent with the answer."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[str, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) >= _RELAYED_RECORDS:
            return
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        self.records.append((record.name, record.levelno, message))


def _exit_with_parent(parent: int) -> None:
    """Exit at once when the parent is gone: nobody would use the snapshot's report."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(3)

    threading.Thread(target=watch, name="bottomless-parent-watch", daemon=True).start()


def main() -> int:
    """The child: read a job on stdin, build the snapshot, write one JSON answer line on the
    descriptor named by the last argument."""
    fd = int(sys.argv[-1])
    os.set_inheritable(fd, False)  # not for processes this one might start
    answers = os.fdopen(fd, "w")
    request = json.loads(sys.stdin.buffer.readline())  # a line: never wait for end of file
    _exit_with_parent(int(request["parent"]))
    relay = _Relay()
    logging.getLogger().addHandler(relay)
    logging.getLogger().setLevel(_OTHERS_LEVEL)
    logging.getLogger("bottomless").setLevel(int(request.get("log_level", logging.INFO)))
    written = {"objects": 0, "bytes": 0}

    def count(data: bytes) -> None:
        written["objects"] += 1
        written["bytes"] += len(data)

    answer: dict[str, Any] = {"setup": True}
    store: CountingStore | None = None
    try:
        if request.get("cwd") is not None:  # where relative paths in the settings lead
            with contextlib.suppress(OSError):  # gone: a relative path fails to open, if any
                os.chdir(request["cwd"])
        name, target, extra = request["backend"]
        backend_registry.register(name, target, extra=extra, clobber=True)
        settings = Settings(**request["settings"])
        try:
            store = CountingStore(open_store(settings))
        except StoreError:
            answer["setup"] = False  # the store did not answer this time: not for ever
            raise
        answer["setup"] = False
        SnapshotJob(**request["job"]).run(store, settings, count)
    except ObjectExistsError:
        pass  # another process stored this very snapshot: a success, with nothing more to do
    except Exception as e:  # noqa: BLE001 - reported to the parent, whatever it is
        answer.update(error=str(e) if isinstance(e, BottomlessError) else f"{e!r}",
                      kind=type(e).__name__)
    requests, bytes_read = store.counts() if store is not None else ({}, 0)
    answer.update(written, requests=requests, failures=store.failed() if store else {},
                  bytes_read=bytes_read, log=relay.records)
    with contextlib.suppress(OSError):
        answers.write(json.dumps(answer) + "\n")
        answers.close()
    return 0

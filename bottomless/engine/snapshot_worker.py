"""Background snapshots built in a child Python process.

A snapshot is built from the bucket (:func:`bottomless.ops.snapshots.compact`): it reads the
previous snapshot and the log since, and uploads the parts that changed. That is seconds of
decoding, hashing and compressing, and in a thread it would hold the interpreter lock the
committing threads need, so sync commits would wait behind it. In a child process it does
not: the parent's thread only waits for the child.

The child is this interpreter again, isolated (``-I``) and given the parent's ``sys.path`` and
working directory, so it imports the same code and resolves the same relative paths. The job,
settings and secrets included, goes to it through a pipe as JSON (never argv or the
environment, where other users of the machine could read the secrets). It answers with one
JSON document on a pipe of its own (what it wrote, its requests, its log records, or its
error), so nothing a library prints can spoil the answer; its stdout is discarded, and its
stderr is kept for the message when it dies. It exits if its parent dies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
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
from bottomless.errors import BottomlessError, ObjectExistsError, SnapshotProcessError
from bottomless.ops.snapshots import compact
from bottomless.settings import Settings

#: how much lower than its parent the child runs (``os.nice``): commits come first
NICENESS = 5
#: the child's entry point, run with ``-I -c``: its first stdin line is the parent's sys.path
_BOOTSTRAP = (
    "import json, sys; sys.path[:] = json.loads(sys.stdin.buffer.readline());"
    " from bottomless.engine.snapshot_worker import main; sys.exit(main())"
)
#: log records the child sends back, at this level and above, and at most this many
_RELAYED_LEVEL = logging.INFO
_RELAYED_RECORDS = 200
#: seconds to wait for the answer pipe to end once the child has exited
_ANSWER_GRACE = 10.0


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


def can_use_child(store: PageStore) -> bool:
    """Whether a child process can open ``store`` (or the store a CountingStore wraps) from
    its settings and see its objects, and this interpreter can be started again: an
    application server embedding Python has its own binary as ``sys.executable``."""
    inner = store.inner if isinstance(store, CountingStore) else store
    interpreter = os.path.basename(sys.executable or "").lower()
    return (os.name == "posix" and interpreter.startswith(("python", "pypy"))
            and backend_registry.portable(inner) is not None)


def build_in_child(job: SnapshotJob, settings: Settings, store: PageStore, *,
                   cwd: str | None = None) -> ChildReport:
    """Run ``job`` in a child process, on the backend ``store`` belongs to, and wait for it.

    The child's requests are added to ``store``'s counts when it is a CountingStore, and its
    log records are logged here. ``cwd``: the directory relative paths in ``settings`` were
    resolved against (default: the current one). Raises SnapshotProcessError with the child's
    own message when the snapshot failed, or with the tail of its stderr when the child died;
    its ``at_start`` is true when the child could not be started or set up at all.
    """
    inner = store.inner if isinstance(store, CountingStore) else store
    registration = backend_registry.portable(inner)
    if registration is None:
        raise SnapshotProcessError(
            f"backend {inner.backend!r} cannot be opened by a child", at_start=True)
    paths = [os.path.abspath(os.fspath(p)) for p in sys.path if isinstance(p, str | os.PathLike)]
    request = json.dumps(paths) + "\n" + json.dumps({
        "settings": settings.portable(), "job": dataclasses.asdict(job),
        "backend": [inner.backend, *registration], "parent": os.getpid(),
    })
    read_end, write_end = _answer_pipe()
    try:
        child = subprocess.Popen(
            [sys.executable, "-I", "-c", _BOOTSTRAP, str(write_end)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            pass_fds=(write_end,), cwd=cwd if cwd and os.path.isdir(cwd) else None,
        )
    except OSError as e:
        os.close(read_end)
        raise SnapshotProcessError(f"cannot start the snapshot process: {e}",
                                   at_start=True) from e
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    answer, stderr = _wait(child, read_end, request.encode())
    return _report(_answer(answer), child.returncode, stderr, store, job.db_name)


def _answer_pipe() -> tuple[int, int]:
    """A pipe for the child's answer, its write end above 2: were the parent's standard
    descriptors closed, the child's own stdin, stdout or stderr would land on it."""
    read_end, low = os.pipe()
    write_end = fcntl.fcntl(low, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(low)
    return read_end, write_end


def _wait(child: subprocess.Popen[bytes], read_end: int, request: bytes) -> tuple[bytes, bytes]:
    """Send ``request``, read the answer pipe (in a thread: an answer longer than the pipe
    holds would block the child) and stderr until the child exits; kill it on the way out."""
    chunks: list[bytes] = []
    answers = os.fdopen(read_end, "rb")
    reader = threading.Thread(target=lambda: chunks.append(answers.read()), daemon=True,
                              name="bottomless-snapshot-answer")
    reader.start()
    try:
        _, stderr = child.communicate(request)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    # a grandchild of the child may hold the pipe open: do not wait for it for ever
    reader.join(_ANSWER_GRACE)
    if not reader.is_alive():
        answers.close()
    return b"".join(chunks), stderr or b""


def _report(answer: dict[str, Any] | None, returncode: int, stderr: bytes,
            store: PageStore, db_name: str) -> ChildReport:
    """Turn the child's answer into a report (relaying its counts and log), or raise."""
    if answer is None:
        tail = stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise SnapshotProcessError(
            f"the snapshot process exited with status {returncode} without an answer: "
            + (" | ".join(tail) or "no message"), returncode=returncode,
        )
    report = ChildReport(
        int(answer["objects"]), int(answer["bytes"]), dict(answer["requests"]),
        dict(answer["failures"]), int(answer["bytes_read"]),
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
        super().__init__(_RELAYED_LEVEL)
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
    """The child: read a job on stdin, build the snapshot, write one JSON answer on the
    descriptor named by the last argument."""
    fd = int(sys.argv[-1])
    os.set_inheritable(fd, False)  # not for processes this one might start
    answers = os.fdopen(fd, "w")
    request = json.loads(sys.stdin.buffer.read())
    _exit_with_parent(int(request["parent"]))
    with contextlib.suppress(OSError, AttributeError):  # not here: the parent's priority
        os.nice(NICENESS)
    relay = _Relay()
    logging.getLogger().addHandler(relay)
    logging.getLogger().setLevel(_RELAYED_LEVEL)
    written = {"objects": 0, "bytes": 0}

    def count(data: bytes) -> None:
        written["objects"] += 1
        written["bytes"] += len(data)

    answer: dict[str, Any] = {"setup": True}
    store: CountingStore | None = None
    try:
        name, target, extra = request["backend"]
        backend_registry.register(name, target, extra=extra, clobber=True)
        settings = Settings(**request["settings"])
        store = CountingStore(open_store(settings))
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
        answers.write(json.dumps(answer))
        answers.close()
    return 0

"""Background snapshots built in a child Python process.

A snapshot is built from the bucket (:func:`bottomless.ops.snapshots.compact`): it reads the
previous snapshot and the log since, and uploads the parts that changed. That is seconds of
decoding, hashing and compressing, and in a thread it would hold the interpreter lock the
committing threads need, so sync commits would wait behind it. In a child process it does
not: the parent's thread only waits for the child.

The job, settings included, goes to the child through a pipe as JSON (never argv or the
environment, where other users of the machine could read the secrets); the child answers
with one JSON line on stdout. ``python -m bottomless.engine.snapshot_worker`` is the child.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from bottomless.backends.base import PageStore
from bottomless.backends.counting import CountingStore
from bottomless.backends.registry import backend_registry, open_store
from bottomless.errors import BottomlessError, ObjectExistsError
from bottomless.ops.snapshots import compact
from bottomless.settings import Settings

#: how much lower than its parent the child runs (``os.nice``): commits come first
NICENESS = 5


@dataclass(frozen=True)
class SnapshotJob:
    """What to build: the snapshot of ``generation`` at commit ``seq``."""

    db_name: str
    generation: str
    seq: int
    writer: str
    parallelism: int

    def run(self, store: PageStore, settings: Settings, counter: Any = None) -> None:
        """Build it here, in this process, uploading through ``store``."""
        compact(
            store, db_name=self.db_name, generation=self.generation, seq=self.seq,
            compression=settings.compression, parallelism=self.parallelism,
            writer=self.writer, part_mb=settings.snapshot_part_mb, counter=counter,
        )


@dataclass(frozen=True)
class Built:
    """What a child reported: objects and bytes written, its requests by kind (as
    :class:`~bottomless.backends.counting.CountingStore` counts them), and whether another
    process had already stored this very snapshot."""

    objects: int
    bytes: int
    requests: dict[str, int]
    failures: dict[str, int]
    bytes_read: int
    existed: bool = False

    def count_in(self, store: PageStore) -> None:
        """Add the child's requests to ``store``'s counts, if it counts them."""
        if isinstance(store, CountingStore):
            store.merge(self.requests, self.failures, self.bytes_read)


def can_use_child(store: PageStore) -> bool:
    """Whether a child process can open ``store`` (or the store a CountingStore wraps) from
    its settings and see its objects, and this interpreter can be started again: an
    application server embedding Python has its own binary as ``sys.executable``."""
    inner = store.inner if isinstance(store, CountingStore) else store
    interpreter = os.path.basename(sys.executable or "").lower()
    return interpreter.startswith(("python", "pypy")) and backend_registry.reopens(inner)


def build_in_child(
    job: SnapshotJob, settings: Settings, store: PageStore | None = None
) -> Built:
    """Run ``job`` in a child process and wait for it; the child's requests are added to
    ``store``'s counts when it is a CountingStore.

    Raises BottomlessError with the child's own message when the snapshot failed, or with the
    tail of its stderr when the child died.
    """
    request = json.dumps({"settings": settings.portable(), "job": job.__dict__})
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_root, env.get("PYTHONPATH")) if p
    )
    child = subprocess.run(
        [sys.executable, "-m", __name__], input=request.encode(), capture_output=True,
        env=env, check=False,
    )
    answer = _answer(child.stdout)
    if child.returncode != 0 or answer is None:
        tail = child.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise BottomlessError(
            f"the snapshot process exited with status {child.returncode}: "
            + (" | ".join(tail) or "no message")
        )
    built = Built(
        int(answer["objects"]), int(answer["bytes"]), dict(answer["requests"]),
        dict(answer["failures"]), int(answer["bytes_read"]), bool(answer.get("existed")),
    )
    if store is not None:
        built.count_in(store)
    if "error" in answer:
        raise BottomlessError(str(answer["error"]))
    return built


def _answer(stdout: bytes) -> dict[str, Any] | None:
    """The child's JSON answer: its last line of output, or None."""
    lines = stdout.decode(errors="replace").strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


def main() -> int:
    """The child: read a job on stdin, build the snapshot, print one JSON line."""
    request = json.loads(sys.stdin.buffer.read())
    written = {"objects": 0, "bytes": 0}

    def count(data: bytes) -> None:
        written["objects"] += 1
        written["bytes"] += len(data)

    with contextlib.suppress(OSError, AttributeError):  # not here: the parent's priority
        os.nice(NICENESS)
    answer: dict[str, Any] = {}
    store: CountingStore | None = None
    try:
        settings = Settings(**request["settings"])
        store = CountingStore(open_store(settings))
        SnapshotJob(**request["job"]).run(store, settings, count)
    except ObjectExistsError:
        answer["existed"] = True
    except (BottomlessError, OSError) as e:
        answer["error"] = str(e)
    requests, bytes_read = store.counts() if store is not None else ({}, 0)
    failures = store.failed() if store is not None else {}
    answer.update(written, requests=requests, failures=failures, bytes_read=bytes_read)
    print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

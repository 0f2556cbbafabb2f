"""Measurements 1-3: commit rates (sync, async, sqlite-s3vfs), the PUT floor, requests per commit.

Each function sets up its own databases and returns plain JSON-ready dicts. Nothing here
asserts on timings: these are measurements, the caller prints and compares them.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import math
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import apsw
import s3fs
from common import (
    WARMUP_COMMITS,
    RequestCounter,
    file_settings,
    median,
    payloads,
    percentile,
    prepare,
    replicator_of,
    s3_settings,
    timed_commits,
)

import bottomless
from bottomless.testing.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedServer


def _summary(name: str, mode: str, commits: int, rates: list[float],
             latencies: list[float]) -> dict[str, Any]:
    return {
        "case": name, "journal_mode": mode, "commits": commits, "rounds": len(rates),
        "commits_per_s": median(rates), "round_rates": rates,
        "latency_median_ms": median(latencies) * 1000,
        "latency_p99_ms": percentile(latencies, 0.99) * 1000,
        "latency_max_ms": max(latencies) * 1000,
    }


@dataclasses.dataclass
class CommitCase:
    """One configuration of the commit-rate measurement, with its open connection."""

    key: str
    name: str
    path: str
    connect: Callable[[], apsw.Connection]
    durability: str = ""  # "", "sync" or "async": how bottomless replicates (""=not at all)
    conn: apsw.Connection | None = None
    mode: str = ""
    rates: list[float] = dataclasses.field(default_factory=list)
    sustained: list[float] = dataclasses.field(default_factory=list)
    latencies: list[float] = dataclasses.field(default_factory=list)

    def settle(self) -> float:
        """Let background work of this case finish (outside the timings); return its seconds.

        Async: wait until every commit is uploaded. Any bottomless case: let a background
        snapshot finish. So no case's leftovers take CPU from the next case's round.
        """
        t0 = time.perf_counter()
        if self.durability == "async":
            assert self.conn is not None
            bottomless.wait_durable(self.conn)
        if self.durability:
            replicator_of(self.path).wait_snapshot()
        return time.perf_counter() - t0


def commit_throughput(
    server: SeaweedServer, workdir: str, commits: int, rounds: int
) -> dict[str, Any]:
    """Commits/s of small one-row transactions for every configuration, plus async if any.

    Every case but sqlite-s3vfs keeps its connection open and the cases take turns, round by
    round, so that a change in machine load hits all of them alike. The reported rate is the
    median round's. sqlite-s3vfs (about 100 ms a commit) runs one round on its own.
    """
    s3_bucket = server.new_bucket()
    cases = [
        CommitCase("plain", "plain apsw, local WAL", os.path.join(workdir, "plain.db"),
                   functools.partial(apsw.Connection, os.path.join(workdir, "plain.db"))),
        _bottomless_case("sync_file", "bottomless sync, file backend", workdir,
                         file_settings(os.path.join(workdir, "replicas-sync-file"))),
        _bottomless_case("sync_s3", "bottomless sync, SeaweedFS", workdir,
                         s3_settings(server, s3_bucket)),
    ]
    results: dict[str, Any] = {}
    has_async = "durability" in bottomless.Settings.model_fields
    has_wait = hasattr(bottomless, "wait_durable")
    if has_async and has_wait:
        cases += [
            _bottomless_case("async_file", "bottomless async, file backend", workdir, file_settings(
                os.path.join(workdir, "replicas-async-file"), durability="async")),
            _bottomless_case("async_s3", "bottomless async, SeaweedFS", workdir, s3_settings(
                server, server.new_bucket(), durability="async")),
        ]
    else:
        why = ("bottomless.Settings has no 'durability' field (async replication not in this"
               " version)" if not has_async else "bottomless has no wait_durable()")
        for key, name in (("async_file", "bottomless async, file backend"),
                          ("async_s3", "bottomless async, SeaweedFS")):
            results[key] = {"case": name, "skipped": f"skipped: {why}"}
    try:
        for case in cases:
            case.conn = case.connect()
            case.mode = prepare(case.conn)
            timed_commits(case.conn, payloads(WARMUP_COMMITS, 1))
            case.settle()
        for i in range(rounds):
            for case in cases:
                assert case.conn is not None
                run = timed_commits(case.conn, payloads(commits, 2 + i))
                drain = case.settle()
                case.rates.append(commits / run.seconds)
                case.sustained.append(commits / (run.seconds + drain))
                case.latencies.extend(run.latencies)
        for case in cases:
            results[case.key] = _summary(case.name, case.mode, commits, case.rates,
                                         case.latencies)
            if case.durability == "async":
                assert case.conn is not None
                results[case.key]["commits_per_s_with_drain"] = median(case.sustained)
                settings = replicator_of(case.path).settings
                results[case.key].update(async_lag(case.conn, case.path, settings, commits))
    finally:
        for case in cases:
            if case.conn is not None:
                case.conn.close()
    results["sync_s3"].update(_commit_object_sizes(server, s3_bucket))
    results["s3vfs"] = s3vfs_commits(server, commits)
    order = ["plain", "sync_file", "sync_s3", "s3vfs", "async_file", "async_s3"]
    return {key: results[key] for key in order}


def _bottomless_case(
    key: str, name: str, workdir: str, settings: bottomless.Settings
) -> CommitCase:
    path = os.path.join(workdir, f"{key}.db")
    return CommitCase(key, name, path, functools.partial(bottomless.connect, path, settings),
                      durability=getattr(settings, "durability", "sync"))


def _commit_object_sizes(server: SeaweedServer, bucket: str) -> dict[str, Any]:
    sizes = [size for key, size in _objects(server, bucket) if "/commits/" in key]
    return {"commit_object_bytes_median": median(sizes), "commit_objects": len(sizes)}


def s3vfs_commits(server: SeaweedServer, commits: int) -> dict[str, Any]:
    """uktrade's sqlite-s3vfs on the same SeaweedFS, as its README uses it; one round."""
    try:
        import boto3
        import sqlite_s3vfs
    except ImportError as e:
        return {"case": "sqlite-s3vfs", "skipped": f"not installed ({e.name}):"
                " pip install -r benchmarks/requirements.txt"}
    bucket_name = server.new_bucket()
    resource = boto3.resource(
        "s3", endpoint_url=server.endpoint, aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
    )
    counter = RequestCounter()
    counter.attach(resource.meta.client)
    vfs = sqlite_s3vfs.S3VFS(bucket=resource.Bucket(bucket_name))
    try:
        conn = apsw.Connection("bench.sqlite", vfs=vfs.name)
        try:
            # WAL needs shared memory, which sqlite-s3vfs does not provide: SQLite keeps its
            # rollback journal (the journal_mode reported says which one ran)
            mode = prepare(conn)
            timed_commits(conn, payloads(WARMUP_COMMITS, 1))
            before = counter.snapshot()
            run = timed_commits(conn, payloads(commits, 2))
            counts = counter.snapshot() - before
        finally:
            conn.close()
    finally:
        vfs.unregister()
        server.drop_bucket(bucket_name)
    result = _summary("sqlite-s3vfs, SeaweedFS", mode, commits, [commits / run.seconds],
                      run.latencies)
    result["requests_per_commit"] = {op: n / commits for op, n in sorted(counts.items())}
    return result


def async_lag(
    conn: apsw.Connection, path: str, settings: bottomless.Settings, commits: int
) -> dict[str, Any]:
    """Replication lag of async commits: under full-speed commits, and after a lone commit.

    A round of its own, after the throughput rounds, because the probe's polling takes CPU.
    """
    wait = bottomless.wait_durable
    wait(conn)
    probe = LagProbe(path, settings)
    probe.start()
    run = timed_commits(conn, payloads(commits, 9))
    wait(conn)
    lags = [lag for lag in probe.finish(run.ends) if not math.isnan(lag)]
    isolated: list[float] = []
    for value in payloads(max(50, commits // 3), 3):
        conn.execute("INSERT INTO t(v) VALUES (?)", (value,))
        t1 = time.perf_counter()
        wait(conn)
        isolated.append(time.perf_counter() - t1)
    return {
        "lag_round_commits_per_s": commits / run.seconds,
        "lag_median_ms": median(lags) * 1000, "lag_p99_ms": percentile(lags, 0.99) * 1000,
        "lag_max_ms": max(lags) * 1000, "lag_polls": probe.polls,
        "lag_unproven": len(run.ends) - len(lags),
        "wait_durable_median_ms": median(isolated) * 1000,
        "wait_durable_p99_ms": percentile(isolated, 0.99) * 1000,
    }


class LagProbe(threading.Thread):
    """Watches ``pending_commits`` in ``bottomless.status`` on its own connection.

    Commits are uploaded in order, so at a poll that starts at time ``t`` and sees ``p``
    pending commits, at least ``(commits returned before t) - p`` are durable. Each commit's
    lag is the end of the first poll that proves it durable, minus the moment COMMIT returned
    (an upper bound, off by at most one poll).
    """

    def __init__(self, path: str, settings: bottomless.Settings) -> None:
        super().__init__(name="lag-probe", daemon=True)
        self.path, self.settings = path, settings
        self.samples: list[tuple[float, float, int]] = []  # poll start, poll end, pending
        self.stop = threading.Event()
        self.polls = 0

    def run(self) -> None:
        conn = bottomless.connect(self.path, self.settings)
        try:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                pending = int(bottomless.status(conn)["pending_commits"])
                self.samples.append((t0, time.perf_counter(), pending))
                time.sleep(0.001)
        finally:
            conn.close()

    def finish(self, ends: list[float]) -> list[float]:
        """Stop polling; return each commit's lag in seconds."""
        time.sleep(0.01)  # one more poll after the final drain
        self.stop.set()
        self.join()
        self.polls = len(self.samples)
        lags: list[float] = []
        cursor = 0
        for i, end in enumerate(ends):
            while cursor < len(self.samples):
                start, stop, pending = self.samples[cursor]
                returned = bisect.bisect_left(ends, start)
                if start >= end and returned - pending >= i + 1:
                    lags.append(stop - end)
                    break
                cursor += 1
            else:
                lags.append(math.nan)
        return lags


def put_floor(server: SeaweedServer, size: int, repeats: int) -> dict[str, Any]:
    """Median time of a raw PUT of ``size`` bytes (the floor of a synchronous commit).

    Timed with s3fs (``call_s3``, the floor as the project's targets define it) and with a plain
    botocore client in the calling thread (what bottomless now sends commits with, so the
    stricter floor), each also with ``If-None-Match: *``, the create-only write bottomless uses,
    to show what the condition itself costs on this server. The kinds take turns.
    """
    bucket = server.new_bucket()
    fs = s3fs.S3FileSystem(
        endpoint_url=server.endpoint, key=ACCESS_KEY, secret=SECRET_KEY,
        client_kwargs={"region_name": "us-east-1"}, skip_instance_cache=True,
    )
    client: Any = server.client()
    rng = random.Random(4)
    kinds = ("plain", "conditional", "botocore", "botocore_conditional")
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    try:
        for i in range(repeats + 10):
            for kind in kinds:
                body = rng.randbytes(size)
                extra = {"IfNoneMatch": "*"} if kind.endswith("conditional") else {}
                key = f"{kind}/{i:08d}"
                t0 = time.perf_counter()
                if kind.startswith("botocore"):
                    client.put_object(Bucket=bucket, Key=key, Body=body, **extra)
                else:
                    fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body, **extra)
                if i >= 10:  # the first few open connections
                    times[kind].append(time.perf_counter() - t0)
    finally:
        s3fs.S3FileSystem.close_session(fs.loop, fs.s3)
        server.drop_bucket(bucket)
    result: dict[str, Any] = {"bytes": size, "repeats": repeats}
    for kind in kinds:
        name = "put" if kind == "plain" else f"{kind}_put"
        result[f"{name}_median_ms"] = median(times[kind]) * 1000
        result[f"{name}_p99_ms"] = percentile(times[kind], 0.99) * 1000
    return result


# ------------------------------------------------------------------ 3: requests per commit


def requests_per_commit(
    server: SeaweedServer, workdir: str, commits: int, snapshot_every: int
) -> dict[str, Any]:
    """S3 operations per commit on the commit path, and amortized over a snapshot interval."""
    path = os.path.join(workdir, "requests.db")
    settings = s3_settings(server, server.new_bucket(), snapshot_interval_commits=snapshot_every)
    counter = RequestCounter()
    conn = bottomless.connect(path, settings)
    try:
        store = replicator_of(path).counted_store.inner  # the S3 store under the counter
        counter.attach(store.fs.s3)  # reads, listings, lease renewals (s3fs)
        counter.attach(store.client)  # create-only writes: commits, snapshots (botocore)
        opened = counter.snapshot()
        prepare(conn)  # two commits: journal mode and the table
        values = payloads(snapshot_every, 5)
        timed_commits(conn, values[: WARMUP_COMMITS - 2])
        before = counter.snapshot()
        steady = min(commits, snapshot_every - WARMUP_COMMITS - 10)
        timed_commits(conn, values[WARMUP_COMMITS - 2 : WARMUP_COMMITS - 2 + steady])
        steady_counts = counter.snapshot() - before
        timed_commits(conn, values[WARMUP_COMMITS - 2 + steady : snapshot_every])
        replicator_of(path).wait_snapshot()
        interval_counts = counter.snapshot() - opened
        snapshots_taken = len(
            [k for k, _ in _objects(server, settings.bucket) if "/snapshots/" in k]
        ) - 1
    finally:
        conn.close()
    return {
        "commit_path": {"commits": steady,
                        "per_commit": {k: v / steady for k, v in sorted(steady_counts.items())}},
        "amortized": {
            "commits": snapshot_every, "snapshots_taken": snapshots_taken,
            "per_commit": {k: v / snapshot_every for k, v in sorted(interval_counts.items())},
        },
    }


def _objects(server: SeaweedServer, bucket: str) -> list[tuple[str, int]]:
    """(key, size) of every object in ``bucket``."""
    client = server.client()
    found: list[tuple[str, int]] = []
    paginator = client.get_paginator("list_objects_v2")  # type: ignore[attr-defined]
    for page in paginator.paginate(Bucket=bucket):
        found.extend((o["Key"], o["Size"]) for o in page.get("Contents", []))
    return found

"""Litestream v0.3.13 side by side with bottomless, rows 1-3: writer cost, lag, requests.

Each function returns a JSON-ready dict; ``measure_litestream_data`` has rows 4-6.
``benchmarks/README.md`` and ``docs/benchmarks.md`` say how each is done; nothing here asserts
on timings.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import apsw
from common import (
    WARMUP_COMMITS,
    InheritVFS,
    median,
    payloads,
    percentile,
    replicator_of,
    s3_settings,
)
from litestream_tool import (
    LitestreamDb,
    Segment,
    WalPosition,
    covering_segment,
    prepare_writer,
)
from s3proxy import S3Proxy, count_by_operation, price

import bottomless
from bottomless import format as fmt
from bottomless.testing.seaweed import SeaweedServer

HOURS_PER_MONTH = 730


def _summary(name: str, commits: int, rates: list[float],
             latencies: list[float]) -> dict[str, Any]:
    return {"case": name, "commits": commits, "rounds": len(rates),
            "commits_per_s": median(rates), "round_rates": rates,
            "latency_median_ms": median(latencies) * 1000,
            "latency_p99_ms": percentile(latencies, 0.99) * 1000,
            "latency_max_ms": max(latencies) * 1000}


# ------------------------------------------------------------------ 1: writer cost


@dataclasses.dataclass
class _Case:
    key: str
    name: str
    conn: apsw.Connection
    settle: Callable[[], float]
    rates: list[float] = dataclasses.field(default_factory=list)
    latencies: list[float] = dataclasses.field(default_factory=list)


def writer_cost(server: SeaweedServer, workdir: str, binary: str, commits: int,
                rounds: int) -> dict[str, Any]:
    """Commits/s of one-row commits: plain, plain under Litestream, plain through an apsw VFS
    that overrides nothing (the floor of any Python VFS, bottomless's included), bottomless
    async and sync.

    The five connections stay open and take turns round by round, a different one first in
    each round; after its turn each case settles outside the timings (Litestream and async
    bottomless: everything uploaded), so no case's leftovers slow the next one.
    """
    paths = {k: os.path.join(workdir, f"writer-{k}.db")
             for k in ("plain", "ls", "vfs", "async", "sync")}

    def drained(conn: apsw.Connection, path: str) -> Callable[[], float]:
        def settle() -> float:
            t0 = time.perf_counter()
            bottomless.wait_durable(conn)
            replicator_of(path).wait_snapshot()
            return time.perf_counter() - t0
        return settle

    inherit_vfs = InheritVFS("writer-cost-inherit")
    plain = apsw.Connection(paths["plain"])
    through_vfs = apsw.Connection(paths["vfs"], vfs=inherit_vfs.name)
    opened = [plain, through_vfs]
    ls: LitestreamDb | None = None
    try:
        prepare_writer(plain)
        prepare_writer(through_vfs)
        ls = LitestreamDb(binary, paths["ls"], server.endpoint, server.new_bucket())
        cases = [_Case("plain", "plain apsw, WAL", plain, lambda: 0.0),
                 _Case("litestream", "plain apsw + litestream replicate (1 s)", ls.conn,
                       ls.settle),
                 _Case("vfs", "plain apsw through a do-nothing Python VFS (no replication)",
                       through_vfs, lambda: 0.0)]
        for mode in ("async", "sync"):
            conn = bottomless.connect(paths[mode], s3_settings(
                server, server.new_bucket(), durability=mode))
            opened.append(conn)
            prepare_writer(conn)
            cases.append(_Case(mode, f"bottomless {mode}", conn, drained(conn, paths[mode])))
        for case in cases:
            insert_timed(case.conn, payloads(WARMUP_COMMITS, 21))
            case.settle()
        for i in range(rounds):
            for case in cases[i % len(cases):] + cases[:i % len(cases)]:  # each leads in turn
                seconds, latencies = insert_timed(case.conn, payloads(commits, 22 + i))
                case.rates.append(commits / seconds)
                case.latencies.extend(latencies)
                case.settle()
    finally:
        for conn in opened:
            conn.close()
        if ls is not None:
            ls.close()
    return {case.key: _summary(case.name, commits, case.rates, case.latencies)
            for case in cases}


def insert_timed(conn: apsw.Connection, values: list[str]) -> tuple[float, list[float]]:
    """One autocommit INSERT per value: (total seconds, each commit's seconds)."""
    clock = time.perf_counter
    latencies = []
    started = clock()
    for value in values:
        t0 = clock()
        conn.execute("INSERT INTO t(v) VALUES (?)", (value,))
        latencies.append(clock() - t0)
    return clock() - started, latencies


# ------------------------------------------------------------------ 2-3: lag and requests


def lag_and_requests(server: SeaweedServer, workdir: str, binary: str, active_s: float,
                     idle_s: float, rate: float = 10.0) -> dict[str, Any]:
    """Replication lag and S3 requests of each tool at ``rate`` commits/s, then idle.

    Litestream, bottomless async and bottomless sync each write their own database and bucket,
    side by side in the same windows, through one recording proxy in front of SeaweedFS.
    """
    with S3Proxy(server.endpoint) as proxy:
        buckets = {k: server.new_bucket() for k in ("litestream", "async", "sync")}
        ls = LitestreamDb(binary, os.path.join(workdir, "lag-ls.db"), proxy.endpoint,
                          buckets["litestream"])
        conns: dict[str, apsw.Connection] = {}
        try:
            for mode in ("async", "sync"):
                conns[mode] = bottomless.connect(
                    os.path.join(workdir, f"lag-{mode}.db"),
                    s3_settings(server, buckets[mode], durability=mode, endpoint=proxy.endpoint))
                prepare_writer(conns[mode])
            for conn in (ls.conn, *conns.values()):
                insert_timed(conn, payloads(WARMUP_COMMITS, 31))
            bottomless.wait_durable(conns["async"])
            ls.settle()
            count = max(1, int(active_s * rate))
            values = payloads(count, 32)
            t0 = time.perf_counter() + 0.5
            ends: dict[str, list[float]] = {}
            places: list[WalPosition] = []

            def write(key: str, conn: apsw.Connection) -> None:
                ends[key] = []
                for k, value in enumerate(values):
                    time.sleep(max(0.0, t0 + k / rate - time.perf_counter()))
                    conn.execute("INSERT INTO t(v) VALUES (?)", (value,))
                    ends[key].append(time.perf_counter())
                    if key == "litestream":
                        places.append(ls.where())

            threads = [threading.Thread(target=write, args=(k, c)) for k, c in
                       (("litestream", ls.conn), *conns.items())]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            active_end = t0 + active_s
            bottomless.wait_durable(conns["async"])
            ls.settle()
            idle_start = max(time.perf_counter(), active_end + 2.0)
            time.sleep(max(0.0, idle_start + idle_s - time.perf_counter()))
            segments = ls.process.segments()
        finally:
            for conn in conns.values():
                conn.close()
            ls.close()
        put_done = {r.key: r.finished for r in reversed(proxy.requests())
                    if r.method == "PUT" and r.status == 200}
        lags = {"litestream": _litestream_lags(ends["litestream"], places, ls.shadow.known,
                                               segments, put_done, ls.replica_path)}
        for mode in ("async", "sync"):
            lags[mode] = _bottomless_lags(server, buckets[mode], values, ends[mode], put_done)
        result: dict[str, Any] = {"rate": rate, "active_s": active_s, "idle_s": idle_s,
                                  "commits": count}
        for key, bucket in buckets.items():
            active = count_by_operation(proxy.requests(bucket, t0, active_end))
            idle = count_by_operation(proxy.requests(bucket, idle_start, idle_start + idle_s))
            result[key] = {"lag": lags[key],
                           "active": _per_hour(active, active_s),
                           "idle": _per_hour(idle, idle_s)}
    for bucket in buckets.values():
        server.drop_bucket(bucket)
    return result


def _per_hour(counts: dict[str, int], seconds: float) -> dict[str, Any]:
    hourly = {op: n * 3600 / seconds for op, n in counts.items()}
    dollars = price(hourly)
    return {"counted": counts, "seconds": seconds, "per_hour": hourly,
            "dollars_per_hour": dollars, "dollars_per_month": dollars * HOURS_PER_MONTH}


def _lag_summary(lags: list[float | None]) -> dict[str, Any]:
    proven = [lag for lag in lags if lag is not None]
    if not proven:
        return {"commits": len(lags), "unproven": len(lags)}
    return {"commits": len(lags), "unproven": len(lags) - len(proven),
            "p50_ms": percentile(proven, 0.5) * 1000, "p99_ms": percentile(proven, 0.99) * 1000,
            "max_ms": max(proven) * 1000, "min_ms": min(proven) * 1000}


def _litestream_lags(ends: list[float], positions: list[WalPosition],
                     indexes: dict[bytes, tuple[str, int]], segments: list[Segment],
                     put_done: dict[str, float], replica_path: str) -> dict[str, Any]:
    """Each commit's end offset in its WAL → the segment object holding it → its PUT's end."""
    lags: list[float | None] = []
    for end, position in zip(ends, positions, strict=True):
        place = indexes.get(position.salt)
        segment = None if place is None else covering_segment(segments, *place, position.end)
        done = None if segment is None else put_done.get(segment.key(replica_path))
        lags.append(None if done is None else done - end)
    return _lag_summary(lags)


def _bottomless_lags(server: SeaweedServer, bucket: str, values: list[str], ends: list[float],
                     put_done: dict[str, float]) -> dict[str, Any]:
    """Each commit → the first commit object (in upload order) whose pages hold its row.

    Async mode may put several transactions in one object, so the objects are read back
    (straight from SeaweedFS, not through the proxy) and searched for each row's text.
    """
    client = server.client()
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [o["Key"] for o in page.get("Contents", []) if fmt.is_commit_key(o["Key"])]
    keys.sort(key=lambda k: (fmt.generation_of_key(k), fmt.seq_from_key(k) or 0))
    durable: list[float | None] = [None] * len(values)
    cursor = 0
    for key in keys:
        batch = fmt.decode_batch(client.get_object(Bucket=bucket, Key=key)["Body"].read(), key)
        pages = b"".join(batch.pages.values())
        while cursor < len(values) and values[cursor].encode() in pages:
            durable[cursor] = put_done.get(key)
            cursor += 1
    return _lag_summary([None if d is None else d - e for d, e in zip(durable, ends,
                                                                       strict=True)])

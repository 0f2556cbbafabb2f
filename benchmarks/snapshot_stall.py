"""Section 9: sync commit latency while a background snapshot is built, thread against process.

A bulk transaction of ``bulk_mb`` MiB makes a snapshot due (``snapshot_interval_mb``); the
snapshot reads that commit back from the bucket and uploads new parts. Meanwhile one-row
sync commits are timed, for as long as the snapshot runs, then as many again once it is done.
The floor is a raw botocore PUT of a commit object's size, its p99 timed in the same rounds.
Rounds take turns between ``snapshot_worker="thread"`` and ``"process"``.

    .venv/bin/python benchmarks/snapshot_stall.py [--quick] [--worker thread|process]

Target (issue #15): p99 of the commits during a snapshot <= 2x the raw PUT's p99.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import common
from common import median, payloads, percentile, prepare, replicator_of, timed_commits
from measure_commits import put_floor

import bottomless
from bottomless.testing.seaweed import SeaweedServer, start_seaweed

HERE = os.path.dirname(os.path.abspath(__file__))
FULL = {"bulk_mb": 64, "rounds": 3, "put_repeats": 300}
QUICK = {"bulk_mb": 16, "rounds": 1, "put_repeats": 50}
WORKERS = ("thread", "process")


def _bulk(conn: Any, mb: int) -> None:
    """One transaction of ``mb`` MiB of fresh rows (incompressible, so the parts are real)."""
    with conn:
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " INSERT INTO big(v) SELECT randomblob(4000) FROM n", (mb * 256,))


def _one_round(server: SeaweedServer, workdir: str, worker: str, bulk_mb: int,
               round_no: int) -> dict[str, Any]:
    """Commits during, then after, one background snapshot with ``worker``."""
    path = os.path.join(workdir, f"stall-{worker}-{round_no}.db")
    settings = common.s3_settings(
        server, server.new_bucket(), snapshot_worker=worker, snapshot_interval_commits=0,
        snapshot_interval_mb=max(1, bulk_mb // 2), lease_ttl=0,
    )
    conn = bottomless.connect(path, settings)
    try:
        prepare(conn)
        conn.execute("CREATE TABLE big(id INTEGER PRIMARY KEY, v BLOB)")
        snapshots = replicator_of(path).snapshots
        values = iter(payloads(100_000, round_no))
        _bulk(conn, bulk_mb)  # the snapshot starts as this commit is recorded
        started = time.perf_counter()
        during: list[float] = []
        while snapshots.running:
            during.extend(timed_commits(conn, [next(values)]).latencies)
        snapshot_s = time.perf_counter() - started
        after = timed_commits(conn, [next(values) for _ in range(max(50, len(during)))])
        # the same again, timing raw PUTs instead of commits: what the machine and the
        # server give anyone while a snapshot is built
        _bulk(conn, bulk_mb)
        raw = _raw_puts_while(server, lambda: snapshots.running)
        return {"during": during, "after": after.latencies, "snapshot_s": snapshot_s,
                "raw_during": raw, "error": bottomless.status(conn)["last_error"]}
    finally:
        conn.close()


def _raw_puts_while(server: SeaweedServer, busy: Any) -> list[float]:
    """Seconds of each raw botocore create-only PUT of 200 bytes, back to back, while
    ``busy()``."""
    client: Any = server.client()
    bucket = server.new_bucket()
    body = os.urandom(200)
    times: list[float] = []
    while busy():
        t0 = time.perf_counter()
        client.put_object(Bucket=bucket, Key=f"raw/{len(times):08d}", Body=body,
                          IfNoneMatch="*")
        times.append(time.perf_counter() - t0)
    return times


def measure(server: SeaweedServer, workdir: str, sizes: dict[str, Any],
            step: Any = None, workers: tuple[str, ...] = WORKERS) -> dict[str, Any]:
    """The workers' rounds, taking turns, and the raw PUT floor."""
    runs: dict[str, list[dict[str, Any]]] = {worker: [] for worker in workers}
    for round_no in range(sizes["rounds"]):
        for worker in workers:
            if step is not None:
                step(f"9. snapshot stall, {worker} worker, round {round_no + 1}")
            runs[worker].append(_one_round(server, workdir, worker, sizes["bulk_mb"], round_no))
    put = put_floor(server, 200, sizes["put_repeats"])
    result: dict[str, Any] = {"bulk_mb": sizes["bulk_mb"], "rounds": sizes["rounds"],
                              "put_p99_ms": put["botocore_conditional_put_p99_ms"],
                              "put_median_ms": put["botocore_conditional_put_median_ms"],
                              "load": [round(x, 2) for x in os.getloadavg()], "workers": {}}
    for worker, rounds in runs.items():
        during = [x for r in rounds for x in r["during"]]
        after = [x for r in rounds for x in r["after"]]
        result["workers"][worker] = {
            "commits_during": len(during),
            "snapshot_s": median(r["snapshot_s"] for r in rounds),
            "during_median_ms": median(during) * 1000 if during else None,
            "during_p99_ms": percentile(during, 0.99) * 1000 if during else None,
            "during_max_ms": max(during) * 1000 if during else None,
            "after_median_ms": median(after) * 1000,
            "after_p99_ms": percentile(after, 0.99) * 1000,
            "errors": [r["error"] for r in rounds if r["error"]],
        }
        raw = [x for r in rounds for x in r["raw_during"]]
        result["workers"][worker].update({
            "raw_puts_during": len(raw),
            "raw_during_median_ms": median(raw) * 1000 if raw else None,
            "raw_during_p99_ms": percentile(raw, 0.99) * 1000 if raw else None,
        })
    return result


def target(result: dict[str, Any]) -> tuple[float, bool, str]:
    """p99 during a snapshot (the default, process worker) ÷ the raw PUT's p99: <= 2."""
    worker = result["workers"]["process"]
    ratio = float(worker["during_p99_ms"]) / result["put_p99_ms"]
    thread = result["workers"]["thread"]["during_p99_ms"] / result["put_p99_ms"]
    raw = worker.get("raw_during_p99_ms")
    vs_raw = "" if raw is None else (
        f"; {worker['during_p99_ms'] / raw:.2f}x a raw PUT's p99 during the same kind of snapshot"
    )
    return ratio, ratio <= 2, f"thread worker: {thread:.2f}x{vs_raw}"


def rows(result: dict[str, Any]) -> list[list[str]]:
    """Table rows: one per worker, then the floor."""
    out = []
    for worker, w in result["workers"].items():
        p99 = w["during_p99_ms"]
        out.append([
            f"snapshot_worker={worker}", f"{w['snapshot_s']:.2f}", str(w["commits_during"]),
            f"{w['during_median_ms']:.2f}", f"{p99:.2f}", f"{w['during_max_ms']:.1f}",
            f"{w['after_median_ms']:.2f}", f"{w['after_p99_ms']:.2f}",
            f"{p99 / result['put_p99_ms']:.2f}x",
        ])
    for worker, w in result["workers"].items():
        raw = w.get("raw_during_p99_ms")
        if raw is not None:
            out.append([
                f"raw botocore PUT during a snapshot ({worker} worker)", "-",
                f"{w['raw_puts_during']} PUTs", f"{w['raw_during_median_ms']:.2f}",
                f"{raw:.2f}", "-", "-", "-", f"{raw / result['put_p99_ms']:.2f}x",
            ])
    out.append(["raw botocore PUT, create-only (floor)", "-", "-",
                f"{result['put_median_ms']:.2f}", f"{result['put_p99_ms']:.2f}", "-", "-", "-",
                "1.00x"])
    return out


HEADER = ["case", "snapshot s", "commits during", "median ms", "p99 ms", "max ms",
          "after: median ms", "after: p99 ms", "p99 vs PUT p99"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small round")
    parser.add_argument("--worker", choices=WORKERS, default=None,
                        help="only this snapshot_worker (to profile it, e.g. under py-spy)")
    parser.add_argument("--output", default=os.path.join(HERE, "results-snapshot-stall.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    workdir = tempfile.mkdtemp(prefix="bottomless-bench-stall-")
    server = start_seaweed()
    try:
        result = measure(server, workdir, QUICK if args.quick else FULL,
                         lambda label: print(label, file=sys.stderr, flush=True),
                         (args.worker,) if args.worker else WORKERS)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    result["machine"] = common.machine()
    for row in [HEADER, *rows(result)]:
        print(" | ".join(row))
    if not args.worker:
        ratio, ok, note = target(result)
        print(f"target p99 <= 2x PUT p99: {ratio:.2f}x ({'MET' if ok else 'NOT MET'}; {note})")
    with open(args.output, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

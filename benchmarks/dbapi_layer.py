"""The DB-API layer alone: bottomless.dbapi against stdlib sqlite3 and raw apsw.

    python benchmarks/dbapi_layer.py            # full sizes (about a minute on 2 cores)
    python benchmarks/dbapi_layer.py --quick    # a smoke run

All three drive the same kind of local file (WAL, synchronous=NORMAL) without replication:
bottomless.dbapi opens it with an explicit ``vfs=unix`` URI, so only the layer is measured.
Rounds are interleaved and the median of each is kept. It prints, per workload, the time of
each driver and the ratio of bottomless.dbapi to sqlite3 (target: at most 1.15x). A
measurement, not a test: nothing fails when the target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import apsw

import bottomless.dbapi

TARGET = 1.15


def _open(driver: str, path: str) -> Any:
    if driver == "sqlite3":
        conn: Any = sqlite3.connect(path)
    elif driver == "bottomless.dbapi":
        conn = bottomless.dbapi.connect(f"file:{path}?vfs=unix", uri=True)
    else:
        conn = apsw.Connection(path)
    conn.execute("PRAGMA journal_mode=wal").fetchall()
    conn.execute("PRAGMA synchronous=normal")
    return conn


def _dbapi_commit(conn: Any) -> None:
    conn.commit()


def executemany(conn: Any, rows: int, apsw_driver: bool) -> None:
    data = [(i, f"name {i}", i * 0.5) for i in range(rows)]
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, score REAL)")
    if apsw_driver:
        with conn:
            conn.executemany("INSERT INTO t VALUES (?, ?, ?)", data)
    else:
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)", data)
        conn.commit()


def fetchall(conn: Any, rows: int, apsw_driver: bool) -> None:
    got = conn.execute("SELECT id, name, score FROM t").fetchall()
    assert len(got) == rows


def point_selects(conn: Any, count: int, apsw_driver: bool) -> None:
    cursor = conn.cursor()
    for i in range(count):
        cursor.execute("SELECT name FROM t WHERE id = ?", (i,))
        cursor.fetchone() if not apsw_driver else next(cursor)


def commits(conn: Any, count: int, apsw_driver: bool) -> None:
    cursor = conn.cursor()
    for i in range(count):
        cursor.execute("INSERT INTO c(v) VALUES (?)", (i,))
        if not apsw_driver:
            conn.commit()


WORKLOADS: list[tuple[str, str, Callable[[Any, int, bool], None]]] = [
    ("executemany of {n:,} rows", "rows", executemany),
    ("fetchall of {n:,} rows", "rows", fetchall),
    ("{n:,} point selects", "selects", point_selects),
    ("{n:,} one-row commits", "commits", commits),
]
DRIVERS = ["sqlite3", "bottomless.dbapi", "apsw"]


def run(sizes: dict[str, int], rounds: int, workdir: str) -> dict[str, dict[str, float]]:
    """Median seconds per workload and driver, rounds interleaved."""
    times: dict[str, dict[str, list[float]]] = {}
    for round_number in range(rounds):
        for driver in DRIVERS if round_number % 2 == 0 else reversed(DRIVERS):
            path = os.path.join(workdir, f"{driver}-{round_number}.db")
            conn = _open(driver, path)
            conn.execute("CREATE TABLE c(v INTEGER)")
            if driver != "apsw":
                conn.commit()
            for label, size_key, workload in WORKLOADS:
                n = sizes[size_key]
                start = time.perf_counter()
                workload(conn, n, driver == "apsw")
                elapsed = time.perf_counter() - start
                times.setdefault(label.format(n=n), {}).setdefault(driver, []).append(elapsed)
            conn.close()
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.remove(path + suffix)
    return {label: {d: statistics.median(v) for d, v in by.items()} for label, by in times.items()}


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table, and write the JSON next to the other results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, two rounds")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 7; 2 quick)")
    parser.add_argument("--output", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    sizes = ({"rows": 10_000, "selects": 2_000, "commits": 200} if args.quick
             else {"rows": 100_000, "selects": 10_000, "commits": 1_000})
    rounds = args.rounds or (2 if args.quick else 7)
    with tempfile.TemporaryDirectory(prefix="dbapi-bench-") as workdir:
        medians = run(sizes, rounds, workdir)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python"
          f" {platform.python_version()}, SQLite {apsw.sqlite_lib_version()} (apsw) /"
          f" {sqlite3.sqlite_version} (sqlite3); median of {rounds} interleaved rounds")
    print(f"{'workload':<28} {'sqlite3':>10} {'dbapi':>10} {'apsw':>10} {'dbapi/sqlite3':>14}"
          "  target")
    report: dict[str, Any] = {}
    for label, by in medians.items():
        ratio = by["bottomless.dbapi"] / by["sqlite3"]
        verdict = "met" if ratio <= TARGET else "NOT met"
        print(f"{label:<28} {by['sqlite3'] * 1e3:>8.1f}ms {by['bottomless.dbapi'] * 1e3:>8.1f}ms"
              f" {by['apsw'] * 1e3:>8.1f}ms {ratio:>13.2f}x  <= {TARGET}x {verdict}")
        report[label] = {**by, "ratio": ratio}
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(report, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a read through bottomless spends its time, against plain apsw (issue #15).

Three ways to open the same local file, taking turns within each round:

- ``plain``: apsw on SQLite's default VFS, no Python anywhere on the read path;
- ``inherit``: an apsw VFS that inherits the default VFS and overrides nothing, the floor of any
  apsw VFS written in Python: apsw puts a C trampoline in every ``sqlite3_io_methods`` slot,
  and each one takes the GIL and calls the file's Python-visible method, inherited or not;
- ``bottomless``: ``bottomless.connect`` on the file backend (reads never touch the store).

The three connections stay open side by side on one file (WAL or rollback journal) and take
turns on the same unit of work, round after round, in rotating order; a ratio is the median of
the per-round ratios, so a change in machine load hits all three alike. Times are process CPU
time (``time.process_time``). Units: 500 random point lookups by rowid, one autocommit
statement each (``lookups``); the same inside one transaction (``lookups-txn``: page reads
without the per-transaction calls); a range scan over 5 % of the table (``scan``).

Page-cache settings: ``small`` (100 pages), ``default`` (SQLite's -2000, 2 MiB: cold-ish on a
64 MiB table), ``fits`` (1 GiB, loaded first: no page is read again, only per-transaction calls
remain) and ``mmap`` (default cache plus ``PRAGMA mmap_size=1GiB``: plain apsw then reads the
main file through memory mapping; an apsw VFS cannot, its files have no ``xFetch``).

A counting pass (untimed, same unit and cache) records the VFS calls each unit makes, by file
and method; (inherit - plain) / calls is then the cost of one apsw trampoline.

Run from the repository root: ``.venv/bin/python benchmarks/read_path.py`` (``--quick`` for a
smoke run). It prints the load average before and after: on a shared machine compare only
figures from the same run.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import apsw
from common import MB, InheritVFS, file_settings, median

import bottomless

ROW_BLOB = 100
ROW_BYTES_ON_DISK = 118  # randomblob(100) plus record and cell overhead, at page size 4096
VARIANTS = ("plain", "inherit", "bottomless")
CACHES = {"small": "PRAGMA cache_size=100", "default": "PRAGMA cache_size=-2000",
          "fits": "PRAGMA cache_size=-1048576",
          "mmap": "PRAGMA cache_size=-2000; PRAGMA mmap_size=1073741824"}



class _CountingFile(apsw.VFSFile):
    def __init__(self, counts: collections.Counter[str], name: Any, flags: list[int]) -> None:
        super().__init__("", name, flags)
        self.counts = counts
        kind = flags[0]
        self.kind = ("db" if kind & apsw.SQLITE_OPEN_MAIN_DB
                     else "wal" if kind & apsw.SQLITE_OPEN_WAL else "other")


def _counted(method: str, owner: type) -> Callable[..., Any]:
    base = getattr(owner, method)

    def call(self: Any, *args: Any) -> Any:
        key = f"{self.kind}.{method}" if owner is apsw.VFSFile else f"vfs.{method}"
        self.counts[key] += 1
        return base(self, *args)
    return call


for _m in ("xRead", "xWrite", "xTruncate", "xSync", "xFileSize", "xLock", "xUnlock",
           "xCheckReservedLock", "xFileControl", "xSectorSize", "xDeviceCharacteristics"):
    setattr(_CountingFile, _m, _counted(_m, apsw.VFSFile))


class CountingVFS(apsw.VFS):
    """Counts every Python-visible call, by file kind and method (for the per-call cost)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        super().__init__("read-path-counting", "")

    def xOpen(self, name: Any, flags: list[int]) -> apsw.VFSFile:  # noqa: N802
        return _CountingFile(self.counts, name, flags)


for _m in ("xAccess", "xFullPathname", "xDelete", "xCurrentTimeInt64", "xRandomness"):
    setattr(CountingVFS, _m, _counted(_m, apsw.VFS))


def build(path: str, rows: int, journal_mode: str) -> None:
    """A table of ``rows`` rows of 100 random bytes, in ``journal_mode``."""
    conn = apsw.Connection(path)
    conn.execute(f"PRAGMA journal_mode={journal_mode}")
    conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, v BLOB)")
    conn.execute(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?)"
        " INSERT INTO items(v) SELECT randomblob(?) FROM c", (rows, ROW_BLOB),
    )
    conn.close()


def workloads(rows: int, batch: int) -> dict[str, Callable[[apsw.Connection, random.Random], None]]:
    """One unit of each workload; ``rng`` picks its rows."""
    span = rows // 20

    def point(conn: apsw.Connection, rng: random.Random) -> None:
        cursor = conn.cursor()
        for _ in range(batch):
            cursor.execute("SELECT v FROM items WHERE id = ?", (rng.randint(1, rows),)).fetchall()

    def point_txn(conn: apsw.Connection, rng: random.Random) -> None:
        conn.execute("BEGIN")
        point(conn, rng)
        conn.execute("COMMIT")

    def scan(conn: apsw.Connection, rng: random.Random) -> None:
        low = rng.randint(1, rows - span)
        conn.execute("SELECT count(*), sum(length(v)) FROM items WHERE id BETWEEN ? AND ?",
                     (low, low + span)).fetchall()

    return {"lookups": point, "lookups-txn": point_txn, "scan": scan}


def open_all(openers: dict[str, Callable[[], apsw.Connection]], cache: str
             ) -> dict[str, apsw.Connection]:
    conns = {}
    for name, opener in openers.items():
        conn = opener()
        conn.execute(CACHES[cache])
        conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()
        if cache == "fits":  # load every page into the page cache first
            conn.execute("SELECT count(*), sum(length(v)) FROM items").fetchall()
        conns[name] = conn
    return conns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=64, help="database size in MiB")
    parser.add_argument("--batch", type=int, default=500, help="point lookups per unit")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--modes", default="wal,delete")
    parser.add_argument("--caches", default="small,default,fits,mmap")
    parser.add_argument("--workdir", default=None,
                        help="build (or reuse) the databases here and keep them; by default a"
                        " temporary directory, removed at the end")
    parser.add_argument("--quick", action="store_true", help="16 MiB, 30 rounds")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.mb, args.rounds = 16, 30
    workdir = args.workdir or tempfile.mkdtemp(prefix="read-path-")
    os.makedirs(workdir, exist_ok=True)
    try:
        measure(args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def measure(args: argparse.Namespace, workdir: str) -> None:
    """Every mode x cache case, printed as it completes."""
    rows = args.mb * MB // ROW_BYTES_ON_DISK
    loads = [os.getloadavg()]
    print(f"load average at start {loads[0][0]:.2f} {loads[0][1]:.2f} {loads[0][2]:.2f}"
          f" on {os.cpu_count()} cores; apsw {apsw.apsw_version()}; {rows:,} rows,"
          f" {args.rounds} rounds", flush=True)

    inherit_vfs = InheritVFS("read-path-inherit")  # noqa: F841  (registered while referenced)
    counting = CountingVFS()
    tasks = workloads(rows, args.batch)
    results: dict[str, Any] = {"rows": rows, "batch": args.batch, "rounds": args.rounds,
                               "cases": {}}
    for mode in args.modes.split(","):
        path = os.path.join(workdir, f"reads-{mode}-{args.mb}.db")
        if not os.path.exists(path):
            build(path, rows, mode)
        settings = file_settings(os.path.join(workdir, f"replicas-{mode}-{args.mb}"))
        bottomless.connect(path, settings).close()  # initial upload, outside the timings
        openers: dict[str, Callable[[], apsw.Connection]] = {
            "plain": functools.partial(apsw.Connection, path),
            "inherit": functools.partial(apsw.Connection, path, vfs="read-path-inherit"),
            "bottomless": functools.partial(bottomless.connect, path, settings),
        }
        for cache in args.caches.split(","):
            counting_opener = functools.partial(apsw.Connection, path, vfs="read-path-counting")
            counted = open_all({"counting": counting_opener}, cache)["counting"]
            calls: dict[str, dict[str, float]] = {}
            for name, task in tasks.items():
                task(counted, random.Random(1))  # warm up as the timed connections are
                counting.counts.clear()
                task(counted, random.Random(2))
                calls[name] = dict(counting.counts)
            counted.close()
            conns = open_all(openers, cache)
            rng = random.Random(9)
            for task in tasks.values():  # one unit each to settle the page caches
                for conn in conns.values():
                    task(conn, random.Random(3))
            timings: dict[str, dict[str, list[float]]] = {
                name: {v: [] for v in VARIANTS} for name in tasks}
            for round_no in range(args.rounds):
                order = VARIANTS[round_no % 3:] + VARIANTS[:round_no % 3]
                for name, task in tasks.items():
                    seed = rng.random()
                    for variant in order:
                        t0 = time.process_time()
                        task(conns[variant], random.Random(seed))
                        timings[name][variant].append(time.process_time() - t0)
            for conn in conns.values():
                conn.close()
            for name in tasks:
                runs = timings[name]
                med = {v: median(runs[v]) for v in VARIANTS}

                def paired(a: str, b: str, runs: dict[str, list[float]] = runs) -> float:
                    return median(x / y for x, y in zip(runs[a], runs[b], strict=True))

                n_calls = sum(calls[name].values())
                case = {
                    "cpu_seconds_per_unit": med,
                    "inherit/plain": paired("inherit", "plain"),
                    "bottomless/plain": paired("bottomless", "plain"),
                    "bottomless/inherit": paired("bottomless", "inherit"),
                    "vfs_calls_per_unit": calls[name],
                    "ns_per_call": ((med["inherit"] - med["plain"]) / n_calls * 1e9
                                    if n_calls else None),
                }
                results["cases"][f"{mode}/{cache}/{name}"] = case
                print(f"{mode:6} {cache:7} {name:11}  plain {med['plain'] * 1e3:6.2f} ms/unit"
                      f"  inherit {case['inherit/plain']:.3f}x"
                      f"  bottomless {case['bottomless/plain']:.3f}x"
                      f"  (b/i {case['bottomless/inherit']:.3f})"
                      f"  {n_calls:>5} calls"
                      + (f" ~{case['ns_per_call']:.0f} ns each" if n_calls else ""),
                      flush=True)
                print("        calls/unit: " + ", ".join(
                    f"{k} {v}" for k, v in sorted(calls[name].items())), flush=True)
    loads.append(os.getloadavg())
    results["loadavg"] = loads
    print(f"load average at end {loads[1][0]:.2f} {loads[1][1]:.2f} {loads[1][2]:.2f}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1)


if __name__ == "__main__":
    main()

"""Profile the Python-level hot spots behind the benchmark results (pyinstrument).

    python benchmarks/profile_hotspots.py [commits_s3|commits_file|commits_async_file|
                                           commits_async_s3|reads|restore ...] [--restore-mb N]

Starts its own SeaweedFS, runs each named workload under pyinstrument and prints the call tree
(frames under 2% hidden). Not part of run.py: profiling slows the code down.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
for _name in [n for n in os.environ if n.startswith("LIBSQL_BOTTOMLESS_")]:
    del os.environ[_name]

import apsw  # noqa: E402
import common  # noqa: E402
import measure_data  # noqa: E402
from common import file_settings, s3_settings  # noqa: E402
from pyinstrument import Profiler  # noqa: E402

import bottomless  # noqa: E402
from bottomless.testing.seaweed import SeaweedServer, start_seaweed  # noqa: E402


def commits(connect: Callable[[], object], count: int, wait: bool = False) -> Callable[[], None]:
    """A workload of ``count`` one-row commits on a fresh connection (setup not profiled)."""
    conn = connect()
    common.prepare(conn)  # type: ignore[arg-type]
    common.timed_commits(conn, common.payloads(20, 1))  # type: ignore[arg-type]

    def run() -> None:
        common.timed_commits(conn, common.payloads(count, 2))  # type: ignore[arg-type]
        if wait:
            bottomless.wait_durable(conn)  # type: ignore[arg-type]
        conn.close()  # type: ignore[attr-defined]

    return run


def reads(workdir: str, rows: int = 200_000, lookups: int = 20_000) -> Callable[[], None]:
    """Point lookups on a bottomless connection (the read benchmark's workload)."""
    path = os.path.join(workdir, "reads.db")
    conn = apsw.Connection(path)
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, v BLOB)")
    conn.execute(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?)"
        " INSERT INTO items(v) SELECT randomblob(100) FROM c", (rows,),
    )
    conn.close()
    settings = file_settings(os.path.join(workdir, "replicas-reads"))
    db = bottomless.connect(path, settings)
    ids = [random.Random(7).randint(1, rows) for _ in range(lookups)]

    def run() -> None:
        cursor = db.cursor()
        for i in ids:
            cursor.execute("SELECT v FROM items WHERE id = ?", (i,)).fetchall()
        db.close()

    return run


def workloads(server: SeaweedServer, workdir: str, names: list[str], restore_mb: int,
              count: int) -> dict[str, Callable[[], Any]]:
    """Set up the named workloads; return callables that run them."""
    out: dict[str, Callable[[], Any]] = {}
    for name in names:
        path = os.path.join(workdir, f"{name}.db")
        if name == "commits_s3":
            settings = s3_settings(server, server.new_bucket())
            out[name] = commits(functools.partial(bottomless.connect, path, settings), count)
        elif name == "commits_file":
            settings = file_settings(os.path.join(workdir, f"replicas-{name}"))
            out[name] = commits(functools.partial(bottomless.connect, path, settings), count)
        elif name == "commits_async_file":
            settings = file_settings(os.path.join(workdir, f"replicas-{name}"), durability="async")
            out[name] = commits(functools.partial(bottomless.connect, path, settings), count, True)
        elif name == "commits_async_s3":
            settings = s3_settings(server, server.new_bucket(), durability="async")
            out[name] = commits(functools.partial(bottomless.connect, path, settings), count, True)
        elif name == "reads":
            out[name] = reads(workdir)
        elif name == "restore":
            built = measure_data.build_restore_db(server, workdir, restore_mb)
            target = os.path.join(workdir, "restored.db")
            out[name] = functools.partial(
                bottomless.restore, target, built["settings"], db_name="big.db")
        else:
            raise SystemExit(f"unknown workload {name}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", default=["commits_s3", "commits_file", "restore"])
    parser.add_argument("--restore-mb", type=int, default=64)
    parser.add_argument("--commits", type=int, default=300)
    parser.add_argument("--interval", type=float, default=0.0005, help="sampling interval (s)")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="bottomless-profile-")
    server = start_seaweed()
    try:
        for name, run in workloads(server, workdir, args.names, args.restore_mb,
                                   args.commits).items():
            profiler = Profiler(interval=args.interval, async_mode="disabled")
            started = time.perf_counter()
            profiler.start()
            run()
            profiler.stop()
            print(f"===== {name}: {time.perf_counter() - started:.2f} s (profiled) =====")
            print(profiler.output_text(unicode=False, color=False, show_all=False,
                                       timeline=False, processor_options={
                                           "filter_threshold": 0.02}))
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

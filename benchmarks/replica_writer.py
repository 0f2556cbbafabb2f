"""Child process of benchmarks/replica.py: a sync bottomless writer on SeaweedFS, paced.

    replica_writer.py DB_PATH --endpoint URL --bucket B --db-name N [--lease-ttl S]
                      [--rate R] [--seconds S]

It opens DB_PATH through bottomless (WAL, sync durability), creates table ``t``, prints
``open <generation> <seq>`` and waits for a line on stdin. Then it commits one-row autocommit
INSERTs at ``--rate`` commits/s (one every ``1/rate`` s; a late commit moves the schedule
rather than being made up with a burst) for ``--seconds`` seconds (0: until killed), and
after each COMMIT returns prints ``<seq> <unix time> <bookmark>``: the commit's number from
``bottomless.status()["last_replicated_commit"]``, ``time.time()`` right after COMMIT
returned, and ``bottomless.position()``. It ends with ``end`` and closes the database.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

for _name in [n for n in os.environ if n.startswith("LIBSQL_BOTTOMLESS_")]:
    del os.environ[_name]  # the benchmarks configure bottomless explicitly

import bottomless  # noqa: E402
from bottomless.testing.seaweed import ACCESS_KEY, SECRET_KEY  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--db-name", required=True)
    parser.add_argument("--lease-ttl", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=0.0)
    args = parser.parse_args()
    values: dict[str, Any] = {
        "backend": "s3", "endpoint": args.endpoint, "bucket": args.bucket,
        "db_name": args.db_name, "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY,
        "region": "us-east-1", "lease_ttl": args.lease_ttl, "durability": "sync"}
    settings = bottomless.Settings(**values)
    db = bottomless.connect(args.path, settings)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)")
    status = bottomless.status(db)
    print(f"open {status['generation']} {status['last_replicated_commit']}", flush=True)
    sys.stdin.readline()
    value = "x" * 100
    period = 1.0 / args.rate
    started = time.monotonic()
    due = started
    out = sys.stdout
    while not args.seconds or time.monotonic() - started < args.seconds:
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        due = max(due + period, time.monotonic())
        db.execute("INSERT INTO t(v) VALUES (?)", (value,))
        returned = time.time()
        status = bottomless.status(db)
        bookmark = bottomless.position(db)
        out.write(f"{status['last_replicated_commit']} {returned:.6f} {bookmark}\n")
        out.flush()
    print("end", flush=True)
    db.close()


if __name__ == "__main__":
    main()

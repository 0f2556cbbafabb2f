"""A small app that keeps committing to a bottomless database: one order per transaction.

    python examples/writer.py PATH [--count N]

Where the replicas go comes from the LIBSQL_BOTTOMLESS_* environment (see the examples'
READMEs). After each COMMIT returns it prints ``committed <n>``: that order is in the bucket.
"""

from __future__ import annotations

import argparse
import time

import bottomless


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--count", type=int, default=10**9)
    args = parser.parse_args()
    db = bottomless.connect(args.path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS orders(id INTEGER PRIMARY KEY, item TEXT, qty INT, at REAL)"
    )
    start = db.execute("SELECT coalesce(max(id), 0) FROM orders").fetchone()[0]
    for n in range(start + 1, start + 1 + args.count):
        with db:
            db.execute("INSERT INTO orders VALUES(?, ?, ?, ?)", (n, f"item-{n % 7}", n % 5 + 1,
                                                                 time.time()))
        print(f"committed {n}", flush=True)
    db.close()


if __name__ == "__main__":
    main()

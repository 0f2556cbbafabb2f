"""Demo: write to a bottomless database, delete the file, reopen it, see the data come back.

    python3 dev.py demo                       # replicas in ./demo-data/replicas (no server)
    python3 dev.py demo --backend s3 --bucket demo --endpoint http://localhost:9000

With ``--backend s3`` the credentials come from the usual AWS chain (AWS_ACCESS_KEY_ID, ...).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import bottomless


def main() -> None:
    """Run the demo; a bottomless error (an unreachable store, missing credentials) is one
    line, with what to do, instead of a traceback."""
    try:
        demo()
    except bottomless.BottomlessError as e:
        sys.exit(f"demo: {e}\n(for S3, start a server first, e.g. `python -m"
                 " bottomless.testing.seaweed`, and export the variables it prints)")


def demo() -> None:
    """Write, delete the file, reopen: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="file", choices=["file", "s3", "memory"])
    parser.add_argument("--bucket", default=None, help="bucket (s3) or directory (file)")
    parser.add_argument("--endpoint", default=None, help="S3 endpoint URL")
    parser.add_argument("--dir", default="demo-data", help="where the local database goes")
    args = parser.parse_args()

    os.makedirs(args.dir, exist_ok=True)
    path = os.path.join(args.dir, "demo.db")
    options: dict[str, str] = {"backend": args.backend}
    options["bucket"] = args.bucket or (
        os.path.join(os.path.abspath(args.dir), "replicas") if args.backend == "file" else "demo"
    )
    if args.endpoint:
        options["endpoint"] = args.endpoint
    settings = bottomless.Settings(**options, initial_replication="force")

    for suffix in ("", "-wal", "-shm", "-journal", "-bottomless"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)

    print(f"1. writing {path}, replicated to {args.backend}:{options['bucket']}")
    db = bottomless.connect(path, settings)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT, at REAL)")
    for i in range(5):
        db.execute("INSERT INTO notes(body, at) VALUES(?, ?)", (f"note {i}", time.time()))
    before = db.execute("SELECT id, body FROM notes ORDER BY id").fetchall()
    state = bottomless.status(db)
    print(f"   {len(before)} rows; generation {state['generation']},"
          f" {state['objects_written']} objects written")
    db.close()

    print(f"2. deleting {path}")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)

    print("3. reopening: the database is restored from the replica before SQLite reads it")
    db = bottomless.connect(path, settings)
    after = db.execute("SELECT id, body FROM notes ORDER BY id").fetchall()
    check = db.execute("PRAGMA integrity_check").fetchone()
    db.close()
    for row in after:
        print(f"   {row}")
    assert after == before, "restored rows differ"
    print(f"restored {len(after)} rows, integrity_check: {check[0]}")


if __name__ == "__main__":
    main()

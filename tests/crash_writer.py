"""Child process of the crash tests: commits numbered transactions until it is killed.

Usage: crash_writer.py DB_PATH JOURNAL_MODE [COUNT]
Settings come from LIBSQL_BOTTOMLESS_* variables. After each COMMIT returns it prints
``done <n>`` and flushes, so the parent knows which commits were acknowledged.
"""

from __future__ import annotations

import sys
import time

import bottomless


def rows_in(txn: int) -> int:
    """How many rows transaction ``txn`` inserts; every 10th is big enough to spill the cache."""
    return 300 if txn % 10 == 0 else 1 + (txn * 7) % 13


def main() -> None:
    path, mode = sys.argv[1], sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 10**9
    db = bottomless.connect(path)
    db.set_busy_timeout(10_000)
    db.execute(f"PRAGMA journal_mode={mode}")
    db.execute("PRAGMA cache_size=20")
    db.execute("CREATE TABLE IF NOT EXISTS t(txn INTEGER, j INTEGER, pad BLOB)")
    db.execute("CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v INTEGER)")
    row = db.execute("SELECT v FROM meta WHERE k='last'").fetchone()
    start = (row[0] if row else 0) + 1
    for txn in range(start, start + count):
        with db:
            for j in range(rows_in(txn)):
                db.execute("INSERT INTO t VALUES(?, ?, randomblob(?))", (txn, j, 200 + j % 900))
            db.execute("INSERT OR REPLACE INTO meta VALUES('last', ?)", (txn,))
            if txn % 17 == 0:
                db.execute("DELETE FROM t WHERE txn = ? AND j > 0", (txn - 16,))
        print(f"done {txn} {time.time():.6f}", flush=True)
    db.close()


if __name__ == "__main__":
    main()

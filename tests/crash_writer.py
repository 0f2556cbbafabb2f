"""Child process of the crash tests: commits numbered transactions until it is killed.

Usage: crash_writer.py DB_PATH JOURNAL_MODE [COUNT]
Settings come from LIBSQL_BOTTOMLESS_* variables. After each COMMIT returns it prints
``done <n> <time>`` and flushes, so the parent knows which commits were acknowledged. It also
prints ``open <time>`` once the database is open, and, with ``CRASH_CHECKPOINT_EVERY=N`` in WAL
mode, ``checkpoint <n> <MODE>`` before and ``checkpointed <n>`` after a checkpoint it runs every
N transactions (TRUNCATE, PASSIVE and RESTART in turn), and ``snapshot <n>`` when it sees that a
background snapshot has started, so the parent can aim its kills and tell where they landed.
Lines other than ``done`` are only for that. ``CRASH_PAUSE=S`` sleeps S seconds after each
transaction, to keep a long-running writer's database small.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import apsw

import bottomless

CHECKPOINT_MODES = ("TRUNCATE", "PASSIVE", "RESTART")


def rows_in(txn: int) -> int:
    """How many rows transaction ``txn`` inserts; every 10th is big enough to spill the cache."""
    return 300 if txn % 10 == 0 else 1 + (txn * 7) % 13


def write_transaction(db: apsw.Connection, txn: int) -> None:
    """The statements of transaction ``txn`` (the caller wraps them in one transaction)."""
    for j in range(rows_in(txn)):
        db.execute("INSERT INTO t VALUES(?, ?, randomblob(?))", (txn, j, 200 + j % 900))
    db.execute("INSERT OR REPLACE INTO meta VALUES('last', ?)", (txn,))
    if txn % 17 == 0:
        db.execute("DELETE FROM t WHERE txn = ? AND j > 0", (txn - 16,))


def main() -> None:
    path, mode = sys.argv[1], sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 10**9
    checkpoint_every = int(os.environ.get("CRASH_CHECKPOINT_EVERY", "0"))
    pause = float(os.environ.get("CRASH_PAUSE", "0"))
    print(f"start {time.time():.6f}", flush=True)
    db = bottomless.connect(path)
    print(f"open {time.time():.6f}", flush=True)
    db.set_busy_timeout(10_000)
    db.execute(f"PRAGMA journal_mode={mode}")
    db.execute("PRAGMA cache_size=20")
    db.execute("CREATE TABLE IF NOT EXISTS t(txn INTEGER, j INTEGER, pad BLOB)")
    db.execute("CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v INTEGER)")
    row = db.execute("SELECT v FROM meta WHERE k='last'").fetchone()
    start = (row[0] if row else 0) + 1
    snapshots: set[int] = set()
    for txn in range(start, start + count):
        with db:
            write_transaction(db, txn)
        print(f"done {txn} {time.time():.6f}", flush=True)
        for thread in threading.enumerate():
            if thread.name.startswith("bottomless-snapshot-") and id(thread) not in snapshots:
                snapshots.add(id(thread))
                print(f"snapshot {txn}", flush=True)
        if checkpoint_every and mode.lower() == "wal" and txn % checkpoint_every == 0:
            how = CHECKPOINT_MODES[txn // checkpoint_every % len(CHECKPOINT_MODES)]
            print(f"checkpoint {txn} {how}", flush=True)
            db.execute(f"PRAGMA wal_checkpoint({how})").fetchall()
            print(f"checkpointed {txn}", flush=True)
        if pause:
            time.sleep(pause)
    db.close()


if __name__ == "__main__":
    main()

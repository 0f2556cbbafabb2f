"""Child process of the failover tests: a sync writer that moves money between accounts.

Usage: failover_writer.py DB_PATH. Settings come from LIBSQL_BOTTOMLESS_* variables. Each
transaction moves one unit between two of ten accounts (the total stays 1,000) and bumps a
counter; after its COMMIT returns it prints ``done <n>``. A refused commit prints
``refused <error class> <last error>`` (the bottomless error behind SQLite's I/O
error, from the status) and exits
with status 3. ``FAILOVER_PAUSE=S`` sleeps S seconds between transactions.
"""

from __future__ import annotations

import os
import sys
import time

import apsw

import bottomless


def main() -> None:
    path = sys.argv[1]
    pause = float(os.environ.get("FAILOVER_PAUSE", "0.02"))
    db = bottomless.connect(path)
    db.set_busy_timeout(10_000)
    db.execute("PRAGMA journal_mode=WAL")
    with db:
        db.execute("CREATE TABLE IF NOT EXISTS accounts(id INTEGER PRIMARY KEY, balance INT)")
        db.execute("CREATE TABLE IF NOT EXISTS counter(n INT)")
        if not db.execute("SELECT count(*) FROM accounts").fetchall()[0][0]:
            db.executemany("INSERT INTO accounts VALUES(?, 100)", [(i,) for i in range(10)])
            db.execute("INSERT INTO counter VALUES(0)")
    print("open", flush=True)
    n = db.execute("SELECT n FROM counter").fetchall()[0][0]
    while True:
        n += 1
        try:
            with db:
                db.execute("UPDATE accounts SET balance = balance - 1 WHERE id = ?", (n % 10,))
                db.execute("UPDATE accounts SET balance = balance + 1 WHERE id = ?",
                           ((n * 7 + 3) % 10,))
                db.execute("UPDATE counter SET n = ?", (n,))
        except apsw.Error as e:
            # apsw raises COMMIT's error afresh at the end of the block: the reason is in the
            # status (and on the exception raised inside a statement, as __cause__)
            cause = e.__cause__ or e
            print(f"refused {type(cause).__name__} {bottomless.status(db)['last_error']}",
                  flush=True)
            sys.exit(3)
        print(f"done {n}", flush=True)
        time.sleep(pause)


if __name__ == "__main__":
    main()

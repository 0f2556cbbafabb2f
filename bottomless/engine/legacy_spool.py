"""Carrying over the spool of bottomless 0.1, an SQLite database (``<db>-bottomless-spool``),
into the queue file, at the first open by a later version.

The entries are published in the queue with one header write, which also sets a flag saying
that they were carried over; only then are the 0.1 files removed, and the flag cleared. So a
process killed at any moment leaves the entries either not carried over yet (done again) or
carried over exactly once (the flag says that only the removal is left).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3

from bottomless import format as fmt
from bottomless.engine.intent import Intent
from bottomless.engine.spool import CARRIED_OVER, Spool
from bottomless.engine.transaction import Transaction

logger = logging.getLogger(__name__)


def migrate_legacy(spool: Spool) -> None:
    """Move what a bottomless 0.1 spool beside ``spool``'s database still holds into it (call
    with the upload lock held)."""
    legacy = spool.legacy_path
    if os.path.exists(legacy) and not spool.flags() & CARRIED_OVER:
        rows, intent = _read(legacy)
        txns = []
        for old, data in rows:
            batch = fmt.decode_batch(data, f"{legacy}#{old}")
            txns.append(Transaction(pages=batch.pages, db_size=batch.db_size,
                                    page_size=batch.page_size))
        if intent is not None:
            # the numbers the entries will get: the intent names them before they exist, so
            # that a crash in between finds it matching the entries carried over again
            first = spool.last_number() + 1
            key, through, data = intent
            covered = sum(1 for old, _ in rows if old <= through)
            spool.intent.write(Intent(key, data, first + covered - 1 if covered else 0))
        spool.append_all(txns, CARRIED_OVER)
        logger.info("%s: moved %d spooled commit(s) to %s", legacy, len(rows), spool.path)
    if spool.flags() & CARRIED_OVER:
        for suffix in ("", "-wal", "-shm", "-journal", ".lock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(legacy + suffix)
        spool.clear_flag(CARRIED_OVER)


def _read(legacy: str) -> tuple[list[tuple[int, bytes]], tuple[str, int, bytes] | None]:
    """The entries (number, object) and the intent (key, through, object) of a 0.1 spool."""
    connection = sqlite3.connect(legacy, timeout=60)
    try:
        tables = {r[0] for r in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
        )}
        rows = [(int(n), bytes(data)) for n, data in connection.execute(
            "SELECT n, data FROM entry ORDER BY n")] if "entry" in tables else []
        found = connection.execute("SELECT key, through, data FROM intent").fetchone() if (
            "intent" in tables) else None
    finally:
        connection.close()
    intent = None if found is None else (str(found[0]), int(found[1]), bytes(found[2]))
    return rows, intent

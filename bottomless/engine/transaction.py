"""What a commit hands the engine: the pages a transaction changed, whole."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Transaction:
    """A committed transaction: the pages it changed and the database size after it."""

    pages: dict[int, bytes]
    db_size: int
    page_size: int

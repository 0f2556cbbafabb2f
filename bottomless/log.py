"""Logging helpers. The library only creates loggers under ``bottomless``; it never
configures handlers (the CLI does)."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any


class DatabaseLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger for one database: every message starts with ``<db_name>: ``, and every record
    carries the name as ``record.db_name`` for handlers that format or filter on it."""

    def __init__(self, logger: logging.Logger, db_name: str) -> None:
        super().__init__(logger, {"db_name": db_name})
        self.db_name = db_name

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        """Prefix the database name and attach it to the record."""
        kwargs["extra"] = {**(kwargs.get("extra") or {}), "db_name": self.db_name}
        return f"{self.db_name}: {msg}", kwargs


def for_database(name: str, db_name: str) -> DatabaseLogger:
    """The logger ``name`` (a module's ``__name__``) for messages about database ``db_name``."""
    return DatabaseLogger(logging.getLogger(name), db_name)

"""bottomless: SQLite replicated to S3-compatible storage, one object per commit.

Use :func:`connect` (or :func:`register` and a ``vfs=bottomless`` URI) to open a database whose
every committed transaction is in the bucket before COMMIT returns, and :func:`restore` to
rebuild it anywhere.
"""

from __future__ import annotations

from bottomless.api import connect, log_sqlite, register, restore, status, wait_durable
from bottomless.backends.base import PageStore, open_store
from bottomless.errors import (
    BottomlessError,
    ConfigError,
    CorruptObjectError,
    DurabilityTimeoutError,
    ObjectChangedError,
    ObjectExistsError,
    ObjectNotFoundError,
    ReplicaConflictError,
    ReplicaNotFoundError,
    RestoreError,
    StoreError,
)
from bottomless.ops.restore import RestoreResult
from bottomless.settings import Settings

__version__ = "0.1.0"

__all__ = [
    "BottomlessError",
    "ConfigError",
    "CorruptObjectError",
    "DurabilityTimeoutError",
    "ObjectChangedError",
    "ObjectExistsError",
    "ObjectNotFoundError",
    "PageStore",
    "ReplicaConflictError",
    "ReplicaNotFoundError",
    "RestoreError",
    "RestoreResult",
    "Settings",
    "StoreError",
    "__version__",
    "connect",
    "log_sqlite",
    "open_store",
    "register",
    "restore",
    "status",
    "wait_durable",
]

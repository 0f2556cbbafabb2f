"""bottomless: SQLite replicated to S3-compatible storage, one object per commit.

Use :func:`connect` (or :func:`register` and a ``vfs=bottomless`` URI) to open a database whose
every committed transaction is in the bucket before COMMIT returns, and :func:`restore` to
rebuild it anywhere.
"""

from __future__ import annotations

from bottomless.api import (
    connect,
    gc,
    log_sqlite,
    ls,
    position,
    register,
    restore,
    status,
    verify,
    wait_durable,
)
from bottomless.backends.base import PageStore
from bottomless.backends.registry import open_store, register_backend
from bottomless.errors import (
    BottomlessError,
    ConfigError,
    ConfigProblem,
    CorruptObjectError,
    DurabilityTimeoutError,
    GenerationEndedError,
    LocalFileExistsError,
    NotReplicatedError,
    ObjectChangedError,
    ObjectExistsError,
    ObjectNotFoundError,
    ReplicaConflictError,
    ReplicaNotFoundError,
    ReplicaTimeoutError,
    RestoreError,
    StoreError,
)
from bottomless.ops.catalog import CommitInfo, GenerationInfo, VerifyReport
from bottomless.ops.restore import RestoreResult
from bottomless.ops.retention import GcReport
from bottomless.replica import Replica
from bottomless.settings import Settings

__version__ = "0.1.0"

__all__ = [
    "BottomlessError",
    "CommitInfo",
    "ConfigError",
    "ConfigProblem",
    "CorruptObjectError",
    "DurabilityTimeoutError",
    "GenerationEndedError",
    "GcReport",
    "GenerationInfo",
    "LocalFileExistsError",
    "NotReplicatedError",
    "ObjectChangedError",
    "ObjectExistsError",
    "ObjectNotFoundError",
    "PageStore",
    "Replica",
    "ReplicaConflictError",
    "ReplicaNotFoundError",
    "ReplicaTimeoutError",
    "RestoreError",
    "RestoreResult",
    "Settings",
    "StoreError",
    "VerifyReport",
    "__version__",
    "connect",
    "gc",
    "log_sqlite",
    "ls",
    "open_store",
    "position",
    "register",
    "register_backend",
    "restore",
    "status",
    "verify",
    "wait_durable",
]

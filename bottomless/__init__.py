"""bottomless: SQLite replicated to S3-compatible storage, one object per commit.

Use :func:`connect` (or :func:`register` and a ``vfs=bottomless`` URI) to open a database whose
every committed transaction is in the bucket before COMMIT returns, and :func:`restore` to
rebuild it anywhere.

Every public name is imported on first use (PEP 562), so ``import bottomless`` and the
``bottomless`` command load only what they touch: ``bottomless --help`` needs neither apsw,
pydantic nor an S3 client.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
        BucketNotFoundError,
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
        SnapshotProcessError,
        StoreError,
    )
    from bottomless.ops.catalog import CommitInfo, GenerationInfo, VerifyReport
    from bottomless.ops.restore import RestoreResult
    from bottomless.ops.retention import GcReport
    from bottomless.replica import Replica
    from bottomless.settings import Settings

__version__ = "0.1.0"

#: the module each public name is imported from, on first use
_HOMES: dict[str, str] = {
    **dict.fromkeys(
        ["connect", "gc", "log_sqlite", "ls", "position", "register", "restore", "status",
         "verify", "wait_durable"],
        "bottomless.api",
    ),
    "PageStore": "bottomless.backends.base",
    "open_store": "bottomless.backends.registry",
    "register_backend": "bottomless.backends.registry",
    # Settings checks backend names against the registry, which installs that check when it is
    # imported: bring the registry in with Settings (it imports Settings itself)
    "Settings": "bottomless.backends.registry",
    **dict.fromkeys(
        ["BottomlessError", "BucketNotFoundError", "ConfigError", "ConfigProblem",
         "CorruptObjectError", "DurabilityTimeoutError", "GenerationEndedError",
         "LocalFileExistsError", "NotReplicatedError", "ObjectChangedError", "ObjectExistsError",
         "ObjectNotFoundError",
         "ReplicaConflictError", "ReplicaNotFoundError", "ReplicaTimeoutError", "RestoreError",
         "SnapshotProcessError", "StoreError"],
        "bottomless.errors",
    ),
    "CommitInfo": "bottomless.ops.catalog",
    "GenerationInfo": "bottomless.ops.catalog",
    "VerifyReport": "bottomless.ops.catalog",
    "RestoreResult": "bottomless.ops.restore",
    "GcReport": "bottomless.ops.retention",
    "Replica": "bottomless.replica",
}


def __getattr__(name: str) -> Any:
    """Import a public name on first use (``bottomless.connect``, ``from bottomless import
    Settings``) and keep it, so later lookups cost nothing. A subpackage is imported on first
    use too (``bottomless.settings.load_settings``), as when this module imported them all."""
    home = _HOMES.get(name)
    if home is None:
        if name.startswith("_") or importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        return importlib.import_module(f"{__name__}.{name}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


__all__ = [
    "BottomlessError",
    "BucketNotFoundError",
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
    "SnapshotProcessError",
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

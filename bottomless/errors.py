"""Exceptions raised by bottomless.

Every error derives from :class:`BottomlessError`; each also derives from the built-in exception
that best matches it, so callers may catch either::

    BottomlessError
    ├── ConfigError(ValueError)             a setting or URI parameter is invalid
    ├── StoreError(OSError)                 the object store failed or is unreachable
    │   ├── ObjectNotFoundError(FileNotFoundError)
    │   ├── ObjectExistsError(FileExistsError)
    │   └── ObjectChangedError                a conditional write found a newer version
    ├── CorruptObjectError(ValueError)      an object fails its checksum or does not parse
    ├── ReplicaNotFoundError(FileNotFoundError)   no replica of that db_name
    ├── DurabilityTimeoutError(TimeoutError)       wait_durable ran out of time
    ├── RestoreError                        the bucket holds no consistent state to restore
    └── ReplicaConflictError                local file and bucket disagree
"""

from __future__ import annotations


class BottomlessError(Exception):
    """Root of every error raised by bottomless."""


class ConfigError(BottomlessError, ValueError):
    """A setting, environment variable or URI parameter has an invalid value."""


class StoreError(BottomlessError, OSError):
    """The object store failed: unreachable endpoint, missing bucket, denied request."""


class ObjectNotFoundError(StoreError, FileNotFoundError):
    """The requested key does not exist in the store."""


class ObjectExistsError(StoreError, FileExistsError):
    """A create-only write found the key already present."""


class ObjectChangedError(StoreError):
    """A write conditional on an object's version found a different version."""


class CorruptObjectError(BottomlessError, ValueError):
    """An object fails its checksum, is truncated, or does not belong where it was found."""


class ReplicaNotFoundError(BottomlessError, FileNotFoundError):
    """The store holds no replica of the requested database."""


class DurabilityTimeoutError(BottomlessError, TimeoutError):
    """Commits were still waiting for upload when ``wait_durable`` timed out."""


class RestoreError(BottomlessError):
    """The store holds a replica, but no consistent state can be rebuilt from it."""


class ReplicaConflictError(BottomlessError):
    """The local database and the replica in the store belong to different lineages."""

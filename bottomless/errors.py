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
    ├── NotReplicatedError(ValueError)      a connection bottomless does not replicate
    ├── ReplicaNotFoundError(FileNotFoundError)   no replica of that db_name
    ├── LocalFileExistsError(FileExistsError)     restore would replace a non-empty file
    ├── DurabilityTimeoutError(TimeoutError)       wait_durable ran out of time
    ├── ReplicaTimeoutError(TimeoutError)          Replica.wait_for ran out of time
    ├── RestoreError                        the bucket holds no consistent state to restore
    │   └── GenerationEndedError              a generation ended; another one continues it
    ├── SnapshotProcessError                a background snapshot's child process failed
    └── ReplicaConflictError                local file and bucket disagree, or another writer
                                            holds the database's lease

Errors carry their facts as attributes as well as in the message (``ConfigError.field``,
``StoreError.key``, ``ReplicaConflictError.holder`` …); each is ``None`` when the raiser did not
know it. Attributes never hold a credential.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class BottomlessError(Exception):
    """Root of every error raised by bottomless."""


@dataclass(frozen=True)
class ConfigProblem:
    """One invalid setting among those a :class:`ConfigError` reports.

    Attributes:
        field: The setting: URI parameter ``field``, environment variable
            ``LIBSQL_BOTTOMLESS_<FIELD>``.
        reason: What is wrong with it, e.g. ``Input should be 'sync' or 'async'``.
        value: The value given; ``None`` for a credential or an unknown setting.
        allowed: The allowed values, when they are a fixed set.
    """

    field: str
    reason: str
    value: Any = None
    allowed: tuple[str, ...] | None = None


class ConfigError(BottomlessError, ValueError):
    """A setting, environment variable or URI parameter has an invalid value.

    Attributes:
        field: The setting, parameter or argument at fault (``None`` when several are).
        value: The value given, unless it is a credential.
        allowed: The allowed values, when they are a fixed set.
        problems: Every invalid setting, when the error reports several at once (one entry per
            setting; empty for errors not about settings).
    """

    def __init__(
        self, message: str, *, field: str | None = None, value: Any = None,
        allowed: Sequence[str] | None = None, problems: Sequence[ConfigProblem] = (),
    ) -> None:
        super().__init__(message)
        self.problems = tuple(problems)
        if field is None and len(self.problems) == 1:
            only = self.problems[0]
            field, value, allowed = only.field, only.value, only.allowed
        self.field = field
        self.value = value
        self.allowed = tuple(allowed) if allowed is not None else None


class StoreError(BottomlessError, OSError):
    """The object store failed: unreachable endpoint, missing bucket, denied request.

    Attributes:
        key: The object the failed request was about, if any.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class BucketNotFoundError(StoreError):
    """The bucket (the file backend's directory) does not exist, and was not to be created:
    ``create_bucket`` is off. An operation that only reads (restore, ls, verify, gc, a
    replica) never creates one, and raises :class:`ReplicaNotFoundError` instead."""


class ObjectNotFoundError(StoreError, FileNotFoundError):
    """The requested key (attribute ``key``) does not exist in the store."""


class ObjectExistsError(StoreError, FileExistsError):
    """A create-only write found the key (attribute ``key``) already present."""


class ObjectChangedError(StoreError):
    """A write conditional on an object's version found a different version."""


class CorruptObjectError(BottomlessError, ValueError):
    """An object fails its checksum, is truncated, or does not belong where it was found.

    Attributes:
        key: The faulty object.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class ReplicaNotFoundError(BottomlessError, FileNotFoundError):
    """The store holds no replica of the requested database."""


class LocalFileExistsError(BottomlessError, FileExistsError):
    """A restore would replace a local file that is not empty (pass ``overwrite=True``).

    Attributes:
        path: The file in the way.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class DurabilityTimeoutError(BottomlessError, TimeoutError):
    """Commits were still waiting for upload when ``wait_durable`` timed out."""


class ReplicaTimeoutError(BottomlessError, TimeoutError):
    """A read replica had not applied the awaited commit when ``wait_for`` timed out.

    Attributes:
        bookmark: The bookmark waited for.
        applied: The bookmark of the commit the replica held at the timeout.
    """

    def __init__(self, message: str, *, bookmark: str | None = None,
                 applied: str | None = None) -> None:
        super().__init__(message)
        self.bookmark = bookmark
        self.applied = applied


class RestoreError(BottomlessError):
    """The store holds a replica, but no consistent state can be rebuilt from it."""


class GenerationEndedError(RestoreError):
    """A generation ends before the commit asked for: the writer started another generation
    (a restart, a branch, a forced replication) and ended this one with a successor object.

    Attributes:
        generation: The generation that ended.
        seq: Its last commit.
        successor: The generation that continues the database.
    """

    def __init__(self, message: str, *, generation: str, seq: int, successor: str) -> None:
        super().__init__(message)
        self.generation = generation
        self.seq = seq
        self.successor = successor


class SnapshotProcessError(BottomlessError):
    """A background snapshot built in a child process (``snapshot_worker="process"``) failed,
    or the child died. Commits go on; the next snapshot tries again.

    Attributes:
        returncode: The child's exit status (negative: the signal that killed it); ``None``
            when it exited normally and reported the failure itself.
        kind: The name of the exception the child reported (``"RestoreError"``), if any.
        at_start: True when the child could not be started or could not set itself up
            (import its code, read its settings): it never will here, and the writer builds
            its snapshots in a thread from then on. A store that did not answer while the
            child opened it, or a machine short of processes or descriptors, is not that.
    """

    def __init__(self, message: str, *, returncode: int | None = None,
                 kind: str | None = None, at_start: bool = False) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.kind = kind
        self.at_start = at_start

    @property
    def silent(self) -> bool:
        """Whether the child exited with an error status without a word of answer: several
        in a row also send snapshots to a thread (a Python that cannot start here)."""
        return self.kind is None and self.returncode is not None and self.returncode > 0


class NotReplicatedError(BottomlessError, ValueError):
    """The connection given was not opened through the bottomless VFS (a plain SQLite
    connection, ``:memory:``, or a URI with an explicit ``vfs=``), so it has no replication to
    report on or wait for."""


class ReplicaConflictError(BottomlessError):
    """The local database and the replica in the store belong to different lineages, or
    another writer holds the database's writer lease (or this writer lost it).

    Two writers would fork the database's history, so the second one fails to open, and a
    writer that can no longer be sure it holds the lease refuses to commit.

    Attributes:
        db_name: The database in the store.
        key: The object the conflict was found at (the lease object for a lease conflict).
        holder: Who holds the lease (host and process id), when another writer does.
        expires_at: When that writer's lease runs out unless renewed (UTC).
    """

    def __init__(
        self, message: str, *, db_name: str | None = None, key: str | None = None,
        holder: str | None = None, expires_at: dt.datetime | None = None,
    ) -> None:
        super().__init__(message)
        self.db_name = db_name
        self.key = key
        self.holder = holder
        self.expires_at = expires_at

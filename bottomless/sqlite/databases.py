"""The databases open through the ``bottomless`` VFS: one replicator per path, shared.

Every connection to one file shares one :class:`~bottomless.engine.replicator.Replicator`,
counted by its open main-database files. Opening (a restore or an upload) and closing (a flush)
run outside the registry's lock, so a slow database holds up only the openers of that path.
No apsw here: the VFS hands in how to open a replicator.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable

from bottomless.engine.replicator import Replicator
from bottomless.errors import ConfigError
from bottomless.settings import Settings
from bottomless.sqlite.capture import RollbackCapture

logger = logging.getLogger(__name__)


class _State(enum.Enum):
    """Where a database of :class:`OpenDatabases` is; an absent path is not open."""

    OPENING = "opening"  # one thread runs Replicator.open(); other openers wait
    OPEN = "open"  # files come and go, counted
    CLOSING = "closing"  # the last file closed, Replicator.close() runs; openers wait


class DatabaseEntry:
    """One database open in this process: its replicator, shared by every connection."""

    replicator: Replicator  # set once open, before the state becomes OPEN

    def __init__(self, path: str) -> None:
        self.path = path
        self.state = _State.OPENING
        self.files = 0
        self.capture = RollbackCapture()


class OpenDatabases:
    """The databases open through one VFS: one replicator per path, reference counted.

    Owned by its :class:`~bottomless.sqlite.vfs.BottomlessVFS`. Opening or closing a
    replicator (a restore, an upload, a flush) runs outside the lock of this registry, so a
    slow database stalls only the openers of that same path: they wait for its open, then share
    it (or, if it failed, open it afresh), or wait for its close, then open a new replicator.
    """

    def __init__(self, open_replicator: Callable[[str, Settings], Replicator]) -> None:
        self._open_replicator = open_replicator
        self._entries: dict[str, DatabaseEntry] = {}
        self._changed = threading.Condition()  # guards _entries; notified on every state change

    def acquire(self, path: str, settings: Settings) -> DatabaseEntry:
        """Count one more file of ``path``, opening its replicator if it is not open.

        Raises ConfigError if ``path`` is open with another replica, or what opening raises.
        """
        with self._changed:
            while (entry := self._entries.get(path)) is not None:
                if entry.state is _State.OPEN:
                    _check_same_replica(path, entry.replicator, settings)
                    entry.files += 1
                    return entry
                self._changed.wait()  # another thread opens or closes this path
            entry = self._entries[path] = DatabaseEntry(path)
        try:
            replicator = self._open_replicator(path, settings)
        except BaseException:
            self._settle(entry, None)
            raise
        self._settle(entry, replicator)
        return entry

    def release(self, entry: DatabaseEntry) -> None:
        """Count one file of ``entry`` less; the last one closes its replicator."""
        with self._changed:
            if self._entries.get(entry.path) is not entry or entry.state is not _State.OPEN:
                return  # forgotten
            entry.files -= 1
            if entry.files > 0:
                return
            entry.state = _State.CLOSING
        try:
            entry.replicator.close()
        finally:
            self._settle(entry, None)

    def _settle(self, entry: DatabaseEntry, replicator: Replicator | None) -> None:
        """End an open (``replicator`` set: now OPEN) or a close or failed open (gone)."""
        with self._changed:
            if replicator is not None:
                entry.replicator = replicator
                entry.files = 1
                entry.state = _State.OPEN
            elif self._entries.get(entry.path) is entry:
                del self._entries[entry.path]
            self._changed.notify_all()

    def get(self, path: str) -> DatabaseEntry | None:
        """The entry of ``path`` if it is open (not while it opens or closes)."""
        entry = self._entries.get(path)
        return entry if entry is not None and entry.state is _State.OPEN else None

    def replicator_for(self, path: str) -> Replicator | None:
        """The replicator of the open database ``path``, if any."""
        entry = self.get(path)
        return entry.replicator if entry else None

    def replicators(self) -> list[Replicator]:
        """The replicators of every database open now (not those opening or closing),
        sorted by path."""
        with self._changed:
            return [entry.replicator for path, entry in sorted(self._entries.items())
                    if entry.state is _State.OPEN]

    def forget(self, path: str) -> None:
        """Drop ``path`` without closing its replicator, as if its process had died.

        A hook for tests; the files still open on it no longer count.
        """
        with self._changed:
            self._entries.pop(path, None)
            self._changed.notify_all()

    def close_all(self) -> None:
        """Close every open replicator, logging (not raising) failures; for a clean exit."""
        with self._changed:
            entries = [entry for entry in self._entries.values() if entry.state is _State.OPEN]
        for entry in entries:
            try:
                entry.replicator.close(final=False)  # its connections are still open
            except Exception as e:  # noqa: BLE001 - keep flushing the others
                logger.error("%s: flush at exit failed: %s", entry.replicator.db_name, e)


def _check_same_replica(path: str, mine: Replicator, settings: Settings) -> None:
    if (settings.backend, settings.bucket, settings.endpoint) != (
        mine.settings.backend, mine.settings.bucket, mine.settings.endpoint
    ) or (settings.db_name and settings.db_name != mine.db_name):
        raise ConfigError(
            f"{path} is already open with bottomless replicating to"
            f" {mine.store.location} as {mine.db_name!r}; every connection to one"
            " file must use the same backend, bucket, endpoint and db_name"
        )

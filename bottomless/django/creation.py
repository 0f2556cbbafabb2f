"""Test databases: created, cloned and destroyed with their replicas.

A test database whose ``TEST["NAME"]`` is a path is a bottomless file like any other, so the
test run exercises replication. It replicates under its own base name (``db_name`` is forced
to it), never under the real database's name. Because a missing file would be restored from
the bucket, creating a test database (without ``--keepdb``) deletes its old replica along
with the old file, and destroying it deletes both. An in-memory test database (Django's
default, ``TEST["NAME"]`` unset) is not replicated at all.

Under the ``spawn`` start method (macOS's and Windows's default), ``--parallel`` hands an
in-memory test database to its workers through a file and a shared-cache memory database;
Django does that with the standard library's ``sqlite3``, another SQLite than apsw's, whose
memory databases this backend cannot see. Here both copies go through this backend's own
module, on SQLite's default VFS (never replicated).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from typing import Any

import apsw
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.sqlite3 import creation as sqlite_creation

from bottomless import format as fmt
from bottomless.backends.registry import open_store
from bottomless.django.options import replica_name, settings_from_options
from bottomless.local.files import remove_local_files
from bottomless.settings import Settings

logger = logging.getLogger(__name__)


def remove_side_files(path: str | os.PathLike[str]) -> None:
    """Delete the journal, WAL, shared-memory and bottomless state files of ``path``."""
    remove_local_files(os.fspath(path), include_db=False)


def drop_replica(settings: Settings, db_name: str) -> int:
    """Delete every object of ``db_name`` from the store; return how many there were.

    Only for test databases. Raises StoreError if the store fails.
    """
    store = open_store(settings)
    try:
        keys = store.list_keys(fmt.db_prefix(db_name))
        for key in keys:
            store.delete(key)
    finally:
        store.close()
    if keys:
        logger.info("deleted the %d objects of test database %s from %s", len(keys), db_name,
                    store.location)
    return len(keys)


class DatabaseCreation(sqlite_creation.DatabaseCreation):  # type: ignore[misc]
    """Django's SQLite test-database handling, plus the replica of each file test database."""

    def _test_settings(self, test_database_name: str) -> Settings:
        """The settings of a test database file: this database's, under the file's name."""
        return settings_from_options(
            self.connection.settings_dict["OPTIONS"], self.connection.alias,
            db_name=fmt.default_db_name(test_database_name),
        )

    def _delete_test_replica(self, test_database_name: str) -> None:
        """Delete the side files of a test database file and its replica in the bucket."""
        remove_side_files(test_database_name)
        drop_replica(self._test_settings(test_database_name),
                     fmt.default_db_name(test_database_name))

    def _check_not_the_real_replica(self, test_database_name: str) -> None:
        """Refuse a test database that would replicate onto the real database's replica."""
        real_name = self.connection.settings_dict["NAME"]
        if not real_name or self.is_in_memory_db(real_name):
            return
        real = settings_from_options(self._real_options(), self.connection.alias)
        test = self._test_settings(test_database_name)
        same_place = (real.backend, real.bucket, real.endpoint) == (
            test.backend, test.bucket, test.endpoint)
        if same_place and replica_name(real, os.fspath(real_name)) == test.db_name:
            raise ImproperlyConfigured(
                f"settings.DATABASES[{self.connection.alias!r}]: the test database"
                f" {test_database_name!r} would replicate as {test.db_name!r}, the replica of"
                " the real database in the same bucket, and creating it deletes that replica;"
                " give TEST['NAME'] another base name"
            )

    def _real_options(self) -> dict[str, Any]:
        """The OPTIONS of the real database, also while the test database's are in place."""
        options: dict[str, Any] = self.connection.settings_dict["OPTIONS"]
        if options is getattr(self, "_test_options", None):
            return self._saved_options
        return options

    def _use_test_replica_name(self, test_database_name: str) -> None:
        """Make this connection replicate under the test file's base name until destroyed."""
        self._saved_options = self._real_options()
        self._test_options = {
            **self._saved_options, "db_name": fmt.default_db_name(test_database_name)
        }
        self.connection.settings_dict["OPTIONS"] = self._test_options

    def _create_test_db(self, verbosity: int, autoclobber: bool, keepdb: bool = False) -> Any:
        test_database_name = self._get_test_db_name()
        if not self.is_in_memory_db(test_database_name):
            self._check_not_the_real_replica(test_database_name)
        name = super()._create_test_db(verbosity, autoclobber, keepdb)
        if self.is_in_memory_db(name):
            return name
        self._use_test_replica_name(name)
        if not keepdb:  # else a missing file is restored from the replica
            self._delete_test_replica(name)
        return name

    def get_test_db_clone_settings(self, suffix: str) -> dict[str, Any]:
        """A clone replicates under its own file's base name."""
        clone: dict[str, Any] = super().get_test_db_clone_settings(suffix)
        if not self.is_in_memory_db(clone["NAME"]):
            clone["OPTIONS"] = {
                **clone["OPTIONS"], "db_name": fmt.default_db_name(clone["NAME"])
            }
        return clone

    def _plain(self, path: str, query: str = "") -> Any:
        """A connection of this backend's module to ``path`` on SQLite's default VFS: no
        replication, and the same SQLite as the test database's connection."""
        default_vfs = apsw.vfs_names()[0]
        return self.connection.Database.connect(
            f"file:{os.path.abspath(path)}?vfs={default_vfs}{query}", uri=True)

    def _clone_test_db(self, suffix: str, verbosity: int, keepdb: bool = False) -> None:
        source = self.connection.settings_dict["NAME"]
        if self.is_in_memory_db(source):
            if multiprocessing.get_start_method() == "spawn":  # (fork copies it by itself)
                copy = self._plain(self.get_test_db_clone_settings(suffix)["NAME"])
                try:
                    self.connection.connection.backup(copy)
                finally:
                    copy.close()
            return
        target = self.get_test_db_clone_settings(suffix)["NAME"]
        if not (keepdb and os.access(target, os.F_OK)):
            self._delete_test_replica(target)
        # the clone copies the database file alone: bring WAL content into it first
        with self.connection.cursor() as cursor:
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        super()._clone_test_db(suffix, verbosity, keepdb)

    def setup_worker_connection(self, _worker_id: int) -> None:
        """A ``spawn`` worker: load its copy of the test database into the shared-cache memory
        database it then uses, through this backend's own module (see the module)."""
        if multiprocessing.get_start_method() != "spawn":
            super().setup_worker_connection(_worker_id)
            return
        clone = self.get_test_db_clone_settings(str(_worker_id))  # its copy: _clone_test_db's
        memory = f"file:memorydb_{self.connection.alias}_{_worker_id}?mode=memory&cache=shared"
        source = self._plain(clone["NAME"], "&mode=ro")
        target = self.connection.Database.connect(memory, uri=True)
        try:
            source.backup(target)
        finally:
            source.close()
        self.connection.settings_dict.update(clone)
        self.connection.settings_dict["NAME"] = memory
        self.connection.connect()  # the memory database lives while a connection holds it
        target.close()
        if os.environ.get("RUNNING_DJANGOS_TEST_SUITE") == "true":
            self.mark_expected_failures_and_skips()

    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> None:
        super()._destroy_test_db(test_database_name, verbosity)
        if test_database_name and not self.is_in_memory_db(test_database_name):
            self._delete_test_replica(test_database_name)

    def destroy_test_db(self, old_database_name: str | None = None, verbosity: int = 1,
                        keepdb: bool = False, suffix: str | None = None) -> None:
        """Destroy the test database (file and replica), then restore the real OPTIONS."""
        super().destroy_test_db(old_database_name, verbosity, keepdb, suffix)
        if suffix is None and hasattr(self, "_test_options"):
            self.connection.settings_dict["OPTIONS"] = self._real_options()
            del self._test_options, self._saved_options

"""The local side files: telling a kept descriptor's file apart from its replacement, the state
file kept open across commits, and commits that never stat the files they write.

A ``stat`` followed by a write of the same file costs every commit tens of microseconds on
Linux >= 6.13 (the write then takes a fine-grained timestamp and dirties the inode), so the
commit path checks its kept descriptors through ``/proc/self/fd`` instead. These tests pin both
halves: the cheaper check still notices removal and replacement, and a commit stats nothing.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import apsw
import pytest

import bottomless
from bottomless.local import files as localdb
from bottomless.local.files import (
    LocalImage,
    LocalState,
    file_identity,
    read_state,
    state_path,
    still_named,
    write_state,
)
from tests.helpers import replicator, stop_uploader

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/fd")


def _state(seq: int) -> LocalState:
    return LocalState(
        db_name="a.db", location="memory://x", generation="g", seq=seq, digest="00" * 32,
        page_size=4096, writer="11" * 8,
    )


@pytest.fixture(autouse=True)
def _fresh_state_descriptors() -> Any:
    """Each test starts and ends with no state file descriptor kept (they are per process)."""
    yield
    localdb.STATE_FILES.close_all()


@pytest.fixture(params=["proc", "inode"])
def identity_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each way of telling files apart: /proc/self/fd (Linux), inode numbers (elsewhere)."""
    if request.param == "proc":
        if not localdb.HAS_PROC_FD:
            pytest.skip("no /proc/self/fd here")
    else:
        monkeypatch.setattr(localdb, "HAS_PROC_FD", False)
    kind: str = request.param
    return kind


def test_a_kept_descriptor_is_still_named_until_removed(identity_kind: str, tmp_path: Any) -> None:
    path = str(tmp_path / "f")
    with open(path, "wb") as out:
        out.write(b"x")
    fd = os.open(path, os.O_RDONLY)
    try:
        identity = file_identity(fd)
        assert isinstance(identity, str if identity_kind == "proc" else int)
        assert still_named(fd, identity, path)
        os.unlink(path)
        assert not still_named(fd, identity, path)
    finally:
        os.close(fd)


def test_a_file_removed_before_its_identity_was_taken_is_never_trusted(
    identity_kind: str, tmp_path: Any
) -> None:
    path = str(tmp_path / "f")
    with open(path, "wb") as out:
        out.write(b"x")
    fd = os.open(path, os.O_RDONLY)
    try:
        os.unlink(path)  # another process, between our open and file_identity()
        identity = file_identity(fd)
        assert not still_named(fd, identity, path)
        with open(path, "wb") as out:  # and a new file appears under the name
            out.write(b"y")
        assert not still_named(fd, identity, path)
    finally:
        os.close(fd)


def test_a_file_replaced_by_rename_is_not_taken_for_the_kept_one(
    identity_kind: str, tmp_path: Any
) -> None:
    path = str(tmp_path / "f")
    for name in (path, path + ".new"):
        with open(name, "wb") as out:
            out.write(b"x")
    fd = os.open(path, os.O_RDONLY)
    try:
        identity = file_identity(fd)
        os.replace(path + ".new", path)
        assert not still_named(fd, identity, path)
    finally:
        os.close(fd)


def test_state_written_by_another_process_replacing_the_file_is_read(
    identity_kind: str, tmp_path: Any
) -> None:
    db = str(tmp_path / "a.db")
    write_state(db, _state(1))
    write_state(db, _state(2))  # in place, through the kept descriptor
    assert read_state(db) == _state(2)
    # another process starts afresh: a new file renamed over the state file
    other = state_path(db) + ".other"
    with open(state_path(db), "rb") as current, open(other, "wb") as out:
        out.write(current.read().replace(b'"seq": 2', b'"seq": 7'))
    os.replace(other, state_path(db))
    assert read_state(db) == _state(7)
    write_state(db, _state(8))  # lands in the new file, not the replaced one
    with open(state_path(db), "rb") as stream:
        assert b'"seq": 8' in stream.read()
    assert read_state(db) == _state(8)


def test_a_removed_state_file_reads_as_none_and_is_created_again(
    identity_kind: str, tmp_path: Any
) -> None:
    db = str(tmp_path / "a.db")
    write_state(db, _state(3))
    assert read_state(db) == _state(3)
    os.unlink(state_path(db))
    assert read_state(db) is None
    write_state(db, _state(4))
    assert read_state(db) == _state(4)


@pytest.mark.parametrize("refusal", [errno.EACCES, errno.EROFS])
def test_a_state_file_this_process_may_only_read_is_still_read(
    refusal: int, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = str(tmp_path / "a.db")
    write_state(db, _state(5))
    localdb.STATE_FILES.forget(db)  # as in a process that never wrote it
    real_open = os.open

    def refuse_writing(path: Any, flags: int, *args: Any) -> int:
        if str(path) == state_path(db) and flags & os.O_RDWR:
            raise OSError(refusal, os.strerror(refusal), str(path))  # someone else's; read-only
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refuse_writing)
    assert read_state(db) == _state(5)


def test_a_short_record_written_over_a_long_one_reads_back(tmp_path: Any) -> None:
    db = str(tmp_path / "a.db")
    long = _state(1)
    long.db_name = "x" * 3000  # does not fit the fixed slot: the file is written anew
    write_state(db, long)
    assert read_state(db) == long
    write_state(db, _state(2))  # fits: written in place, over the start of the long record
    assert os.path.getsize(state_path(db)) > localdb.STATE_RECORD_SIZE
    assert read_state(db) == _state(2)
    localdb.STATE_FILES.forget(db)  # and in a process that did not write it
    assert read_state(db) == _state(2)


def test_removing_local_files_lets_go_of_the_state_file(tmp_path: Any) -> None:
    db = str(tmp_path / "a.db")
    write_state(db, _state(1))
    assert localdb.STATE_FILES.is_open(db)
    localdb.remove_local_files(db, include_db=False)
    assert not localdb.STATE_FILES.is_open(db) and read_state(db) is None


@linux_only
def test_closing_all_state_files_closes_their_descriptors(tmp_path: Any) -> None:
    before = set(os.listdir("/proc/self/fd"))
    dbs = [str(tmp_path / f"{name}.db") for name in ("a", "b")]
    for db in dbs:
        write_state(db, _state(1))
    assert all(localdb.STATE_FILES.is_open(db) for db in dbs)
    localdb.STATE_FILES.close_all()
    assert not any(localdb.STATE_FILES.is_open(db) for db in dbs)
    assert set(os.listdir("/proc/self/fd")) <= before  # none left behind
    assert read_state(dbs[0]) == _state(1)  # opened again when needed


@linux_only
@pytest.mark.parametrize("durability", ["sync", "async"])
def test_commits_stat_no_file(
    durability: str, tmp_path: Any, make_settings: Callable[..., bottomless.Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = str(tmp_path / "a.db")
    db = bottomless.connect(path, make_settings("memory", durability=durability))
    try:
        db.execute("CREATE TABLE t(x)")
        db.execute("INSERT INTO t VALUES (0)")
        if durability == "async":
            stop_uploader(path)  # the uploader's own work is not the commit path
        stats: list[Any] = []
        real_stat, real_fstat = os.stat, os.fstat
        committer = threading.get_ident()  # not the threads a test before may have left

        def counting_stat(target: Any, *args: Any, **kwargs: Any) -> Any:
            found = real_stat(target, *args, **kwargs)  # a missing file has no timestamps
            if threading.get_ident() == committer:
                stats.append(target)
            return found

        def counting_fstat(fd: int) -> Any:
            if threading.get_ident() == committer:
                stats.append(fd)
            return real_fstat(fd)

        monkeypatch.setattr(os, "stat", counting_stat)
        monkeypatch.setattr(os, "fstat", counting_fstat)
        for i in range(1, 21):
            db.execute("INSERT INTO t VALUES (?)", (i,))
        monkeypatch.undo()
        assert stats == []
        assert db.execute("SELECT count(*) FROM t").fetchall() == [(21,)]
        if durability == "async":
            assert len(replicator(path).spool.entries()) >= 20
    finally:
        db.close()


_TRY_WRITE_LOCK = """
import sys, apsw
connection = apsw.Connection(sys.argv[1])
try:
    connection.execute("BEGIN IMMEDIATE")
except apsw.BusyError:
    print("busy")
else:
    print("got the lock")
"""


def test_reading_the_local_image_keeps_this_process_s_sqlite_locks(tmp_path: Any) -> None:
    """SQLite keeps its WAL locks as POSIX locks on ``-shm``, and closing any descriptor of a
    file drops all of a process's locks on it: bottomless must read ``-shm`` (and the database)
    without ever closing a descriptor SQLite's locks may hang on."""
    path = str(tmp_path / "a.db")
    connection = apsw.Connection(path)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("CREATE TABLE t(x)")
    connection.execute("INSERT INTO t VALUES(1)")
    connection.execute("BEGIN IMMEDIATE")
    try:
        for _ in range(2):  # also when the descriptors are already kept
            image = LocalImage(path)
            assert image.page(1)[:16] == b"SQLite format 3\0"
            image.close()
            assert localdb.wal_index_limit(path + "-wal") is not None
            other = subprocess.run([sys.executable, "-c", _TRY_WRITE_LOCK, path],
                                   capture_output=True, text=True, check=True, timeout=60)
            assert other.stdout.strip() == "busy", "another process took the write lock"
    finally:
        connection.execute("ROLLBACK")
        connection.close()


def test_the_kept_shm_descriptor_follows_a_new_shm_file(tmp_path: Any) -> None:
    path = str(tmp_path / "a.db")
    for round_ in range(3):  # each last close removes -shm; the next open makes a new one
        connection = apsw.Connection(path)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE IF NOT EXISTS t(x)")
        connection.execute("INSERT INTO t VALUES(?)", (round_,))
        limit = localdb.wal_index_limit(path + "-wal")
        assert limit is not None and limit[0] > 0
        kept = localdb.KEPT_DESCRIPTORS.kept(path + "-shm")
        assert kept is not None
        connection.close()
        assert not os.path.exists(path + "-shm")
        assert localdb.wal_index_limit(path + "-wal") is None
        assert localdb.KEPT_DESCRIPTORS.kept(path + "-shm") is None
        with pytest.raises(OSError):
            os.fstat(kept)  # closed once its file was gone: no descriptor piles up


def test_a_pre_3_7_header_is_sized_by_the_file_not_by_a_huge_read(tmp_path: Any) -> None:
    """A header whose in-header size is not trustworthy falls back to the file's size."""
    import apsw

    from bottomless.local.files import file_size, read_db
    from bottomless.sqlite.capture import RollbackCapture

    path = str(tmp_path / "old.db")
    db = apsw.Connection(path)
    db.execute("CREATE TABLE t(x)")
    db.execute("INSERT INTO t VALUES (1)")
    db.close()
    with open(path, "r+b") as handle:  # "version valid for" no longer matches the counter
        handle.seek(92)
        handle.write(b"\xff\xff\xff\xff")

    def read(offset: int, amount: int) -> bytes:
        return read_db(path, offset, amount)

    capture = RollbackCapture()
    capture.note_write(4096, 4096, read)  # page 2 "changes": any recorded write will do
    with open(path, "r+b") as handle:
        handle.seek(4096 + 200)
        handle.write(b"changed")
    txn = capture.finalize(read, 4096, lambda: file_size(path))
    assert txn is not None
    assert txn.db_size == file_size(path) // 4096 == 2
    assert set(txn.pages) == {2}

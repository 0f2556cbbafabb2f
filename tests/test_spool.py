"""The async spool (``bottomless/spool.py``): an append-only queue file of committed transactions.

Entries must come back exactly, in order, numbered without gaps; a torn append must stay
invisible, and a short write or a full disk must never publish one; damage must be reported
with the file's name; consumed space must be given back; and a spool left by bottomless 0.1
(an SQLite database) must be carried over, not stranded.
"""

from __future__ import annotations

import errno
import functools
import multiprocessing
import os
import signal
import sqlite3
import struct
import time
import types
from typing import Any

import apsw
import pytest

from bottomless import CorruptObjectError
from bottomless import format as fmt
from bottomless.engine import commit_mark, legacy_spool
from bottomless.engine import spool as spool_module
from bottomless.engine.intent import Intent
from bottomless.engine.legacy_spool import migrate_legacy
from bottomless.engine.spool import DamagedSpoolError, Spool
from bottomless.engine.transaction import Transaction
from bottomless.sqlite.locks import sqlite_write_lock

PAGE = 4096


def txn(seed: int, pages: int = 2) -> Transaction:
    """A transaction whose pages are derived from ``seed``."""
    content = {
        seed * 10 + i + 1: bytes([(seed + i) % 256]) * PAGE for i in range(pages)
    }
    return Transaction(pages=content, db_size=seed * 10 + pages, page_size=PAGE)


def test_entries_come_back_in_order_and_exactly(tmp_path: Any) -> None:
    spool = Spool(str(tmp_path / "a.db"))
    assert not spool.exists() and spool.entries() == [] and spool.last_number() == 0
    numbers = [spool.append(txn(i, pages=1 + i % 3)) for i in range(1, 6)]
    assert numbers == [1, 2, 3, 4, 5] == spool.entries()
    assert spool.last_number() == 5
    group = spool.read_group(1 << 24)
    assert [n for n, _ in group] == numbers
    for (_, batch), i in zip(group, range(1, 6), strict=True):
        expected = txn(i, pages=1 + i % 3)
        assert batch.pages == expected.pages
        assert (batch.db_size, batch.page_size) == (expected.db_size, PAGE)
        assert abs(batch.created_ms / 1000 - time.time()) < 60
    assert spool.size_bytes() > 5 * PAGE
    spool.close()


def test_read_group_stops_at_max_bytes_but_returns_at_least_one(tmp_path: Any) -> None:
    spool = Spool(str(tmp_path / "a.db"))
    for i in range(1, 5):
        spool.append(txn(i, pages=2))
    assert [n for n, _ in spool.read_group(1)] == [1]
    assert [n for n, _ in spool.read_group(2 * (2 * PAGE + 100))] == [1, 2]


def test_removing_everything_gives_the_space_back(tmp_path: Any) -> None:
    spool = Spool(str(tmp_path / "a.db"))
    for i in range(1, 4):
        spool.append(txn(i))
    spool.remove_through(2)
    assert spool.entries() == [3]
    assert [n for n, _ in spool.read_group(1 << 24)] == [3]
    spool.remove_through(3)
    assert spool.entries() == [] and spool.size_bytes() == 0 and spool.oldest_age() == 0
    assert os.path.getsize(spool.path) <= spool_module._DATA_START + spool_module._PREALLOCATE
    assert spool.append(txn(9)) == 4, "numbers keep growing after the file is emptied"
    assert [b.pages for _, b in spool.read_group(1 << 24)] == [txn(9).pages]


def test_the_file_is_allocated_ahead_and_given_back_when_idle(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "_PREALLOCATE", 64 * 1024)
    spool = Spool(str(tmp_path / "a.db"))
    spool.append(txn(1))
    assert os.path.getsize(spool.path) >= spool_module._DATA_START + 64 * 1024
    for i in range(2, 60):
        spool.append(txn(i))  # about 480 KiB: grown step by step
    assert os.path.getsize(spool.path) >= spool.size_bytes() + spool_module._DATA_START
    spool.remove_through(59)
    assert os.path.getsize(spool.path) == spool_module._DATA_START + 64 * 1024


def test_oldest_age_follows_the_oldest_entry(tmp_path: Any) -> None:
    spool = Spool(str(tmp_path / "a.db"))
    spool.append(txn(1))
    time.sleep(0.2)
    spool.append(txn(2))
    assert spool.oldest_age() >= 0.2
    spool.remove_through(1)
    assert spool.oldest_age() < 0.2


def test_consumed_space_is_compacted_while_entries_remain(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "_COMPACT_BYTES", 64 * 1024)
    monkeypatch.setattr(spool_module, "_PREALLOCATE", 16 * 1024)
    spool = Spool(str(tmp_path / "a.db"))
    for i in range(1, 41):
        spool.append(txn(i))  # about 8 KiB each
    peak = os.path.getsize(spool.path)
    spool.remove_through(30)  # 30 consumed, 10 live: compacted to the front
    assert os.path.getsize(spool.path) < peak / 3
    group = spool.read_group(1 << 24)
    assert [n for n, _ in group] == list(range(31, 41))
    assert all(batch.pages == txn(n).pages for n, batch in group)
    assert spool.append(txn(41)) == 41
    assert spool.entries() == list(range(31, 42))


def test_a_process_killed_while_compacting_leaves_the_live_entries(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL right after the live records were copied to the front, before the header names
    them there: the copy overwrote consumed records, which the file must no longer name."""
    monkeypatch.setattr(spool_module, "_COMPACT_BYTES", 64 * 1024)
    spool = Spool(str(tmp_path / "a.db"))
    spool.append(txn(1, pages=20))  # about 80 KiB, consumed below
    spool.append(txn(2))            # about 8 KiB, live: copied over the start of the first
    spool.close()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child ends by SIGKILL
        try:
            write = spool_module.pwrite_all

            def killed_after_the_copy(fd: int, data: bytes | memoryview, offset: int) -> None:
                write(fd, data, offset)
                if offset == spool_module._DATA_START:
                    os.kill(os.getpid(), signal.SIGKILL)

            spool_module.pwrite_all = killed_after_the_copy  # type: ignore[assignment]
            Spool(str(tmp_path / "a.db")).remove_through(1)
        finally:
            os._exit(1)
    assert os.waitpid(pid, 0)[1] == signal.SIGKILL
    again = Spool(str(tmp_path / "a.db"))
    assert again.entries() == [2]
    assert [(n, b.pages) for n, b in again.read_group(1 << 24)] == [(2, txn(2).pages)]
    again.remove_through(2)
    assert again.entries() == []


def test_a_record_without_its_header_update_stays_invisible(tmp_path: Any) -> None:
    """A process killed between writing a record and publishing it leaves no entry."""
    spool = Spool(str(tmp_path / "a.db"))
    spool.append(txn(1))
    with open(spool.path, "r+b") as stream:  # a torn append: bytes past the published end
        (end,) = struct.unpack_from("<Q", stream.read(24), 16)
        stream.seek(end)
        stream.write(b"\xff" * 5000)
    assert spool.entries() == [1]
    assert spool.append(txn(2)) == 2  # written over the torn bytes
    assert [b.pages for _, b in spool.read_group(1 << 24)] == [txn(1).pages, txn(2).pages]


def test_damaged_record_is_reported_with_its_file_and_number(tmp_path: Any) -> None:
    spool = Spool(str(tmp_path / "a.db"))
    spool.append(txn(1))
    spool.append(txn(2))
    spool.close()
    with open(spool.path, "r+b") as stream:
        (end,) = struct.unpack_from("<Q", stream.read(24), 16)  # header: where records end
        stream.seek(end - 10)
        stream.write(b"\0garbage\0\0")
    with pytest.raises(CorruptObjectError, match=r"a\.db-bottomless-queue#2.*CRC"):
        spool.read_group(1 << 24)


def test_a_file_that_is_not_a_spool_is_refused(tmp_path: Any) -> None:
    spool = Spool(str(tmp_path / "a.db"))
    with open(spool.path, "wb") as stream:
        stream.write(b"SQLite format 3\0" + bytes(100))
    with pytest.raises(CorruptObjectError, match="not a bottomless spool"):
        spool.entries()


def test_a_record_running_past_the_published_end_is_damage_not_an_os_error(
        tmp_path: Any) -> None:
    spool = Spool(str(tmp_path / "a.db"))
    spool.append(txn(1))
    spool.append(txn(2))
    with open(spool.path, "r+b") as stream:
        (end,) = struct.unpack_from("<Q", stream.read(24), 16)
        stream.seek(16)
        stream.write(struct.pack("<Q", end - 5))
    for call in (lambda: spool.remove_through(2), lambda: spool.read_group(1 << 24)):
        with pytest.raises(DamagedSpoolError, match="bottomless-queue"):
            call()


def test_a_removed_spool_file_is_recreated_not_written_as_a_ghost(tmp_path: Any) -> None:
    spool = Spool(str(tmp_path / "a.db"))
    spool.append(txn(1))
    other = Spool(str(tmp_path / "a.db"))
    other.destroy()  # another process found the database gone
    assert spool.append(txn(2)) == 1
    assert os.path.exists(spool.path) and other.entries() == [1]


def test_intent_round_trips_and_damage_is_dropped(tmp_path: Any) -> None:
    spool = Spool(str(tmp_path / "a.db"))
    assert spool.intent.read() is None
    intent = Intent("db/generations/g/commits/0000000000000007", os.urandom(3000), 12)
    spool.intent.write(intent)
    assert spool.intent.read() == intent
    with open(spool.intent.path, "r+b") as stream:
        stream.seek(100)
        stream.write(b"\0\1\2")
    assert spool.intent.read() is None
    assert not os.path.exists(spool.intent.path)
    spool.intent.write(intent)
    spool.intent.clear()
    assert spool.intent.read() is None


def _append_many(db_path: str, start: int, count: int) -> None:
    spool = Spool(db_path)
    for i in range(start, start + count):
        spool.append(txn(i, pages=1))
    spool.close()


def test_processes_appending_at_once_get_distinct_numbers(tmp_path: Any) -> None:
    path = str(tmp_path / "a.db")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(path, s, 150)) for s in (1000, 2000)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    spool = Spool(path)
    group = spool.read_group(1 << 30)
    assert [n for n, _ in group] == list(range(1, 301))
    seeds = sorted(min(b.pages) // 10 for _, b in group)
    assert seeds == list(range(1000, 1150)) + list(range(2000, 2150))
    assert all(b.pages == txn(min(b.pages) // 10, pages=1).pages for _, b in group)


@pytest.mark.parametrize("killed", [False, True], ids=["at-once", "killed-before-removal"])
def test_a_spool_of_bottomless_0_1_is_carried_over_once(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, killed: bool) -> None:
    """0.1 spooled into an SQLite database; its entries and intent must not be stranded, nor
    carried over twice by an open after one killed before it removed the 0.1 files."""
    db_path = str(tmp_path / "a.db")
    legacy = db_path + "-bottomless-spool"
    connection = sqlite3.connect(legacy)
    connection.executescript(
        "CREATE TABLE entry(n INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL,"
        " data BLOB NOT NULL);"
        "CREATE TABLE intent(id INTEGER PRIMARY KEY CHECK (id = 1), key TEXT NOT NULL,"
        " through INTEGER NOT NULL, data BLOB NOT NULL);"
    )
    for n, i in ((7, 1), (8, 2), (9, 3)):
        t = txn(i)
        batch = fmt.PageBatch(fmt.KIND_COMMIT, "spool", 0, PAGE, t.db_size, t.pages)
        connection.execute("INSERT INTO entry VALUES(?, ?, ?)",
                           (n, time.time(), fmt.encode_batch(batch, "none", 1)))
    connection.execute("INSERT INTO intent VALUES(1, 'k/commits/0000000000000004', 8, x'0102')")
    connection.commit()
    connection.close()

    spool = Spool(db_path)
    if killed:  # the entries are carried over, the 0.1 files not removed yet
        monkeypatch.setattr(legacy_spool.os, "unlink", _interrupted)
        with pytest.raises(KeyboardInterrupt):
            migrate_legacy(spool)
        monkeypatch.undo()
        assert os.path.exists(legacy)
    migrate_legacy(spool)
    assert not os.path.exists(legacy)
    group = spool.read_group(1 << 24)
    assert [b.pages for _, b in group] == [txn(1).pages, txn(2).pages, txn(3).pages]
    assert spool.intent.read() == Intent("k/commits/0000000000000004", b"\1\2", 2)
    migrate_legacy(spool)  # nothing left to move: a no-op
    assert spool.entries() == [1, 2, 3]
    assert spool.flags() == 0


def _interrupted(path: str) -> None:
    raise KeyboardInterrupt


def test_record_layout_is_length_number_time_crc(tmp_path: Any) -> None:
    """The layout documented in the module: what a recovery tool would parse by hand."""
    spool = Spool(str(tmp_path / "a.db"))
    spool.append(txn(1, pages=1))
    with open(spool.path, "rb") as stream:
        raw = stream.read()
    assert raw[:4] == b"BTLQ"
    length, number, created, _ = struct.unpack_from("<IQdI", raw, spool_module._DATA_START)
    assert number == 1 and abs(created - time.time()) < 60
    assert length == 12 + 4 + PAGE


# ---------------------------------------------------------------- faults of the file system


def test_short_writes_are_completed_never_published_torn(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pwrite`` may write less than it was given; an append (and a compaction) must write
    the rest before the header makes the record visible."""
    monkeypatch.setattr(spool_module, "_COMPACT_BYTES", 64 * 1024)
    monkeypatch.setattr(spool_module, "_PREALLOCATE", 16 * 1024)
    real_pwrite = os.pwrite

    def short_pwrite(fd: int, data: Any, offset: int) -> int:
        return real_pwrite(fd, memoryview(data)[:1000], offset)

    monkeypatch.setattr(os, "pwrite", short_pwrite)
    spool = Spool(str(tmp_path / "a.db"))
    for i in range(1, 41):
        spool.append(txn(i))  # about 8 KiB each: eight or nine short writes
    spool.remove_through(30)  # compacted to the front, by short writes too
    group = spool.read_group(1 << 24)
    assert [n for n, _ in group] == list(range(31, 41))
    assert all(batch.pages == txn(n).pages for n, batch in group)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG])
def test_no_room_on_disk_fails_the_append_and_publishes_nothing(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    monkeypatch.setattr(spool_module, "_PREALLOCATE", 0)  # every append allocates
    spool = Spool(str(tmp_path / "a.db"))
    spool.append(txn(1))
    real_fallocate = os.posix_fallocate
    full = True

    def fallocate(fd: int, offset: int, length: int) -> None:
        if full:
            raise OSError(code, os.strerror(code))
        real_fallocate(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    with pytest.raises(OSError) as info:
        spool.append(txn(2))
    assert info.value.errno == code
    assert spool.entries() == [1]
    full = False
    assert spool.append(txn(3)) == 2
    assert [b.pages for _, b in spool.read_group(1 << 24)] == [txn(1).pages, txn(3).pages]


def test_an_append_fits_where_the_step_ahead_does_not(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A nearly full disk: allocating the record alone still works."""
    real_fallocate = os.posix_fallocate

    def fallocate(fd: int, offset: int, length: int) -> None:
        if length > spool_module._PREALLOCATE:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fallocate(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    spool = Spool(str(tmp_path / "a.db"))
    assert spool.append(txn(1)) == 1
    assert [b.pages for _, b in spool.read_group(1 << 24)] == [txn(1).pages]


@pytest.mark.parametrize("code", [errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS])
def test_a_file_system_without_fallocate_still_takes_appends(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    def fallocate(fd: int, offset: int, length: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    spool = Spool(str(tmp_path / "a.db"))
    assert [spool.append(txn(i)) for i in (1, 2)] == [1, 2]
    assert [b.pages for _, b in spool.read_group(1 << 24)] == [txn(1).pages, txn(2).pages]


def test_an_entry_stamped_in_the_future_is_due_not_absent(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wall clock stepped back after an append: the entry's age would be negative."""
    ahead = types.SimpleNamespace(time=lambda: time.time() + 3600, monotonic=time.monotonic)
    monkeypatch.setattr(spool_module, "time", ahead)
    spool = Spool(str(tmp_path / "a.db"))
    spool.append(txn(1))
    monkeypatch.setattr(spool_module, "time", time)
    assert spool.oldest_age(if_future=2.5) == 2.5  # due, for a caller whose bound is 2.5 s
    assert spool.oldest_age() == 0.0  # a caller without a bound: no age to speak of
    assert spool.size_bytes() > 0 and spool.entries() == [1]  # spooled all the same
    spool.remove_through(1)
    assert spool.oldest_age(if_future=2.5) == 0.0 and spool.size_bytes() == 0


def test_nothing_is_read_for_upload_while_the_resync_mark_is_set(tmp_path: Any) -> None:
    """The mark and the entries are read under one lock: what was spooled after a commit that
    could not be spooled never ships before the new generation that holds that commit."""
    spool = Spool(str(tmp_path / "m.db"))
    spool.append(Transaction({1: b"a" * 512}, 1, 512))
    spool.mark_resync()
    assert spool.resync_needed() and spool.read_group(1 << 20) == []
    spool.mark_resync(False)
    assert not spool.resync_needed() and len(spool.read_group(1 << 20)) == 1
    spool.close()


def test_a_stale_commit_mark_is_settled_only_when_no_one_holds_the_write_lock(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The uploader's watch turns a commit mark that stays put into the resync mark, but only
    once SQLite's write lock is free: while a connection holds it, the mark may be a live
    committer's (held up by back-pressure) and must stay as it is."""
    monkeypatch.setattr(commit_mark, "STALE_SECONDS", 0.05)
    path = str(tmp_path / "app.db")
    holder = apsw.Connection(path)  # the SQLite that bottomless's own connections use
    holder.execute("CREATE TABLE t(x)")
    spool = Spool(path)
    watch = commit_mark.CommitMarkWatch(spool, functools.partial(sqlite_write_lock, path),
                                         path)
    holder.execute("BEGIN IMMEDIATE")
    assert not spool.begin_commit()
    for _ in range(3):
        watch.settle()
        time.sleep(0.06)
    assert spool.commit_mark() == 1 and not spool.resync_needed()
    holder.execute("ROLLBACK")
    holder.close()
    watch.settle()
    assert spool.commit_mark() is None and spool.resync_needed()


def test_a_commit_mark_that_moves_on_is_never_settled(tmp_path: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Committers that keep passing their commit points (each mark cleared by its append, the
    next one at a new number) are not taken for a killed one, however often the watch looks."""
    monkeypatch.setattr(commit_mark, "STALE_SECONDS", 0.05)
    path = str(tmp_path / "app.db")
    sqlite3.connect(path).close()
    spool = Spool(path)
    watch = commit_mark.CommitMarkWatch(spool, functools.partial(sqlite_write_lock, path),
                                         path)
    for seed in range(4):
        spool.begin_commit()
        watch.settle()
        time.sleep(0.06)
        spool.append(txn(seed), marked=True)
    watch.settle()
    assert not spool.resync_needed() and spool.entries() == [1, 2, 3, 4]


def test_a_write_lock_that_cannot_be_tried_leaves_the_mark_and_the_uploads_going(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The watch runs in the uploader's turn: an error taking the lock (the database removed,
    read-only for this process) is logged and tried again later, never raised into it."""
    monkeypatch.setattr(commit_mark, "STALE_SECONDS", 0.0)
    path = str(tmp_path / "app.db")
    spool = Spool(path)
    tries: list[bool] = []

    def cannot_open(*, wait: bool = True) -> Any:
        tries.append(wait)
        raise OSError(errno.EACCES, "read-only here")

    watch = commit_mark.CommitMarkWatch(spool, cannot_open, path)
    spool.begin_commit()
    for _ in range(6):
        watch.settle()
    assert tries == [False]  # one try, then a pause of RETRY_SECONDS
    assert spool.commit_mark() == 1 and not spool.resync_needed()
    assert "read-only here" in caplog.text

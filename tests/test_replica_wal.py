"""The follower's WAL and wal-index writing, its position record and bookmarks, in isolation.

The wal-index the follower builds must be the one SQLite builds: the strongest check is to
let SQLite's own recovery rebuild it from the same WAL and compare them byte for byte.
"""

from __future__ import annotations

import array
import os
import random
import shutil
import struct
from typing import Any

import apsw
import pytest

import bottomless
from bottomless.replica import bookmark_from_status, parse_bookmark
from bottomless.replica.local import set_wal_mode
from bottomless.replica.position import Point, Position, PositionFile, read_position
from bottomless.replica.wal import (
    BLOCK_SIZE,
    HASH_OFFSET,
    INDEX_RESERVED,
    IndexHeader,
    WalEnd,
    WalFile,
    block_of,
)

PAGE = 1024


def read(path: str) -> bytes:
    """A whole file."""
    with open(path, "rb") as handle:
        return handle.read()


def make_db(path: str, pages: int) -> apsw.Connection:
    """A WAL database of ``pages`` pages of PAGE bytes, and a connection that holds it open."""
    plain = apsw.Connection(path)
    plain.execute(f"PRAGMA page_size={PAGE}")
    plain.execute("CREATE TABLE t(x BLOB)")
    with plain:
        while plain.execute("PRAGMA page_count").fetchone()[0] < pages:
            plain.execute("INSERT INTO t VALUES(zeroblob(900))")
    plain.close()
    set_wal_mode(path)
    return apsw.Connection(path)


def append(connection: apsw.Connection, wal: WalFile, pages: dict[int, bytes],
           db_size: int) -> IndexHeader:
    """One commit through the follower's protocol: lock, append, publish."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        header = wal.index_header()
        assert header is not None
        new = wal.publish(header, wal.append(header, sorted(pages.items()), db_size, PAGE))
    finally:
        connection.execute("COMMIT")
    return new


def index_blocks(shm: bytes, max_frame: int) -> list[tuple[list[int], list[int]]]:
    """Page numbers and hash slots of each block indexing frames ``1..max_frame``."""
    blocks = []
    for block in range(block_of(max_frame) + 1):
        raw = shm[block * BLOCK_SIZE:(block + 1) * BLOCK_SIZE]
        start = INDEX_RESERVED if block == 0 else 0
        blocks.append((list(array.array("I", raw[start:HASH_OFFSET])),
                       list(array.array("H", raw[HASH_OFFSET:]))))
    return blocks


def test_the_wal_index_is_the_one_sqlite_recovery_builds(tmp_path: Any) -> None:
    path = str(tmp_path / "replica.db")
    db_pages = 60
    connection = make_db(path, db_pages)
    wal = WalFile(path)
    rng = random.Random(1)
    original = read(path)
    for _ in range(700):  # ~4700 frames: past the first block (4062 frames)
        chosen = rng.sample(range(2, db_pages + 1), rng.randint(1, 12))
        pages = {n: rng.randbytes(PAGE) for n in chosen}
        pages[1] = original[:PAGE]  # page 1 stays a valid header
        header = append(connection, wal, pages, db_pages)
    assert header.max_frame > 4062 + 100 and block_of(header.max_frame) == 1
    mine = read(path + "-shm")
    copy = str(tmp_path / "copy.db")
    shutil.copy(path, copy)
    shutil.copy(path + "-wal", copy + "-wal")
    theirs_connection = apsw.Connection(copy)  # no -shm: SQLite rebuilds it from the WAL
    assert theirs_connection.execute("PRAGMA page_count").fetchone() == (db_pages,)
    theirs = read(copy + "-shm")
    rebuilt = IndexHeader.parse(theirs[:96])
    assert rebuilt is not None
    assert (rebuilt.max_frame, rebuilt.db_size, rebuilt.salt, rebuilt.frame_checksum,
            rebuilt.page_size) == (header.max_frame, header.db_size, header.salt,
                                   header.frame_checksum, header.page_size)
    assert index_blocks(mine, header.max_frame) == index_blocks(theirs, header.max_frame)
    theirs_connection.close()
    connection.close()


def test_a_fresh_cycle_after_truncate_and_stale_entries_are_cleaned(tmp_path: Any) -> None:
    path = str(tmp_path / "replica.db")
    connection = make_db(path, 8)
    wal = WalFile(path)
    original = read(path)
    page1, page3, page4 = (original[(n - 1) * PAGE:n * PAGE] for n in (1, 3, 4))
    first = append(connection, wal, {1: page1, 3: page3}, 8)
    # an append that never got published (a follower killed before publishing)
    connection.execute("BEGIN IMMEDIATE")
    header = wal.index_header()
    assert header is not None
    stale = wal.append(header, [(5, b"\x01" * PAGE), (6, b"\x02" * PAGE)], 8, PAGE)
    wal.publish(header, stale)
    fd = os.open(path + "-shm", os.O_RDWR)
    os.pwrite(fd, first.encode(), 0)  # back to the published end, the stale entries stay
    os.pwrite(fd, first.encode(), 48)
    os.close(fd)
    connection.execute("COMMIT")
    after = append(connection, wal, {1: page1, 4: page4}, 8)
    assert after.max_frame == first.max_frame + 2
    blocks = index_blocks(read(path + "-shm"), after.max_frame)
    numbers, slots = blocks[0]
    assert numbers[:4] == [1, 3, 1, 4] and not any(numbers[4:])
    assert sorted(s for s in slots if s) == [1, 2, 3, 4]
    reader = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    assert reader.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    reader.close()
    connection.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    emptied = wal.index_header()
    assert emptied is not None and emptied.max_frame == 0
    fresh = append(connection, wal, {1: page1, 3: page3}, 8)
    assert fresh.max_frame == 2 and fresh.salt != after.salt
    assert fresh.salt[:4] == (int.from_bytes(emptied.salt[:4], "big") + 1).to_bytes(4, "big")
    reader = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    assert reader.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    reader.close()
    connection.close()


def test_index_header_round_trip_and_torn_copies(tmp_path: Any) -> None:
    header = IndexHeader(7, False, 65536, 4100, 33, (1, 2), b"\x00\x00\x00\x05abcd")
    encoded = header.encode()
    assert IndexHeader.parse(encoded * 2) == header
    assert struct.unpack_from("=H", encoded, 14) == (1,)  # 64 KiB is stored as 1
    torn = bytearray(encoded * 2)
    torn[60] ^= 1
    assert IndexHeader.parse(bytes(torn)) is None  # the copies differ
    bad = bytearray(encoded)
    bad[24] ^= 1
    assert IndexHeader.parse(bytes(bad) * 2) is None  # checksum


def test_scan_stops_at_a_bad_frame_and_names_commit_ends(tmp_path: Any) -> None:
    path = str(tmp_path / "replica.db")
    connection = make_db(path, 4)
    wal = WalFile(path)
    page1 = read(path)[:PAGE]
    one = append(connection, wal, {1: page1, 2: bytes(PAGE)}, 4)
    two = append(connection, wal, {1: page1, 3: bytes(PAGE)}, 4)
    scan = wal.scan()
    assert scan is not None and sorted(scan.commits) == [2, 4]
    assert scan.holds(WalEnd(two.salt, 4, two.frame_checksum))
    assert not scan.holds(WalEnd(two.salt, 4, (0, 0)))
    with open(path + "-wal", "r+b") as handle:
        handle.seek(32 + 2 * (24 + PAGE) + 24 + 100)
        handle.write(b"\xff")  # frame 3 damaged: frame 4 cannot count
    damaged = wal.scan()
    assert damaged is not None and sorted(damaged.commits) == [2]
    assert damaged.holds(WalEnd(one.salt, 2, one.frame_checksum))
    connection.close()


def test_position_file_keeps_the_last_whole_record(tmp_path: Any) -> None:
    db = str(tmp_path / "replica.db")
    records = PositionFile(db)
    first = Position("x.db", 4096, Point("20260101T000000000Z-00000000", 1, "aa"))
    records.create(first)
    second = Position("x.db", 4096, Point("20260101T000000000Z-00000000", 2, "bb"),
                      base=first.current)
    records.write(second)
    assert read_position(db) == second
    third = Position("x.db", 8192, Point("20260101T000000000Z-00000000", 3, "cc",
                                         wal=WalEnd(b"12345678", 9, (1, 2))))
    records.write(third, durable=False)
    assert read_position(db) == third
    with open(records.path, "r+b") as handle:  # the newest slot torn by a crash
        handle.seek(4096 * (3 % 2) + 40)
        handle.write(b"#####")
    assert read_position(db) == second
    records.close()
    with open(records.path, "wb") as handle:
        handle.write(b"garbage")
    with pytest.raises(bottomless.ReplicaConflictError, match="no valid"):
        read_position(db)
    assert "read replica" in Position("x.db", 1024, first.current).to_json()["note"]


def test_bookmarks() -> None:
    text = bookmark_from_status({"generation": "20260101T000000000Z-0a0b0c0d",
                                 "last_replicated_commit": 42})
    mark = parse_bookmark(text)
    assert (mark.generation, mark.seq) == ("20260101T000000000Z-0a0b0c0d", 42)
    assert str(mark) == text
    for bad in ("", "1:x:2", "2:20260101T000000000Z-0a0b0c0d:1",
                "1:20260101T000000000Z-0a0b0c0d:-1"):
        with pytest.raises(bottomless.ConfigError):
            parse_bookmark(bad)
    with pytest.raises(bottomless.BottomlessError, match="no replicated commit"):
        bookmark_from_status({"db_name": "x", "generation": None,
                              "last_replicated_commit": None})

"""Snapshots inside a generation, incremental parts, point-in-time restore, crash branches."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import apsw
import pytest
from helpers import ForwardingStore, integrity, plant_commit, remove_db, replicator, rows

import bottomless
from bottomless import format as fmt
from bottomless.backends.base import PageStore
from bottomless.errors import StoreError
from bottomless.ops.snapshots import read_manifest, snapshot_seqs
from bottomless.ops.targets import commit_numbers, generations, resolve_target

MakeSettings = Callable[..., bottomless.Settings]


def _fill(db: Any, rows_: int) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB)")
    with db:
        for _ in range(rows_):
            db.execute("INSERT INTO t(v) VALUES(randomblob(3000))")


def test_snapshots_are_taken_and_reuse_unchanged_parts(
    tmp_path: Any, backend: str, make_settings: MakeSettings
) -> None:
    settings = make_settings(backend, snapshot_interval_commits=3, snapshot_part_mb=1)
    path = str(tmp_path / "snap.db")
    db = bottomless.connect(path, settings)
    _fill(db, 1100)  # ~1100 pages: 5 parts of 256 pages
    for i in range(8):
        replicator(path).wait_snapshot(60)
        db.execute("UPDATE t SET v = randomblob(3000) WHERE id = ?", (1 + i,))
    replicator(path).wait_snapshot(60)
    generation = bottomless.status(db)["generation"]
    store = replicator(path).store
    seqs = snapshot_seqs(store, "snap.db", generation)
    assert len(seqs) >= 2 and seqs[0] == 0
    newest = read_manifest(store, "snap.db", generation, seqs[-1])
    assert len(newest.parts) >= 4
    reused = [p for p in newest.parts if f"/parts/{seqs[-1]:016d}-" not in p["key"]]
    assert reused, "an unchanged part was uploaded again"
    assert len(reused) >= len(newest.parts) - 2
    expected = db.execute("SELECT * FROM t ORDER BY id").fetchall()
    db.close()
    copy = str(tmp_path / "copy.db")
    result = bottomless.restore(copy, settings, db_name="snap.db")
    assert integrity(copy) == "ok" and rows(copy, "SELECT * FROM t ORDER BY id") == expected
    commits_after_snapshot = result.seq - seqs[-1]
    assert result.objects <= len(newest.parts) + commits_after_snapshot + 1


def test_point_in_time_by_commit_and_timestamp(tmp_path: Any, backend: str,
                                               make_settings: MakeSettings) -> None:
    settings = make_settings(backend, snapshot_interval_commits=4)
    path = str(tmp_path / "pitr.db")
    db = bottomless.connect(path, settings)
    db.execute("CREATE TABLE t(x)")
    history: list[tuple[int, list[Any], dt.datetime]] = []
    for i in range(12):
        db.execute("INSERT INTO t VALUES(?)", (i,))
        seq = bottomless.status(db)["last_replicated_commit"]
        history.append((seq, db.execute("SELECT x FROM t ORDER BY x").fetchall(),
                        dt.datetime.now(dt.UTC)))
        time.sleep(0.02)
    replicator(path).wait_snapshot(30)
    db.close()
    for seq, expected, moment in (history[2], history[5], history[9]):
        by_commit = str(tmp_path / f"c{seq}.db")
        bottomless.restore(by_commit, settings, db_name="pitr.db", commit=seq)
        assert rows(by_commit, "SELECT x FROM t ORDER BY x") == expected
        by_time = str(tmp_path / f"t{seq}.db")
        result = bottomless.restore(by_time, settings, db_name="pitr.db", timestamp=moment)
        assert result.seq == seq
        assert rows(by_time, "SELECT x FROM t ORDER BY x") == expected
    with pytest.raises(bottomless.RestoreError, match="restorable commits are"):
        bottomless.restore(str(tmp_path / "x.db"), settings, db_name="pitr.db", commit=999)
    with pytest.raises(bottomless.RestoreError, match="earliest restorable point"):
        bottomless.restore(str(tmp_path / "y.db"), settings, db_name="pitr.db",
                           timestamp=dt.datetime(2001, 1, 1, tzinfo=dt.UTC))


class LostAckStore(ForwardingStore):
    """Stores the object, then reports a failure: the server got it, the client never knew."""

    def __init__(self, inner: PageStore) -> None:
        super().__init__(inner)
        self.armed = False
        self.blind: str | None = None  # the connection stays down for the follow-up GET

    def put_if_absent(self, key: str, data: bytes) -> None:
        self.inner.put_if_absent(key, data)
        if self.armed and "/commits/" in key:
            self.armed = False
            self.blind = key
            raise StoreError(f"{self.location}: PUT {key} failed: connection reset (injected)")

    def get(self, key: str) -> bytes:
        if key == self.blind:
            self.blind = None
            raise StoreError(f"{self.location}: GET {key} failed: connection reset (injected)")
        return self.inner.get(key)


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_orphan_commit_branches_cheaply_on_reopen(tmp_path: Any, make_settings: MakeSettings,
                                                  mode: str) -> None:
    settings = make_settings("file", snapshot_part_mb=1, snapshot_interval_commits=3)
    path = str(tmp_path / "orphan.db")
    db = bottomless.connect(path, settings)
    db.execute(f"PRAGMA journal_mode={mode}")
    _fill(db, 1000)
    db.execute("UPDATE t SET v = x'00' WHERE id = 1")
    rep = replicator(path)
    rep.wait_snapshot(60)
    first_generation = bottomless.status(db)["generation"]
    lossy = LostAckStore(rep.store)
    rep.store = lossy
    lossy.armed = True
    with pytest.raises(apsw.IOError):
        db.execute("INSERT INTO t(v) VALUES(x'00')")
    expected = db.execute("SELECT * FROM t ORDER BY id").fetchall()
    db.close()
    # the bucket holds commit N+1, the local file does not: reopening branches at N
    db = bottomless.connect(path, settings)
    status = bottomless.status(db)
    assert status["generation"] != first_generation
    store = replicator(path).store
    base = read_manifest(store, "orphan.db", status["generation"], 0)
    assert base.reason == "branch" and base.base is not None
    assert base.base["generation"] == first_generation
    old = [p for p in base.parts if first_generation in p["key"]]
    assert len(old) >= len(base.parts) - 1, "unchanged parts were uploaded again"
    db.execute("INSERT INTO t(v) VALUES(x'01')")
    expected = db.execute("SELECT * FROM t ORDER BY id").fetchall()
    db.close()
    copy = str(tmp_path / "after.db")
    bottomless.restore(copy, settings, db_name="orphan.db")
    assert integrity(copy) == "ok" and rows(copy, "SELECT * FROM t ORDER BY id") == expected


def test_commit_recorded_late_is_not_a_new_generation(tmp_path: Any,
                                                      make_settings: MakeSettings) -> None:
    settings = make_settings("file")
    path = str(tmp_path / "late.db")
    db = bottomless.connect(path, settings)
    db.execute("CREATE TABLE t(x)")
    db.execute("INSERT INTO t VALUES(1)")
    shutil.copy(path + "-bottomless", str(tmp_path / "state-before"))
    db.execute("INSERT INTO t VALUES(2)")
    generation = bottomless.status(db)["generation"]
    db.close()
    # as if the process died after committing locally but before recording it
    shutil.copy(str(tmp_path / "state-before"), path + "-bottomless")
    db = bottomless.connect(path, settings)
    assert bottomless.status(db)["generation"] == generation
    db.execute("INSERT INTO t VALUES(3)")
    db.close()
    copy = str(tmp_path / "late-copy.db")
    bottomless.restore(copy, settings, db_name="late.db")
    assert rows(copy) == [(1,), (2,), (3,)]


def test_restore_never_touches_the_bucket(tmp_path: Any, make_settings: MakeSettings) -> None:
    settings = make_settings("file", snapshot_interval_commits=2)
    path = str(tmp_path / "ro.db")
    db = bottomless.connect(path, settings)
    _fill(db, 10)
    for i in range(5):
        db.execute("DELETE FROM t WHERE id = ?", (i,))
    replicator(path).wait_snapshot(30)
    db.close()
    store = bottomless.open_store(settings)
    before = {k: store.get(k) for k in store.list_keys("ro.db/")}
    remove_db(path)
    bottomless.restore(str(tmp_path / "r1.db"), settings, db_name="ro.db")
    target = resolve_target(store, "ro.db")
    bottomless.restore(str(tmp_path / "r2.db"), settings, db_name="ro.db", commit=target.seq - 1)
    after = {k: store.get(k) for k in store.list_keys("ro.db/")}
    assert before == after
    assert len(generations(store, "ro.db")) == 1
    assert commit_numbers(store, "ro.db", target.generation)[-1] == target.seq
    assert fmt.is_generation_id(target.generation)


def test_compression_can_change_and_old_objects_stay_readable(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    plain = make_settings("file", compression="none")
    path = str(tmp_path / "z.db")
    db = bottomless.connect(path, plain)
    db.execute("CREATE TABLE t(x)")
    db.execute("INSERT INTO t VALUES(hex(zeroblob(3000)))")  # very compressible
    db.close()
    packed = plain.model_copy(update={"compression": "zstd"})
    db = bottomless.connect(path, packed)
    db.execute("INSERT INTO t VALUES(hex(zeroblob(3000)))")
    db.close()
    store = bottomless.open_store(plain)
    generation = resolve_target(store, "z.db").generation
    sizes = [len(store.get(fmt.commit_key("z.db", generation, s))) for s in (2, 3)]
    assert sizes[1] < sizes[0] / 4, f"zstd commit not smaller: {sizes}"
    copy = str(tmp_path / "z-copy.db")
    bottomless.restore(copy, packed, db_name="z.db")
    assert integrity(copy) == "ok" and len(rows(copy)) == 2


@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_a_fork_over_an_orphan_is_recorded_only_at_its_commit_point(
    tmp_path: Any, make_settings: MakeSettings, mode: str
) -> None:
    """A commit that meets an orphan of this writer starts a new generation whose snapshot
    holds the commit. If the local commit then fails, the new generation must not become the
    one replication continues: its snapshot holds a transaction that never committed."""
    from bottomless.local.files import read_state

    settings = make_settings("file")
    path = str(tmp_path / "fork.db")
    db = bottomless.connect(path, settings)
    db.execute(f"PRAGMA journal_mode={mode}")
    db.execute("CREATE TABLE t(x)")
    db.execute("INSERT INTO t VALUES(1)")
    rep = replicator(path)
    state = read_state(path)
    assert state is not None
    plant_commit(path, state.seq + 1, state.digest_bytes)  # what a killed process leaves
    upload = rep.replicate

    def upload_then_fail(txn: Any, image: Any = None) -> None:
        upload(txn, image)  # the fork is uploaded here...
        raise StoreError("the local commit failed")  # ...and the commit goes no further

    rep.replicate = upload_then_fail
    with pytest.raises(apsw.IOError):
        db.execute("INSERT INTO t VALUES(2)")
    del rep.replicate
    after = read_state(path)
    assert after is not None and after.generation == state.generation, "fork recorded early"
    assert bottomless.status(db)["generation"] == state.generation
    db.execute("INSERT INTO t VALUES(3)")  # meets the orphan again: a fork from what is local
    local = db.execute("SELECT x FROM t ORDER BY x").fetchall()
    db.close()
    assert local == [(1,), (3,)]
    copy = str(tmp_path / "copy.db")
    bottomless.restore(copy, settings, db_name="fork.db")
    assert integrity(copy) == "ok" and rows(copy, "SELECT x FROM t ORDER BY x") == local


@pytest.mark.parametrize("unlike_an_orphan", ["not_chained", "followed"])
def test_a_commit_of_this_writer_unlike_an_orphan_is_a_conflict(
    tmp_path: Any, make_settings: MakeSettings, unlike_an_orphan: str
) -> None:
    """Only a commit chained to this writer's position, with nothing after it, is taken for
    the orphan of a killed process; anything else carrying this writer id (a copy of the
    database and its side files writing elsewhere) is refused, not forked over."""
    from bottomless.local.files import read_state

    settings = make_settings("file")
    path = str(tmp_path / "copy.db")
    db = bottomless.connect(path, settings)
    db.execute("CREATE TABLE t(x)")
    db.execute("INSERT INTO t VALUES(1)")
    state = read_state(path)
    assert state is not None
    prev = bytes(32) if unlike_an_orphan == "not_chained" else state.digest_bytes
    for seq in (state.seq + 1, state.seq + 2)[: 1 if unlike_an_orphan == "not_chained" else 2]:
        prev = plant_commit(path, seq, prev)
    with pytest.raises(apsw.IOError) as failure:
        db.execute("INSERT INTO t VALUES(2)")
    assert "another writer" in str(failure.value.__cause__)
    assert bottomless.status(db)["generation"] == state.generation
    db.close()


def _fail_wal_commit_frame(db: apsw.Connection, path: str, sql: str) -> None:
    """Run ``sql`` so that its upload succeeds but writing its commit frame into the WAL does
    not (the file may not grow: a full disk, as far as SQLite can tell)."""
    import resource
    import signal

    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # room for the commit frame's 24-byte header, not for its page
    resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(path + "-wal") + 100, hard))
    try:
        with pytest.raises(apsw.Error):
            db.execute(sql)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_a_commit_that_fails_after_its_upload_is_never_recorded(
    tmp_path: Any, make_settings: MakeSettings, mode: str
) -> None:
    """The upload happens before SQLite's commit point; if that point then fails, a later
    commit point (even of a write transaction that changes nothing) must not record the failed
    transaction as replicated, or later commits would chain onto a state the file never had."""
    settings = make_settings("memory")  # the store writes no file: only SQLite's write fails
    path = str(tmp_path / "failed.db")
    db = bottomless.connect(path, settings)
    db.execute(f"PRAGMA journal_mode={mode}")
    db.execute("CREATE TABLE t(x); CREATE TABLE u(y)")
    db.execute("INSERT INTO t VALUES(1)")
    generation = bottomless.status(db)["generation"]
    rep = replicator(path)
    if mode == "wal":
        _fail_wal_commit_frame(db, path, "INSERT INTO u VALUES('never committed')")
    else:
        upload = rep.replicate

        def upload_then_fail(txn: Any, image: Any = None) -> None:
            upload(txn, image)
            raise StoreError("the journal could not be deleted")

        rep.replicate = upload_then_fail
        with pytest.raises(apsw.IOError):
            db.execute("INSERT INTO u VALUES('never committed')")
        del rep.replicate
    assert db.execute("SELECT count(*) FROM u").fetchall() == [(0,)]
    db.execute("BEGIN IMMEDIATE; COMMIT")  # a commit point with nothing to replicate
    db.execute("UPDATE t SET x = x WHERE 0")
    db.execute("INSERT INTO t VALUES(2)")
    local = db.execute("SELECT x FROM t ORDER BY x").fetchall()
    assert local == [(1,), (2,)]
    assert bottomless.status(db)["generation"] != generation, "the orphan was forked over"
    copy = str(tmp_path / "copy.db")
    bottomless.restore(copy, settings, db_name="failed.db")
    db.close()
    assert integrity(copy) == "ok" and rows(copy, "SELECT x FROM t ORDER BY x") == local
    assert rows(copy, "SELECT * FROM u") == [], "a transaction that never committed"


def test_a_commit_that_fails_while_sqlite_fixes_its_checksums_is_never_recorded(
    tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction that rewrote a WAL frame in place is recorded only once SQLite has fixed
    the checksums, which ends with its commit frame's header. If SQLite fails in between
    without a failing write (here a read of the WAL fails), nothing may record it later."""
    from bottomless.sqlite import vfs

    settings = make_settings("memory")
    path = str(tmp_path / "deferred.db")
    db = bottomless.connect(path, settings)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t(x); CREATE TABLE u(id INTEGER PRIMARY KEY, v BLOB)")
    db.execute("INSERT INTO t VALUES(1)")
    db.execute("PRAGMA cache_size=2")  # spills: pages written again are rewritten in place
    failed = []

    def read_failing_while_deferred(self: Any, amount: int, offset: int) -> bytes:
        if self.awaiting_fixup:
            failed.append(offset)
            raise apsw.IOError("the WAL cannot be read back")
        return bytes(apsw.VFSFile.xRead(self, amount, offset))

    monkeypatch.setattr(vfs.WalFile, "xRead", read_failing_while_deferred, raising=False)
    with pytest.raises(apsw.Error), db:
        for i in range(1000):
            db.execute("INSERT INTO u VALUES(?, randomblob(300))", (i,))
        for j in range(5):
            db.execute("UPDATE u SET v = randomblob(300) WHERE id % 7 = ?", (j,))
    monkeypatch.undo()
    assert failed, "the commit never waited for its checksums"
    assert db.execute("SELECT count(*) FROM u").fetchall() == [(0,)]
    db.execute("BEGIN IMMEDIATE; COMMIT")  # a commit point with nothing to replicate
    db.execute("INSERT INTO t VALUES(2)")
    local = db.execute("SELECT x FROM t ORDER BY x").fetchall()
    copy = str(tmp_path / "copy.db")
    bottomless.restore(copy, settings, db_name="deferred.db")
    db.close()
    assert integrity(copy) == "ok" and rows(copy, "SELECT x FROM t ORDER BY x") == local
    assert rows(copy, "SELECT count(*) FROM u") == [(0,)], "a transaction that never committed"


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_a_commit_whose_wal_sync_fails_is_taken_back(
    tmp_path: Any, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch,
    durability: str,
) -> None:
    """With synchronous=FULL, SQLite syncs the WAL after the commit frame, where bottomless
    has already recorded (or spooled) the commit. If that sync fails, SQLite reports the
    commit as failed and later overwrites its frames: the record must be taken back."""
    from bottomless.sqlite import vfs

    settings = make_settings("memory", durability=durability)
    path = str(tmp_path / "unsynced.db")
    db = bottomless.connect(path, settings)
    db.execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t(x); CREATE TABLE u(y)")
    db.execute("INSERT INTO t VALUES(1)")

    def failing_sync(file: Any, flags: int) -> None:
        raise apsw.IOError("fsync: input/output error")

    monkeypatch.setattr(vfs, "_wal_sync", failing_sync)
    with pytest.raises(apsw.Error):
        db.execute("INSERT INTO u VALUES('never committed')")
    monkeypatch.undo()
    assert db.execute("SELECT count(*) FROM u").fetchall() == [(0,)]
    db.execute("BEGIN IMMEDIATE; COMMIT")
    db.execute("INSERT INTO t VALUES(2)")
    bottomless.wait_durable(db, 30)
    local = db.execute("SELECT x FROM t ORDER BY x").fetchall()
    assert local == [(1,), (2,)]
    copy = str(tmp_path / "copy.db")
    bottomless.restore(copy, settings, db_name="unsynced.db")
    db.close()
    assert integrity(copy) == "ok" and rows(copy, "SELECT x FROM t ORDER BY x") == local
    assert rows(copy, "SELECT * FROM u") == [], "a transaction SQLite reported as failed"


def test_restores_of_a_branched_generation_leave_its_orphan_out(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    """A commit whose upload stood but whose local commit did not (the store's answer was
    lost) is an orphan: the writer's next open branches a generation at the commit before.
    A restore by time, or of that generation's newest commit, must not land on the orphan,
    a state the surviving history never had."""
    from bottomless.ops.targets import commit_header

    settings = make_settings("file")
    path = str(tmp_path / "b.db")
    db = bottomless.connect(path, settings)
    db.execute("CREATE TABLE t(x); INSERT INTO t VALUES ('acknowledged')")
    status = bottomless.status(db)
    first, kept = status["generation"], status["last_replicated_commit"]
    lossy = LostAckStore(replicator(path).store)
    replicator(path).store = lossy
    lossy.armed = True
    with pytest.raises(apsw.IOError):
        db.execute("INSERT INTO t VALUES ('orphan')")
    db.close()
    store = bottomless.open_store(settings)
    orphan_ms = commit_header(store, "b.db", first, kept + 1).created_ms
    store.close()
    time.sleep(0.05)
    db = bottomless.connect(path, settings)  # branches at the commit before
    assert bottomless.status(db)["generation"] != first
    db.close()
    moment = dt.datetime.fromtimestamp((orphan_ms + 10) / 1000, dt.UTC)
    for how in ({"timestamp": moment}, {"generation": first}):
        target = str(tmp_path / f"at-{len(how)}-{'timestamp' in how}.db")
        result = bottomless.restore(target, settings, db_name="b.db", **how)
        assert (result.generation, result.seq) == (first, kept), how
        assert rows(target, "SELECT x FROM t") == [("acknowledged",)]
    with pytest.raises(bottomless.RestoreError, match=f"restorable commits are 0..{kept}"):
        bottomless.restore(str(tmp_path / "orphan.db"), settings, db_name="b.db",
                           generation=first, commit=kept + 1)

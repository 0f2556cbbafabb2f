"""gc builds a snapshot at the retention boundary, so the log before it can go (issue #15).

Many small updates (merged into fewer commit objects in async durability) leave a log that
no background snapshot covers; gc snapshots the state the window starts from, then deletes
the log and the snapshots before it. The bucket must end up at most 1.5 times the database's
size, with every point inside the window restoring exactly as before.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import time
from collections.abc import Callable
from typing import Any

import apsw
import pytest
from helpers import ForwardingStore, integrity, replicator, rows

import bottomless
from bottomless import format as fmt
from bottomless.backends.base import PageStore
from bottomless.ops import retention
from bottomless.ops.snapshots import compact, read_manifest, snapshot_seqs
from bottomless.ops.targets import commit_header, commit_numbers, generations

MakeSettings = Callable[..., bottomless.Settings]
#: what the bucket may hold after gc, as a multiple of the database's size (issue #15)
MAX_RATIO = 1.5
ROWS = 20_000
SELECT = "SELECT id, v FROM t ORDER BY id"


def bucket_bytes(settings: bottomless.Settings, db_name: str) -> int:
    """The size of every object under ``db_name``'s prefix (file backend)."""
    root = os.path.join(settings.bucket, db_name)
    return sum(
        os.path.getsize(os.path.join(directory, name))
        for directory, _, names in os.walk(root) for name in names
    )


def db_bytes(path: str) -> int:
    """page_count * page_size of a database file."""
    db = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        count = db.execute("PRAGMA page_count").fetchall()[0][0]
        size = db.execute("PRAGMA page_size").fetchall()[0][0]
        return int(count) * int(size)
    finally:
        db.close()


def bucket_state(settings: bottomless.Settings, db_name: str) -> dict[str, int]:
    """Key to size of every object under ``db_name``'s prefix (file backend)."""
    root = os.path.abspath(settings.bucket)
    found = {}
    for directory, _, names in os.walk(os.path.join(root, db_name)):
        for name in names:
            path = os.path.join(directory, name)
            found[os.path.relpath(path, root).replace(os.sep, "/")] = os.path.getsize(path)
    return found


def update(db: Any, rng: random.Random, count: int) -> None:
    """``count`` small transactions, each changing one row."""
    for _ in range(count):
        db.execute("UPDATE t SET v=? WHERE id=?", (rng.randbytes(60), rng.randrange(ROWS)))


def settle(db: Any, path: str) -> None:
    """Everything committed so far is in the bucket, snapshots included."""
    bottomless.wait_durable(db, timeout=60)
    replicator(path).wait_snapshot(60)


def new_database(tmp_path: Any, settings: bottomless.Settings, name: str) -> tuple[str, Any]:
    """A replicated table of ``ROWS`` rows of ~70 bytes, in WAL mode."""
    path = str(tmp_path / name)
    db = bottomless.connect(path, settings)
    db.execute("PRAGMA journal_mode=wal")
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    rng = random.Random(0)
    with db:
        for i in range(ROWS):
            db.execute("INSERT INTO t VALUES(?, ?)", (i, rng.randbytes(60)))
    settle(db, path)
    return path, db


def restore_rows(tmp_path: Any, settings: bottomless.Settings, db_name: str,
                 **target: Any) -> list[Any]:
    """Restore one point into a new file; check it and return its rows."""
    out = str(tmp_path / f"point-{os.urandom(4).hex()}.db")
    bottomless.restore(out, settings, db_name=db_name, **target)
    try:
        assert integrity(out) == "ok", target
        return rows(out, SELECT)
    finally:
        os.unlink(out)


def unreferenced_parts(store: PageStore, db_name: str) -> set[str]:
    """The snapshot parts of ``db_name`` that no snapshot lists."""
    listed, parts = set(), set()
    for generation in generations(store, db_name):
        parts.update(store.list_keys(fmt.parts_prefix(db_name, generation)))
        for seq in snapshot_seqs(store, db_name, generation):
            listed.update(str(p["key"]) for p in read_manifest(store, db_name, generation,
                                                                seq).parts)
    return parts - listed


def window_points(store: PageStore, db_name: str, generation: str, boundary: int,
                  window_ms: int) -> list[dict[str, Any]]:
    """Restore targets inside the window: its start and the first commit after it, by time,
    and every commit from the boundary on, by number."""
    commits = [c for c in commit_numbers(store, db_name, generation) if c >= boundary]
    first_inside = commit_header(store, db_name, generation, commits[1]).created_ms
    return [
        {"timestamp": dt.datetime.fromtimestamp(ms / 1000, dt.UTC)}
        for ms in (window_ms, first_inside)
    ] + [{"generation": generation, "commit": seq} for seq in commits]


@pytest.mark.parametrize(("durability", "updates"), [("async", 10_000), ("sync", 2_500)])
def test_gc_snapshots_the_boundary_and_trims_the_log(
    tmp_path: Any, make_settings: MakeSettings, durability: str, updates: int
) -> None:
    settings = make_settings("file", durability=durability)
    path, db = new_database(tmp_path, settings, "app.db")
    rng = random.Random(1)
    update(db, rng, updates)
    settle(db, path)
    store = bottomless.open_store(settings)
    generation = bottomless.status(db)["generation"]
    boundary = commit_numbers(store, "app.db", generation)[-1]
    assert boundary not in snapshot_seqs(store, "app.db", generation)
    time.sleep(0.05)
    window_ms = int(time.time() * 1000)  # the window starts in this pause
    time.sleep(0.05)
    update(db, rng, 3)  # inside the window
    settle(db, path)
    points = window_points(store, "app.db", generation, boundary, window_ms)
    before = [restore_rows(tmp_path, settings, "app.db", **point) for point in points]
    gc_at = window_ms / 1000 + 1  # the moment of a gc that keeps one second
    ratio_before = bucket_bytes(settings, "app.db") / db_bytes(path)

    objects = bucket_state(settings, "app.db")
    plan = retention.collect_garbage(store, "app.db", older_than=dt.timedelta(seconds=1),
                                     dry_run=True, now=gc_at)
    assert bucket_state(settings, "app.db") == objects, "a dry run changed the bucket"
    assert plan.dry_run and plan.snapshot_built == boundary and plan.deleted

    report = retention.collect_garbage(store, "app.db", older_than=dt.timedelta(seconds=1),
                                       now=gc_at)
    assert report.snapshot_built == boundary
    assert report.deleted == plan.deleted
    assert snapshot_seqs(store, "app.db", generation) == [boundary]
    spared = unreferenced_parts(store, "app.db")
    ratio_spared = bucket_bytes(settings, "app.db") / db_bytes(path)
    after = [restore_rows(tmp_path, settings, "app.db", **point) for point in points]
    assert after == before
    assert before[-1] == db.execute(SELECT).fetchall()
    verified = bottomless.verify("app.db", settings)
    assert verified.ok, verified.problems

    # the writer goes on; a second gc at the same moment has nothing left to do: the parts
    # of the snapshots the first one deleted stay while a snapshot built from them may
    # still be on its way
    update(db, rng, 20)
    settle(db, path)
    again = retention.collect_garbage(store, "app.db", older_than=dt.timedelta(seconds=1),
                                      now=gc_at)
    assert again.snapshot_built is None and again.deleted == []
    assert restore_rows(tmp_path, settings, "app.db") == db.execute(SELECT).fetchall()

    # a gc past the grace period (same window) deletes them: only unreferenced parts go
    late = retention.collect_garbage(
        store, "app.db", older_than=dt.timedelta(seconds=1 + retention.GRACE_SECONDS + 1),
        now=gc_at + retention.GRACE_SECONDS + 1,
    )
    assert late.snapshot_built is None and set(late.deleted) == spared
    ratio = bucket_bytes(settings, "app.db") / db_bytes(path)
    print(f"\n{durability}, {updates} updates: bucket/db {ratio_before:.2f} before gc,"
          f" {ratio_spared:.2f} after, {ratio:.2f} after the grace period")
    assert ratio <= MAX_RATIO, f"bucket holds {ratio:.2f} times the database after gc"
    assert [restore_rows(tmp_path, settings, "app.db", **point) for point in points] == before
    assert restore_rows(tmp_path, settings, "app.db") == db.execute(SELECT).fetchall()
    verified = bottomless.verify("app.db", settings)
    assert verified.ok, verified.problems
    db.close()
    store.close()


def test_gc_with_no_window_compacts_to_one_snapshot(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    settings = make_settings("file", durability="async")
    path, db = new_database(tmp_path, settings, "zero.db")
    update(db, random.Random(2), 3000)
    settle(db, path)
    generation = bottomless.status(db)["generation"]
    store = bottomless.open_store(settings)
    last = commit_numbers(store, "zero.db", generation)[-1]
    report = bottomless.gc("zero.db", settings, older_than="0s")
    assert report.snapshot_built == last
    assert snapshot_seqs(store, "zero.db", generation) == [last]
    assert commit_numbers(store, "zero.db", generation) == []
    assert bucket_bytes(settings, "zero.db") / db_bytes(path) <= MAX_RATIO
    expected = db.execute(SELECT).fetchall()
    assert restore_rows(tmp_path, settings, "zero.db") == expected
    assert restore_rows(tmp_path, settings, "zero.db", timestamp=dt.datetime.now(dt.UTC)) == (
        expected
    )
    # the writer goes on from the compacted generation, open or reopened
    update(db, random.Random(3), 50)
    settle(db, path)
    db.close()
    db = bottomless.connect(path, settings)
    update(db, random.Random(4), 50)
    settle(db, path)
    assert bottomless.status(db)["generation"] == generation
    assert restore_rows(tmp_path, settings, "zero.db") == db.execute(SELECT).fetchall()
    assert bottomless.verify("zero.db", settings).ok
    db.close()
    store.close()


class RivalStore(ForwardingStore):
    """A store on which another process builds the snapshot at ``seq`` just before gc's first
    write of it: ``rival`` runs once, then gc's write goes ahead."""

    def __init__(self, inner: PageStore, rival: Callable[[], None], prefix: str) -> None:
        super().__init__(inner)
        self.rival: Callable[[], None] | None = rival
        self.prefix = prefix

    def put_if_absent(self, key: str, data: bytes) -> None:
        if self.rival is not None and key.startswith(self.prefix):
            rival, self.rival = self.rival, None
            rival()
        self.inner.put_if_absent(key, data)


class HalfBuiltError(Exception):
    """Stands for a process killed half-way through a snapshot."""


class KilledAfterOnePart(ForwardingStore):
    """A store that stops a snapshot after its first new part."""

    def put_if_absent(self, key: str, data: bytes) -> None:
        self.inner.put_if_absent(key, data)
        if fmt.is_part_key(key):
            raise HalfBuiltError


def _racing_setup(tmp_path: Any, settings: bottomless.Settings) -> tuple[str, Any, str, int]:
    path, db = new_database(tmp_path, settings, "race.db")
    update(db, random.Random(4), 500)
    settle(db, path)
    generation = bottomless.status(db)["generation"]
    store = bottomless.open_store(settings)
    last = commit_numbers(store, "race.db", generation)[-1]
    store.close()
    return path, db, generation, last


def test_gc_uses_the_snapshot_a_writer_built_at_the_same_commit(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    settings = make_settings("file", durability="async")
    path, db, generation, last = _racing_setup(tmp_path, settings)
    inner = bottomless.open_store(settings)

    def writer_snapshot() -> None:
        compact(inner, db_name="race.db", generation=generation, seq=last, compression="zstd",
                parallelism=2, writer=fmt.new_writer_id().hex())

    prefix = fmt.generation_prefix("race.db", generation)
    store = RivalStore(inner, writer_snapshot, prefix)
    report = retention.collect_garbage(store, "race.db", older_than=dt.timedelta(0))
    assert report.snapshot_built is None  # the writer's, not gc's
    assert snapshot_seqs(inner, "race.db", generation) == [last]
    # the writer's snapshot is dated by its commit, at the window's start: the log goes too
    assert commit_numbers(inner, "race.db", generation) == []
    later = retention.collect_garbage(inner, "race.db", older_than=dt.timedelta(0),
                                      now=time.time() + 1)
    assert later.snapshot_built is None
    assert later.deleted == []
    assert bucket_bytes(settings, "race.db") / db_bytes(path) <= MAX_RATIO
    assert restore_rows(tmp_path, settings, "race.db") == db.execute(SELECT).fetchall()
    assert bottomless.verify("race.db", settings).ok
    db.close()
    inner.close()


def test_gc_leaves_a_snapshot_another_process_is_building(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    settings = make_settings("file", durability="async")
    path, db, generation, last = _racing_setup(tmp_path, settings)
    store = bottomless.open_store(settings)
    with pytest.raises(HalfBuiltError):
        compact(KilledAfterOnePart(store), db_name="race.db", generation=generation, seq=last,
                compression="zstd", parallelism=1, writer=fmt.new_writer_id().hex())
    before = bucket_state(settings, "race.db")
    report = retention.collect_garbage(store, "race.db", older_than=dt.timedelta(0))
    assert report.snapshot_built is None and report.deleted == []
    assert bucket_state(settings, "race.db") == before
    assert restore_rows(tmp_path, settings, "race.db") == db.execute(SELECT).fetchall()
    assert bottomless.verify("race.db", settings).ok
    # once the half-built snapshot is older than the grace period, gc clears it and builds
    later = time.time() + retention.GRACE_SECONDS + 1
    report = retention.collect_garbage(store, "race.db", older_than=dt.timedelta(0), now=later)
    assert report.snapshot_built == last
    assert snapshot_seqs(store, "race.db", generation) == [last]
    assert bucket_bytes(settings, "race.db") / db_bytes(path) <= MAX_RATIO
    assert restore_rows(tmp_path, settings, "race.db") == db.execute(SELECT).fetchall()
    assert bottomless.verify("race.db", settings).ok
    db.close()
    store.close()


def _blob_database(tmp_path: Any, settings: bottomless.Settings, name: str,
                   commits: int) -> tuple[str, str]:
    """``commits`` inserts of 100 kB blobs, a snapshot every 10 commits (1 MiB parts, built in
    a thread); returns the path and the generation."""
    path = str(tmp_path / name)
    db = bottomless.connect(path, settings)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB)")
    for _ in range(commits):
        db.execute("INSERT INTO t(b) VALUES (randomblob(100000))")
        replicator(path).wait_snapshot(60)
    generation = str(bottomless.status(db)["generation"])
    db.close()
    return path, generation


def test_gc_deletes_nothing_when_the_snapshot_it_keeps_is_damaged(
    tmp_path: Any, make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """A part no later commit touched is listed again, unread, by the snapshot gc builds:
    gc must check it before the older snapshots and commits, the only intact way to the
    newest state, are deleted."""
    settings = make_settings("file", snapshot_worker="thread", snapshot_part_mb=1,
                             snapshot_interval_commits=10, lease_ttl=0)
    _, generation = _blob_database(tmp_path, settings, "damaged.db", 32)
    store = bottomless.open_store(settings)
    assert snapshot_seqs(store, "damaged.db", generation) == [0, 10, 20, 30]
    part = fmt.part_key("damaged.db", generation, 30, 1)
    data = bytearray(store.get(part))
    data[len(data) // 2] ^= 0xFF
    with open(os.path.join(settings.bucket, part), "wb") as damaged:
        damaged.write(data)
    before = bucket_state(settings, "damaged.db")
    with pytest.raises(bottomless.CorruptObjectError, match="gc deleted nothing") as info:
        bottomless.gc("damaged.db", settings, older_than="0s")
    assert info.value.key == part
    after = bucket_state(settings, "damaged.db")
    assert set(before) <= set(after)  # the snapshot gc built may stay; nothing went
    # the newest state is still restorable, and a restore finds the way: the snapshots that
    # list the damaged part are passed over for snapshot 20 and the commits after it
    restored = str(tmp_path / "restored.db")
    with caplog.at_level("WARNING", logger="bottomless"):
        bottomless.restore(restored, settings, db_name="damaged.db")
    assert "restoring from snapshot 20" in caplog.text
    assert integrity(restored) == "ok"
    assert rows(restored, "SELECT count(*) FROM t") == [(32,)]  # every commit
    store.close()


def test_a_snapshot_built_from_the_bucket_is_dated_by_its_commit(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    """So that a restore by timestamp finds it from the moment its state holds, however long
    it took to build (and gc's window, which goes by it, starts there)."""
    settings = make_settings("file", snapshot_worker="thread", snapshot_part_mb=1,
                             snapshot_interval_commits=10, lease_ttl=0)
    _, generation = _blob_database(tmp_path, settings, "dated.db", 12)
    store = bottomless.open_store(settings)
    manifest = read_manifest(store, "dated.db", generation, 10)
    assert manifest.created_ms == commit_header(store, "dated.db", generation, 10).created_ms
    store.close()


def test_gc_checks_the_anchor_of_an_older_generation_it_trims_too(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    """A generation that ends inside the window keeps its points from its anchor on: gc must
    not delete what is before that anchor while the anchor is damaged."""
    settings = make_settings("file", snapshot_worker="thread", snapshot_part_mb=1,
                             snapshot_interval_commits=10, lease_ttl=0)
    _, first = _blob_database(tmp_path, settings, "older.db", 32)
    store = bottomless.open_store(settings)
    damaged = fmt.part_key("older.db", first, 20, 1)
    data = bytearray(store.get(damaged))
    data[len(data) // 2] ^= 0xFF
    with open(os.path.join(settings.bucket, damaged), "wb") as out:
        out.write(data)
    plain = apsw.Connection(str(tmp_path / "other.db"))
    plain.execute("CREATE TABLE u(x)")
    plain.close()
    other = bottomless.connect(str(tmp_path / "other.db"), settings.model_copy(
        update={"db_name": "older.db", "initial_replication": "force"}))
    other.close()  # a second generation, from another file
    assert len(generations(store, "older.db")) == 2
    window = commit_header(store, "older.db", first, 24).created_ms / 1000
    before = bucket_state(settings, "older.db")
    with pytest.raises(bottomless.CorruptObjectError, match="gc deleted nothing") as info:
        retention.collect_garbage(store, "older.db", older_than=dt.timedelta(0), now=window)
    assert info.value.key == damaged
    assert bucket_state(settings, "older.db") == before
    store.close()

"""gc beside uploads still in progress, and restores of what such races leave behind.

Buckets are written by hand (the storage format is the contract) from real SQLite states,
with chosen creation times, so that gc runs at any simulated moment (``now=``) and a restore
can be checked byte for byte against the state it should give.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import apsw
import pytest
from helpers import ForwardingStore

import bottomless
from bottomless import format as fmt
from bottomless.backends.base import PageStore
from bottomless.errors import ObjectNotFoundError, RestoreError
from bottomless.ops import retention
from bottomless.ops.catalog import verify
from bottomless.ops.restore import restore_file
from bottomless.ops.snapshots import compact, read_manifest, snapshot_seqs
from bottomless.ops.targets import generations, resolve_target

MakeSettings = Callable[..., bottomless.Settings]
PAGE = 512
DB = "race.db"
HOUR = retention.GRACE_SECONDS
WRITER = "11" * 16


def ms(seconds: float) -> int:
    return int(seconds * 1000)


def sqlite_states(tmp_path: Any, statements: list[str]) -> list[bytes]:
    """The bytes of a real SQLite file (512-byte pages, rollback journal) once created with a
    table of 400 rows, then after each of ``statements``, one transaction each."""
    path = str(tmp_path / f"source-{uuid.uuid4().hex}.db")
    db = apsw.Connection(path)
    db.execute(f"PRAGMA page_size={PAGE}")
    db.execute("PRAGMA journal_mode=delete")
    with db:
        db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        db.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400)"
                   " INSERT INTO t SELECT i, randomblob(200) FROM n")
    states = [read(path)]
    for statement in statements:
        with db:
            db.execute(statement)
        states.append(read(path))
    db.close()
    return states


def read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def pages_of(data: bytes) -> dict[int, bytes]:
    return {i // PAGE + 1: data[i:i + PAGE] for i in range(0, len(data), PAGE)}


def put_parts(store: PageStore, generation: str, seq: int, data: bytes,
              created: list[float]) -> list[dict[str, Any]]:
    """Upload ``data`` as the parts of the snapshot at ``seq``, one per creation time in
    ``created``; return them as a manifest lists them."""
    pages = pages_of(data)
    per_part = math.ceil(len(pages) / len(created))
    parts = []
    for number, first in enumerate(range(1, len(pages) + 1, per_part)):
        chunk = {n: pages[n] for n in range(first, min(first + per_part, len(pages) + 1))}
        batch = fmt.PageBatch(fmt.KIND_SNAPSHOT, generation, number, PAGE, len(pages), chunk,
                              created_ms=ms(created[number]))
        key = fmt.part_key(DB, generation, seq, number)
        store.put_once(key, fmt.encode_batch(batch))
        parts.append({"key": key, "first": first, "pages": len(chunk),
                      "digest": batch.digest.hex()})
    return parts


def put_manifest(store: PageStore, generation: str, seq: int, parts: list[dict[str, Any]],
                 created: float, commit_digest: bytes | None = None) -> fmt.Manifest:
    """Publish the snapshot at ``seq`` of ``generation`` (its parts are stored)."""
    db_size = sum(int(p["pages"]) for p in parts)
    manifest = fmt.Manifest(
        db_name=DB, generation=generation, seq=seq, page_size=PAGE, db_size=db_size,
        part_pages=int(parts[0]["pages"]), writer=WRITER, reason="initial", parts=parts,
        commit_digest=commit_digest.hex() if commit_digest else None, created_ms=ms(created),
    )
    store.put_once(fmt.snapshot_key(DB, generation, seq), fmt.encode_manifest(manifest))
    return manifest


def put_commit(store: PageStore, generation: str, seq: int, old: bytes, new: bytes,
               prev: bytes, created: float) -> fmt.PageBatch:
    """Store commit ``seq``: the pages that differ from ``old`` to ``new``."""
    before, after = pages_of(old), pages_of(new)
    changed = {n: page for n, page in after.items() if before.get(n) != page}
    batch = fmt.PageBatch(fmt.KIND_COMMIT, generation, seq, PAGE, len(after), changed,
                          prev=prev, created_ms=ms(created))
    store.put_once(fmt.commit_key(DB, generation, seq), fmt.encode_batch(batch))
    return batch


def put_history(store: PageStore, generation: str, states: list[bytes],
                times: list[float]) -> list[fmt.PageBatch]:
    """Snapshot 0 of ``states[0]`` at ``times[0]`` in parts of 16 pages, then one commit per
    later state at the matching time; return the commits, from commit 1 on."""
    count = math.ceil(len(states[0]) / PAGE / 16)
    base = put_manifest(store, generation, 0,
                        put_parts(store, generation, 0, states[0], [times[0]] * count), times[0])
    prev, commits = base.digest, []
    for seq in range(1, len(states)):
        commit = put_commit(store, generation, seq, states[seq - 1], states[seq], prev,
                            times[seq])
        prev = commit.digest
        commits.append(commit)
    return commits


def restored(store: PageStore, tmp_path: Any, **target: Any) -> bytes:
    """The bytes a restore of ``target`` gives."""
    out = str(tmp_path / f"restored-{uuid.uuid4().hex}.db")
    restore_file(store, DB, out, **target)
    return read(out)


def unreferenced_parts(store: PageStore) -> set[str]:
    """The parts of ``DB`` that no snapshot lists."""
    listed: set[str] = set()
    parts: set[str] = set()
    for generation in generations(store, DB):
        parts.update(store.list_keys(fmt.parts_prefix(DB, generation)))
        for seq in snapshot_seqs(store, DB, generation):
            listed.update(str(p["key"]) for p in read_manifest(store, DB, generation, seq).parts)
    return parts - listed


class CountingStore(ForwardingStore):
    """Records the keys of the ranged GETs made of snapshot parts."""

    def __init__(self, inner: PageStore) -> None:
        super().__init__(inner)
        self.part_ranges: list[str] = []

    def get_range(self, key: str, start: int, end: int) -> bytes:
        if fmt.is_part_key(key):
            self.part_ranges.append(key)
        return self.inner.get_range(key, start, end)


# ------------------------------------------------------------------ uploads in progress


def test_gc_keeps_a_generation_whose_upload_is_still_going(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    store = bottomless.open_store(make_settings("file"))
    states = sqlite_states(tmp_path, ["UPDATE t SET v = randomblob(200) WHERE id = 1"])
    now = time.time()
    old = fmt.new_generation_id(now - 3 * HOUR)
    put_history(store, old, states, [now - 3 * HOUR, now - 3 * HOUR + 1])
    # a restart uploads the whole file as a new generation: it began two hours ago, its last
    # part went up a minute ago, and its manifest, written last, is still to come
    going = fmt.new_generation_id(now - 2 * HOUR)
    parts = put_parts(store, going, 0, states[1], [now - 2 * HOUR, now - 70 * 60, now - 60])
    # another one stopped for good: even its newest part is older than the grace period
    stopped = fmt.new_generation_id(now - 2.5 * HOUR)
    put_parts(store, stopped, 0, states[1], [now - 2.5 * HOUR, now - 2 * HOUR])
    abandoned = store.list_keys(fmt.generation_prefix(DB, stopped))

    report = retention.collect_garbage(store, DB, older_than=dt.timedelta(days=30), now=now)
    assert sorted(report.deleted) == sorted(abandoned)
    put_manifest(store, going, 0, parts, now)  # the upload finishes
    assert resolve_target(store, DB).generation == going
    assert restored(store, tmp_path) == states[1]
    store.close()


def test_gc_keeps_a_snapshot_whose_first_parts_went_up_long_ago(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    store = bottomless.open_store(make_settings("file"))
    states = sqlite_states(tmp_path, [
        f"UPDATE t SET v = randomblob(200) WHERE id = {i}" for i in (1, 200, 399)
    ])
    now = time.time()
    generation = fmt.new_generation_id(now - 3 * HOUR)
    commits = put_history(store, generation, states, [now - 3 * HOUR + i for i in range(4)])
    # the writer builds the snapshot at commit 3 (slowly: a large database, a slow link)
    building = put_parts(store, generation, 3, states[3],
                         [now - 2 * HOUR, now - 70 * 60, now - 60])
    # an attempt at commit 2 that stopped for good: its newest part is past the grace period
    put_parts(store, generation, 2, states[2], [now - 2.5 * HOUR, now - 2 * HOUR])
    stopped = [k for k in store.list_keys(fmt.parts_prefix(DB, generation))
               if fmt.part_snapshot_seq(k) == 2]

    counting = CountingStore(store)
    report = retention.collect_garbage(counting, DB, older_than=dt.timedelta(days=30), now=now)
    assert sorted(report.deleted) == sorted(stopped)
    # one ranged GET per snapshot being built (of its highest-numbered part), not per part
    assert sorted(counting.part_ranges) == [stopped[-1], str(building[-1]["key"])]
    put_manifest(store, generation, 3, building, now, commit_digest=commits[2].digest)
    assert restored(store, tmp_path, seq=3) == states[3]
    assert restored(store, tmp_path, seq=1) == states[1]
    store.close()


# ------------------------------------------------------------------ gc's own snapshot


class ManifestHeldBack(ForwardingStore):
    """A store on which a snapshot's parts go up at once but its manifest waits for ``gate``."""

    def __init__(self, inner: PageStore) -> None:
        super().__init__(inner)
        self.parts_done = threading.Event()
        self.gate = threading.Event()

    def put_if_absent(self, key: str, data: bytes) -> None:
        if fmt.is_snapshot_key(key):
            self.parts_done.set()
            assert self.gate.wait(10)
        self.inner.put_if_absent(key, data)


def test_gc_spares_the_parts_of_a_snapshot_a_writer_builds_from(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    """The writer builds the snapshot at commit 1 from snapshot 0 while gc builds its own at
    commit 2 from snapshot 0 too, then deletes snapshot 0: the writer's snapshot, published
    afterwards, lists parts of snapshot 0 that gc's does not."""
    store = bottomless.open_store(make_settings("file"))
    states = sqlite_states(tmp_path, [
        "UPDATE t SET v = randomblob(200) WHERE id = 1",
        "UPDATE t SET v = randomblob(200) WHERE id = 399",
    ])
    now = time.time()
    generation = fmt.new_generation_id(now - HOUR)
    put_history(store, generation, states, [now - HOUR, now - 600, now - 500])
    held = ManifestHeldBack(store)
    with ThreadPoolExecutor(1) as pool:
        writer = pool.submit(compact, held, db_name=DB, generation=generation, seq=1,
                             compression="zstd", parallelism=2, writer=WRITER)
        assert held.parts_done.wait(10)
        report = retention.collect_garbage(store, DB, older_than=dt.timedelta(seconds=60),
                                           now=now)
        held.gate.set()
        writer.result(timeout=10)
    assert report.snapshot_built == 2
    assert fmt.snapshot_key(DB, generation, 0) in report.deleted
    assert not [k for k in report.deleted if fmt.is_part_key(k)]
    assert snapshot_seqs(store, DB, generation) == [1, 2]
    assert restored(store, tmp_path, seq=1) == states[1]
    assert restored(store, tmp_path) == states[2]
    checked = verify(store, DB)
    assert checked.ok, checked.problems

    # a gc past the grace period (the same window) deletes what no snapshot lists any more
    later = retention.collect_garbage(
        store, DB, older_than=dt.timedelta(seconds=60 + HOUR + 1), now=now + HOUR + 1
    )
    assert later.deleted and all(fmt.is_part_key(k) for k in later.deleted)
    assert unreferenced_parts(store) == set()
    assert restored(store, tmp_path, seq=1) == states[1]
    assert restored(store, tmp_path) == states[2]
    store.close()


@pytest.mark.parametrize(("expires_in", "spared"), [(None, True), (60.0, True), (0.0, False)])
def test_gc_spares_the_anchor_it_builds_over_only_while_a_writer_may_hold_the_database(
    tmp_path: Any, make_settings: MakeSettings, expires_in: float | None, spared: bool
) -> None:
    """No lease (``lease_ttl=0``) or a live one: a writer may be building from the anchor gc
    builds over, so its parts wait for a later run. A lease the writer expired when it closed:
    nobody is building, and gc trims the bucket in one run."""
    store = bottomless.open_store(make_settings("file"))
    states = sqlite_states(tmp_path, ["UPDATE t SET v = randomblob(200) WHERE id = 1"])
    now = time.time()
    generation = fmt.new_generation_id(now - HOUR)
    put_history(store, generation, states, [now - HOUR, now - 600])
    if expires_in is not None:
        lease = fmt.LeaseRecord(WRITER, "test", 1, ms(now + expires_in) if expires_in else 0)
        store.put_once(fmt.lease_key(DB), lease.encode())
    report = retention.collect_garbage(store, DB, older_than=dt.timedelta(seconds=60), now=now)
    assert report.snapshot_built == 1
    assert snapshot_seqs(store, DB, generation) == [1]
    assert bool(unreferenced_parts(store)) == spared
    assert restored(store, tmp_path) == states[1]
    store.close()


def test_a_generation_without_its_successor_lasts_until_the_next_one_begins(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    """Its last commit is 10 minutes before the next generation began, and no successor object
    marks that beginning: a window that starts in between still needs its last state, so gc
    keeps it, and a restore at the window's start gives that state."""
    store = bottomless.open_store(make_settings("file"))
    states = sqlite_states(tmp_path, ["UPDATE t SET v = randomblob(200) WHERE id = 1"])
    now = time.time()
    first, second = fmt.new_generation_id(now - 2 * HOUR), fmt.new_generation_id(now - 1200)
    put_history(store, first, states, [now - 2 * HOUR, now - 1800])
    put_history(store, second, states[1:], [now - 1200])
    window = dt.timedelta(seconds=1500)  # starts 5 minutes after the first one's last commit
    report = retention.collect_garbage(store, DB, older_than=window, now=now)
    assert first in report.kept_generations
    at_start = dt.datetime.fromtimestamp(now - 1500, dt.UTC)
    assert restored(store, tmp_path, timestamp=at_start) == states[1]
    store.close()


# ------------------------------------------------------------------ restoring around gaps


def eight_commits(store: PageStore, tmp_path: Any) -> tuple[str, list[bytes], list[float]]:
    """Snapshot 0 and commits 1..8 of a new generation, a minute apart from an hour ago:
    the generation, the states and their times."""
    states = sqlite_states(tmp_path, [
        f"UPDATE t SET v = randomblob(200) WHERE id = {50 * i}" for i in range(1, 9)
    ])
    now = time.time()
    times = [now - HOUR + 60 * seq for seq in range(9)]
    generation = fmt.new_generation_id(times[0])
    put_history(store, generation, states, times)
    return generation, states, times


def test_restore_names_the_restorable_commits_around_missing_ones(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    """Snapshots at 1 and 5, and commits 6..8: commits 2..4 are restorable from nothing (what
    a snapshot published after gc deleted the commits after it leaves)."""
    store = bottomless.open_store(make_settings("file"))
    generation, states, times = eight_commits(store, tmp_path)
    for seq in (1, 5):
        compact(store, db_name=DB, generation=generation, seq=seq, compression="zstd",
                parallelism=2, writer=WRITER, created_ms=ms(times[seq]))
    for key in [fmt.snapshot_key(DB, generation, 0),
                *(fmt.commit_key(DB, generation, seq) for seq in range(1, 6))]:
        store.delete(key)

    with pytest.raises(RestoreError, match=r"restorable commits are 1\.\.1, 5\.\.8"):
        resolve_target(store, DB, seq=3)
    for seq in (1, 5, 7):
        assert restored(store, tmp_path, seq=seq) == states[seq]
    at = dt.datetime.fromtimestamp(times[3], dt.UTC)  # the state then is commit 3's
    with pytest.raises(RestoreError, match=r"commit 2 and maybe later ones are missing;"
                                           r" restorable commits are 1\.\.1, 5\.\.8"):
        resolve_target(store, DB, timestamp=at)
    for seq in (5, 7):
        at = dt.datetime.fromtimestamp(times[seq] + 1, dt.UTC)
        assert restored(store, tmp_path, timestamp=at) == states[seq]
    assert restored(store, tmp_path, timestamp=dt.datetime.now(dt.UTC)) == states[8]

    # commit 9 missing and 10 stored: after commit 8, the state at a moment is unknown
    put_commit(store, generation, 10, states[8], states[8], bytes(32), times[8] + 60)
    with pytest.raises(RestoreError, match=r"commit 9 and maybe later ones are missing"):
        resolve_target(store, DB, timestamp=dt.datetime.now(dt.UTC))
    at = dt.datetime.fromtimestamp(times[7], dt.UTC)
    assert restored(store, tmp_path, timestamp=at) == states[7]
    store.close()


class DeletesCommit(ForwardingStore):
    """A store on which commit ``seq`` goes (a gc running meanwhile) once another commit's
    header has been read."""

    def __init__(self, inner: PageStore, seq: int) -> None:
        super().__init__(inner)
        self.seq = seq

    def get_range(self, key: str, start: int, end: int) -> bytes:
        data = self.inner.get_range(key, start, end)
        gone = fmt.commit_key(DB, fmt.generation_of_key(key), self.seq)
        if fmt.is_commit_key(key) and key != gone and self.inner.exists(gone):
            self.inner.delete(gone)
        return data


def test_restore_by_timestamp_reports_a_commit_deleted_while_it_looks(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    store = bottomless.open_store(make_settings("file"))
    generation, _, times = eight_commits(store, tmp_path)
    at = dt.datetime.fromtimestamp(times[7], dt.UTC)
    with pytest.raises(RestoreError, match=f"commit 6 of generation {generation} is gone"):
        resolve_target(DeletesCommit(store, 6), DB, timestamp=at)
    store.close()


def test_a_missing_part_names_the_snapshot_that_lists_it(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    store = bottomless.open_store(make_settings("file"))
    states = sqlite_states(tmp_path, ["UPDATE t SET v = randomblob(200) WHERE id = 1"])
    now = time.time()
    generation = fmt.new_generation_id(now)
    put_history(store, generation, states, [now, now + 1])
    victim = str(read_manifest(store, DB, generation, 0).parts[1]["key"])
    store.delete(victim)
    with pytest.raises(ObjectNotFoundError,
                       match=f"snapshot 0 of generation {generation} lists it") as info:
        restored(store, tmp_path)
    assert info.value.key == victim and isinstance(info.value, FileNotFoundError)
    store.close()

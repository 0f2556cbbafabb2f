"""Compaction from the bucket: what it builds, and what it costs.

Its memory is bounded by the objects in flight, not by how much changed since the last
snapshot; its work grows with parts plus changed pages, not their product; changed parts go up
several at once; and the ``counter`` callback is never run by two threads at once. Costs are
counted (allocations, lines run), never timed.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, TypeVar

import pytest
from helpers import ForwardingStore

import bottomless.ops
from bottomless import format as fmt
from bottomless.backends.memory import MemoryPageStore
from bottomless.ops.restore import restore_file
from bottomless.ops.snapshots import compact, snapshot_seqs, upload_snapshot
from bottomless.ops.transfer import window_for

DB = "c.db"
T = TypeVar("T")


def _content(pgno: int, version: int, size: int) -> bytes:
    """What page ``pgno`` holds after commit ``version`` wrote it (0: the first snapshot)."""
    return (pgno.to_bytes(4, "little") + version.to_bytes(4, "little")) * (size // 8)


class _Pages:
    """A database of ``db_size`` pages as the first snapshot uploads it."""

    def __init__(self, page_size: int, db_size: int) -> None:
        self.page_size, self.db_size = page_size, db_size

    def page(self, pgno: int) -> bytes:
        return _content(pgno, 0, self.page_size)


@pytest.fixture
def store() -> Iterator[MemoryPageStore]:
    namespace = uuid.uuid4().hex
    yield MemoryPageStore(namespace)
    MemoryPageStore(namespace).fs.rm(f"/{namespace}", recursive=True)


def _bucket(
    store: MemoryPageStore, page_size: int, db_size: int, commits: list[tuple[int, int, list[int]]],
    part_mb: int = 0,
) -> tuple[str, dict[int, bytes]]:
    """Snapshot 0 of a new generation plus ``commits`` (page size, db size, pages written);
    return the generation and the database after the last commit, page by page.

    ``part_mb=0`` makes parts of one page each: many parts from a small database."""
    generation = fmt.new_generation_id()
    manifest = upload_snapshot(
        store, db_name=DB, generation=generation, seq=0, source=_Pages(page_size, db_size),
        part_mb=part_mb, parallelism=2, compression="none", writer="00" * 16, reason="test",
    )
    model = {n: _content(n, 0, page_size) for n in range(1, db_size + 1)}
    prev = manifest.chain_digest
    for seq, (size, pages, written) in enumerate(commits, 1):
        if size != page_size:
            model, page_size = {}, size
        batch = fmt.PageBatch(
            fmt.KIND_COMMIT, generation, seq, size, pages,
            {n: _content(n, seq, size) for n in written}, prev=prev,
        )
        store.put_once(fmt.commit_key(DB, generation, seq), fmt.encode_batch(batch, "none"))
        model.update(batch.pages)
        model = {n: p for n, p in model.items() if n <= pages}
        prev = batch.digest
    return generation, model


def _compact(store: Any, generation: str, seq: int, **options: Any) -> fmt.Manifest:
    options = {"parallelism": 2, "compression": "none", "writer": "00" * 16, **options}
    return compact(store, db_name=DB, generation=generation, seq=seq, **options)


@pytest.mark.parametrize(
    ("commits", "reused"),
    [
        ([(512, 8, [2]), (512, 8, [5])], 6),  # parts 2 and 5 change, six are listed again
        ([(512, 11, [9, 10, 11]), (512, 11, [1])], 7),  # grows
        ([(512, 5, [5]), (512, 3, [2])], 2),  # shrinks: parts 1 and 3 are left alone
        ([(1024, 4, [1, 2, 3, 4]), (1024, 4, [3])], 0),  # a new page size: all new parts
    ],
)
def test_compaction_builds_the_database_at_its_commit(
    store: MemoryPageStore, tmp_path: Any, commits: list[tuple[int, int, list[int]]],
    reused: int,
) -> None:
    generation, model = _bucket(store, 512, 8, commits)
    manifest = _compact(store, generation, len(commits))
    kept = [p for p in manifest.parts if p["key"] != fmt.part_key(
        DB, generation, len(commits), manifest.parts.index(p)
    )]
    assert len(kept) == reused
    assert (manifest.page_size, manifest.db_size) == (commits[-1][0], commits[-1][1])
    path = str(tmp_path / "restored.db")
    result = restore_file(store, DB, path)
    assert result.objects == 1 + len(manifest.parts)  # the new snapshot, and no commit after it
    with open(path, "rb") as restored:
        assert restored.read() == b"".join(model[n] for n in sorted(model))


def test_compaction_into_a_new_generation_starts_it(store: MemoryPageStore) -> None:
    generation, _ = _bucket(store, 512, 4, [(512, 4, [3])])
    branch = fmt.new_generation_id()
    manifest = _compact(store, generation, 1, into=branch, reason="branch")
    assert (manifest.generation, manifest.seq) == (branch, 0)
    assert manifest.base is not None and manifest.base["seq"] == 1
    assert snapshot_seqs(store, DB, branch) == [0]
    assert [fmt.generation_of_key(p["key"]) for p in manifest.parts] == [
        generation, generation, branch, generation
    ]


class _Sink(ForwardingStore):
    """Reads from ``inner``, keeps nothing it is given: what compaction allocates stays its own."""

    def put_if_absent(self, key: str, data: bytes) -> None:
        pass


def test_compaction_memory_is_bounded_by_the_objects_in_flight(store: MemoryPageStore) -> None:
    page_size, db_size, per_commit, parallelism = 65536, 256, 4, 2
    commits = [
        (page_size, db_size, list(range(first, first + per_commit)))
        for first in range(1, db_size + 1, per_commit)
    ]  # 16 MiB changed, in commits of 256 KiB; parts of one page
    generation, _ = _bucket(store, page_size, db_size, commits)
    commit_bytes, part_bytes = per_commit * page_size, page_size
    # commits download ``parallelism`` at a time (held as received and as decoded); parts are
    # built ``window`` at a time (old part, its pages, the new object); plus the bookkeeping
    window = window_for(parallelism, part_bytes)
    bound = 3 * (parallelism + 1) * commit_bytes + 4 * window * part_bytes + (1 << 20)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        manifest = _compact(_Sink(store), generation, len(commits), parallelism=parallelism)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(manifest.parts) == db_size
    assert peak < bound, f"{peak} bytes at the peak, bound {bound}"
    assert bound < db_size * page_size // 2  # the bound does tell a full copy apart


def _lines_run(directory: str, work: Callable[[], T]) -> tuple[T, int]:
    """Run ``work``; count the lines of code under ``directory`` it ran, in every thread."""
    ticks = itertools.count()

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            next(ticks)  # atomic under the GIL, whichever thread runs it
        return local

    def calls(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename.startswith(directory) else None

    threading.settrace(calls)
    sys.settrace(calls)
    try:
        result = work()
    finally:
        sys.settrace(None)
        threading.settrace(None)  # type: ignore[arg-type]
    return result, next(ticks)


def test_compaction_work_grows_with_parts_plus_changed_pages(store: MemoryPageStore) -> None:
    db_size, per_commit = 400, 100
    commits = [
        (512, db_size, list(range(first, first + per_commit)))
        for first in range(1, db_size, per_commit)
    ]
    generation, _ = _bucket(store, 512, db_size, commits)  # 400 parts of a page, all changed
    ops = os.path.dirname(bottomless.ops.__file__)
    manifest, lines = _lines_run(ops, lambda: _compact(store, generation, len(commits)))
    assert len(manifest.parts) == db_size
    # a few dozen lines per part, per changed page and per commit; checking every part against
    # every changed page would run 400 x 400
    assert lines < 60 * (len(manifest.parts) + db_size + len(commits)), lines


class _Overlaps:
    """Records how many calls run at once; the first waits (a while at most) for a second."""

    def __init__(self) -> None:
        self.active = self.most = 0
        self.waited = False
        self.changed = threading.Condition()

    def __call__(self, *args: Any) -> None:
        with self.changed:
            self.active += 1
            self.most = max(self.most, self.active)
            self.changed.notify_all()
            if not self.waited:
                self.waited = True
                self.changed.wait_for(lambda: self.active > 1, timeout=2)
        with self.changed:
            self.active -= 1


class _OverlapStore(ForwardingStore):
    """Records how many part uploads run at once."""

    def __init__(self, inner: MemoryPageStore) -> None:
        super().__init__(inner)
        self.parts = _Overlaps()

    def put_if_absent(self, key: str, data: bytes) -> None:
        if "/parts/" in key:
            self.parts(key)
        self.inner.put_if_absent(key, data)


def test_compaction_uploads_changed_parts_concurrently(store: MemoryPageStore) -> None:
    generation, _ = _bucket(store, 512, 16, [(512, 16, list(range(1, 17)))])
    overlaps = _OverlapStore(store)
    _compact(overlaps, generation, 1, parallelism=4)
    assert overlaps.parts.most > 1, "changed parts were uploaded one at a time"


@pytest.mark.parametrize("operation", ["upload", "compact"])
def test_the_counter_is_never_called_by_two_threads_at_once(
    store: MemoryPageStore, operation: str
) -> None:
    counter = _Overlaps()
    if operation == "upload":
        upload_snapshot(
            store, db_name=DB, generation=fmt.new_generation_id(), seq=0,
            source=_Pages(512, 16), part_mb=0, parallelism=4, compression="none",
            writer="00" * 16, reason="test", counter=counter,
        )
    else:
        generation, _ = _bucket(store, 512, 16, [(512, 16, list(range(1, 17)))])
        _compact(store, generation, 1, parallelism=4, counter=counter)
    assert counter.waited and counter.most == 1


class _Zeros:
    """A database of zeroed pages: a large one costs little to store (zstd)."""

    def __init__(self, page_size: int, db_size: int) -> None:
        self.page_size, self.db_size = page_size, db_size

    def page(self, pgno: int) -> bytes:
        return bytes(self.page_size)


def test_a_database_grown_past_1_gib_compacts_without_its_lock_byte_page(
    store: MemoryPageStore,
) -> None:
    """SQLite never writes the page that holds byte 2**30 (the lock-byte page), so the commit
    that grows a database past 1 GiB lacks it: the snapshot built from the bucket holds it as
    zeros, as a restore leaves it, instead of refusing for good."""
    page_size = 65536
    lock_page = fmt.lock_byte_page(page_size)
    assert lock_page == 16385
    generation = fmt.new_generation_id()
    first = upload_snapshot(
        store, db_name=DB, generation=generation, seq=0, source=_Zeros(page_size, lock_page - 1),
        part_mb=16, parallelism=2, compression="zstd", writer="00" * 16, reason="test",
    )
    grown = {lock_page + 1: _content(lock_page + 1, 1, page_size)}
    batch = fmt.PageBatch(fmt.KIND_COMMIT, generation, 1, page_size, lock_page + 1, grown,
                          prev=first.chain_digest)
    store.put_once(fmt.commit_key(DB, generation, 1), fmt.encode_batch(batch))
    built = compact(store, db_name=DB, generation=generation, seq=1, compression="zstd",
                    parallelism=2, writer="11" * 16)
    assert built.db_size == lock_page + 1
    assert [p["key"] for p in built.parts[:-1]] == [p["key"] for p in first.parts]
    last = built.parts[-1]
    pages = fmt.decode_batch(store.get(str(last["key"])), str(last["key"])).pages
    assert pages == {lock_page: bytes(page_size), lock_page + 1: grown[lock_page + 1]}

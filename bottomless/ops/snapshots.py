"""Snapshots: the whole database at one commit, stored as fixed page ranges ("parts").

A generation starts with snapshot 0, uploaded from the local file. Later snapshots are built
from the bucket (the previous snapshot plus the commits since), so they need no lock on the
local database and never slow a commit down; a part whose pages did not change is not
uploaded again, the new manifest points at the existing object.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from bottomless import format as fmt
from bottomless.backends.base import PageStore
from bottomless.errors import (
    CorruptObjectError,
    GenerationEndedError,
    ObjectNotFoundError,
    RestoreError,
)
from bottomless.ops.changes import ChangedPages
from bottomless.ops.transfer import in_order, one_at_a_time, window_for

logger = logging.getLogger(__name__)

Progress = Callable[[int], None]


class PageSource(Protocol):
    """Anything that can hand out a database's pages."""

    page_size: int
    db_size: int

    def page(self, pgno: int) -> bytes:
        """Content of one page."""


def part_pages_for(page_size: int, part_mb: int) -> int:
    """Pages per part for a page size and a part size in MiB."""
    return max(1, part_mb * 1024 * 1024 // max(page_size, 512))


def _encode_part(
    store: PageStore, key: str, generation: str, number: int, page_size: int, db_size: int,
    pages: dict[int, bytes], compression: str, counter: Callable[[bytes], None] | None,
) -> dict[str, Any]:
    batch = fmt.PageBatch(fmt.KIND_SNAPSHOT, generation, number, page_size, db_size, pages)
    data = fmt.encode_batch(batch, compression)
    started = time.monotonic()
    store.put_once(key, data)
    logger.debug("PUT %s (%d pages, %d bytes) in %.1f ms", key, len(pages), len(data),
                 (time.monotonic() - started) * 1000)
    if counter:
        counter(data)
    return {"key": key, "first": min(pages), "pages": len(pages), "digest": batch.digest.hex()}


def upload_snapshot(
    store: PageStore, *, db_name: str, generation: str, seq: int, source: PageSource,
    part_mb: int, parallelism: int, compression: str, writer: str, reason: str,
    commit_digest: str | None = None, base: dict[str, Any] | None = None,
    counter: Callable[[bytes], None] | None = None, progress: Progress | None = None,
) -> fmt.Manifest:
    """Upload every page of ``source`` as snapshot ``seq`` of ``generation``; return it.

    Parts go up concurrently, at most ``parallelism`` at a time, so memory stays bounded.
    The manifest is written last: until then the snapshot does not exist. ``counter`` sees each
    object written, from upload threads but never two at once.
    """
    per_part = part_pages_for(source.page_size, part_mb)
    counter = one_at_a_time(counter)

    def jobs() -> Iterator[Callable[[], dict[str, Any]]]:
        for number, first in enumerate(range(1, source.db_size + 1, per_part)):
            last = min(first + per_part - 1, source.db_size)
            pages = {n: source.page(n) for n in range(first, last + 1)}
            yield functools.partial(
                _encode_part, store, fmt.part_key(db_name, generation, seq, number), generation,
                number, source.page_size, source.db_size, pages, compression, counter,
            )

    parts: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=parallelism) as pool:
        for part in in_order(pool, jobs(), window_for(parallelism, per_part * source.page_size)):
            parts.append(part)
            if progress:
                progress(part["pages"] * source.page_size)
    return _write_manifest(
        store, fmt.Manifest(
            db_name=db_name, generation=generation, seq=seq, page_size=source.page_size,
            db_size=source.db_size, part_pages=per_part, writer=writer, reason=reason,
            parts=parts, commit_digest=commit_digest, base=base,
        ), counter,
    )


def _write_manifest(
    store: PageStore, manifest: fmt.Manifest, counter: Callable[[bytes], None] | None
) -> fmt.Manifest:
    data = fmt.encode_manifest(manifest)
    key = fmt.snapshot_key(manifest.db_name, manifest.generation, manifest.seq)
    started = time.monotonic()
    store.put_once(key, data)
    logger.debug("PUT %s (%d bytes) in %.1f ms", key, len(data),
                 (time.monotonic() - started) * 1000)
    if counter:
        counter(data)
    return manifest


def snapshot_seqs(store: PageStore, db_name: str, generation: str) -> list[int]:
    """Commit numbers at which ``generation`` has a snapshot, ascending."""
    return fmt.seqs_of(store.list_keys(fmt.snapshots_prefix(db_name, generation)))


def read_manifest(store: PageStore, db_name: str, generation: str, seq: int) -> fmt.Manifest:
    """Fetch and verify one snapshot manifest."""
    key = fmt.snapshot_key(db_name, generation, seq)
    manifest = fmt.decode_manifest(store.get(key), key)
    if (manifest.db_name, manifest.generation, manifest.seq) != (db_name, generation, seq):
        raise CorruptObjectError(
            f"{key}: manifest describes {manifest.db_name}/{manifest.generation} at commit"
            f" {manifest.seq}: it was copied from elsewhere",
            key=key,
        )
    return manifest


def check_snapshot(manifest: fmt.Manifest, store: PageStore, parallelism: int, *,
                   written_for: int | None = None) -> None:
    """Download every part ``manifest`` lists (but those written for the snapshot at commit
    ``written_for``) and check each against it; raise CorruptObjectError for the first that
    is damaged or missing."""
    def fresh(key: str) -> bool:
        return (fmt.generation_of_key(key) == manifest.generation
                and fmt.part_snapshot_seq(key) == written_for)

    parts = [p for p in manifest.parts if not fresh(str(p["key"]))]

    def fetch(part: dict[str, Any]) -> None:
        key = str(part["key"])
        try:
            data = store.get(key)
        except ObjectNotFoundError:
            raise CorruptObjectError(f"{key}: missing (listed by snapshot {manifest.seq})",
                                     key=key) from None
        check_part(fmt.decode_raw(data, key), key, part, manifest.page_size)

    window = window_for(parallelism, manifest.part_pages * manifest.page_size)
    with ThreadPoolExecutor(max_workers=parallelism) as pool:
        for _ in in_order(pool, [functools.partial(fetch, p) for p in parts], window):
            pass


def check_part(raw: fmt.RawBatch, key: str, part: dict[str, Any], page_size: int) -> None:
    """Raise CorruptObjectError unless ``raw`` is exactly the part the manifest lists."""
    check_part_digest(raw.digest, key, part)
    check_part_layout(raw.head, raw.numbers, key, part, page_size)


def check_part_digest(digest: bytes, key: str, part: dict[str, Any]) -> None:
    """Raise CorruptObjectError unless ``digest`` is the one the manifest lists for the part."""
    if digest.hex() != part["digest"]:
        raise CorruptObjectError(
            f"{key}: digest {digest.hex()[:16]}… does not match the manifest's"
            f" {str(part['digest'])[:16]}…",
            key=key,
        )


def check_part_layout(
    head: fmt.BatchHeader, numbers: list[int], key: str, part: dict[str, Any], page_size: int
) -> None:
    """Raise CorruptObjectError unless a part's header and ascending page numbers are what the
    manifest lists: a snapshot part of this generation holding pages ``first`` to
    ``first + pages - 1``, every one of them."""
    if head.kind != fmt.KIND_SNAPSHOT or head.generation != fmt.generation_of_key(key):
        raise CorruptObjectError(f"{key}: not a snapshot part of {fmt.generation_of_key(key)}",
                                 key=key)
    first, count = int(part["first"]), int(part["pages"])
    if (head.page_size != page_size or len(numbers) != count
            or (numbers and (numbers[0] != first or numbers[-1] != first + count - 1))):
        raise CorruptObjectError(f"{key}: holds other pages than the manifest says", key=key)


def iter_commits(
    store: PageStore, db_name: str, generation: str, first: int, last: int, prev: bytes,
    parallelism: int, counter: Callable[[int], None] | None = None,
) -> Iterator[fmt.RawBatch]:
    """Fetch commits ``first..last`` of a generation in order, verifying the chain from ``prev``."""
    keys = [fmt.commit_key(db_name, generation, s) for s in range(first, last + 1)]

    def fetch(key: str) -> tuple[str, fmt.RawBatch, int]:
        try:
            data = store.get(key)
        except ObjectNotFoundError:
            seq = fmt.seq_from_key(key)
            raise RestoreError(
                f"{key} is missing: commit {seq} of generation {generation} is gone (deleted by"
                f" hand, or by an interrupted gc); the last consistent point before it is commit"
                f" {(seq or 1) - 1}"
            ) from None
        return key, fmt.decode_raw(data, key), len(data)  # decoded in the download thread

    with ThreadPoolExecutor(max_workers=parallelism) as pool:
        jobs = [functools.partial(fetch, k) for k in keys]
        for seq, (key, raw, size) in zip(
            range(first, last + 1), in_order(pool, jobs, parallelism), strict=True
        ):
            if counter:
                counter(size)
            head = raw.head
            if head.kind == fmt.KIND_SUCCESSOR and head.seq == seq and head.prev == prev:
                raise GenerationEndedError(
                    f"generation {generation} ends at commit {seq - 1}: it continues as"
                    f" generation {head.generation}",
                    generation=generation, seq=seq - 1, successor=head.generation,
                )
            if head.generation != generation or head.kind != fmt.KIND_COMMIT or head.seq != seq:
                raise CorruptObjectError(
                    f"{key}: object says generation {head.generation} commit {head.seq},"
                    f" expected {generation} commit {seq}: it was copied from elsewhere",
                    key=key,
                )
            if head.prev != prev:
                raise CorruptObjectError(
                    f"{key}: breaks the commit chain (it follows {head.prev.hex()[:16]}…, the"
                    f" previous object is {prev.hex()[:16]}…); the last consistent point is"
                    f" commit {seq - 1} of generation {generation}",
                    key=key,
                )
            prev = raw.digest
            yield raw


def compact(
    store: PageStore, *, db_name: str, generation: str, seq: int, compression: str,
    parallelism: int, writer: str, into: str | None = None, reason: str = "compaction",
    part_mb: int = 16, counter: Callable[[bytes], None] | None = None,
    created_ms: int | None = None,
) -> fmt.Manifest:
    """Build the snapshot of ``generation`` at commit ``seq`` from the bucket and store it.

    With ``into``, the snapshot becomes snapshot 0 of that new generation (a branch that starts
    from ``generation`` at ``seq``). Only parts whose pages changed since the previous snapshot
    are uploaded, at most ``parallelism`` at a time. The changed pages wait in a temporary file,
    so memory holds the objects in flight, not the whole log since the previous snapshot.
    ``counter`` sees each object written, from upload threads but never two at once.
    ``created_ms``, the manifest's time, defaults to the time of commit ``seq``, the moment
    from which the snapshot's state holds (to now for a branch: ``into``).
    Raises RestoreError without a snapshot at or before ``seq``, CorruptObjectError on a broken
    chain or object.
    """
    started = time.monotonic()
    base = _base_snapshot(store, db_name, generation, seq)
    with ChangedPages(base.page_size) as changed:
        db_size, last_digest, resized, last_ms = _read_log(store, base, seq, parallelism,
                                                          changed)
        build = _PartBuild(
            store, db_name, generation, seq, into or generation, 0 if into else seq,
            changed.page_size, db_size, base.page_size, compression, one_at_a_time(counter),
        )
        per_part = base.part_pages if not resized and base.page_size else part_pages_for(
            build.page_size, part_mb
        )
        old_parts = {int(p["first"]): p for p in base.parts} if not resized else {}
        parts, uploaded = _upload_parts(build, changed, old_parts, per_part, parallelism)
    manifest = _write_manifest(store, fmt.Manifest(
        db_name=db_name, generation=build.into, seq=build.into_seq, page_size=build.page_size,
        db_size=db_size, part_pages=per_part, writer=writer, reason=reason, parts=parts,
        commit_digest=None if into else last_digest.hex(),
        base={"generation": generation, "seq": seq, "digest": last_digest.hex()} if into else None,
        created_ms=created_ms if created_ms is not None else int(time.time() * 1000) if into
        else last_ms,
    ), build.counter)
    logger.info(
        "%s: snapshot of %s at commit %d%s: %d of %d parts uploaded in %.2fs",
        db_name, generation, seq, f" as generation {into}" if into else "", uploaded,
        len(parts), time.monotonic() - started,
    )
    return manifest


def planned_parts(
    store: PageStore, *, db_name: str, generation: str, seq: int, parallelism: int,
    part_mb: int = 16,
) -> list[str]:
    """The keys of the parts :func:`compact` would list for the snapshot of ``generation`` at
    commit ``seq``, without building it: the previous snapshot's parts it would list again,
    and the keys it would upload the others under. Reads (and checks) the commits since the
    previous snapshot, as compact does; writes nothing. Raises as compact does.
    """
    base = _base_snapshot(store, db_name, generation, seq)
    per_part = max(1, base.part_pages)
    touched: set[int] = set()  # part numbers, as the previous snapshot cuts the pages
    db_size, page_size, resized = base.db_size, base.page_size, False
    for raw in iter_commits(
        store, db_name, generation, base.seq + 1, seq, base.chain_digest, parallelism
    ):
        if raw.head.page_size != page_size:
            page_size, resized = raw.head.page_size, True
        touched.update((n - 1) // per_part for n in raw.numbers)
        db_size = raw.head.db_size
    if resized or not base.page_size:
        per_part = part_pages_for(page_size, part_mb)
    old_parts = {int(p["first"]): p for p in base.parts} if not resized else {}
    keys = []
    for number, first in enumerate(range(1, db_size + 1, per_part)):
        last = min(first + per_part - 1, db_size)
        old = old_parts.get(first)
        if old is not None and _reusable(old, first, last, changed=number in touched):
            keys.append(str(old["key"]))
        else:
            keys.append(fmt.part_key(db_name, generation, seq, number))
    return keys


def _base_snapshot(store: PageStore, db_name: str, generation: str, seq: int) -> fmt.Manifest:
    """The newest snapshot at or before ``seq``, which a compaction at ``seq`` starts from."""
    older = [s for s in snapshot_seqs(store, db_name, generation) if s <= seq]
    if not older:
        raise RestoreError(f"{db_name}: generation {generation} has no snapshot at or before {seq}")
    return read_manifest(store, db_name, generation, older[-1])


def _reusable(old: dict[str, Any], first: int, last: int, *, changed: bool) -> bool:
    """Whether the previous snapshot's part ``old`` can be listed again for pages
    ``first..last``: it holds exactly those pages and none of them changed."""
    return int(old["pages"]) == last - first + 1 and not changed


def _read_log(
    store: PageStore, base: fmt.Manifest, seq: int, parallelism: int, changed: ChangedPages
) -> tuple[int, bytes, bool, int]:
    """Put the pages of the commits from ``base`` to ``seq`` into ``changed``; return the
    database size and the digest at ``seq``, whether the page size changed on the way, and
    the time of commit ``seq`` (ms)."""
    db_size, last_digest, resized = base.db_size, base.chain_digest, False
    last_ms = base.created_ms
    for raw in iter_commits(
        store, base.db_name, base.generation, base.seq + 1, seq, base.chain_digest, parallelism
    ):
        if raw.head.page_size != changed.page_size:
            changed.clear(raw.head.page_size)  # such a commit holds every page
            resized = True
        changed.add(raw)
        db_size, last_digest, last_ms = raw.head.db_size, raw.digest, raw.head.created_ms
    return db_size, last_digest, resized, last_ms


def _upload_parts(
    build: _PartBuild, changed: ChangedPages, old_parts: dict[int, dict[str, Any]],
    per_part: int, parallelism: int,
) -> tuple[list[dict[str, Any]], int]:
    """The parts of the new snapshot, in order, and how many of them were uploaded: a part of
    the previous snapshot (``old_parts``, by first page) whose pages did not change is listed
    again, any other is built and uploaded, at most ``parallelism`` at a time."""

    def jobs() -> Iterator[Callable[[], tuple[dict[str, Any], bool]]]:
        for number, first in enumerate(range(1, build.db_size + 1, per_part)):
            last = min(first + per_part - 1, build.db_size)
            old = old_parts.get(first)
            if old is not None and _reusable(
                old, first, last, changed=bool(changed.numbers(first, last))
            ):
                yield functools.partial(_listed_again, old)
            else:  # read here: the file is this thread's; in flight: one part's pages
                pages = changed.pages(first, last)
                yield functools.partial(build.part, number, first, last, old, pages)

    parts: list[dict[str, Any]] = []
    uploaded = 0
    window = window_for(parallelism, per_part * build.page_size)
    with ThreadPoolExecutor(max_workers=parallelism) as pool:
        for part, new in in_order(pool, jobs(), window):
            parts.append(part)
            uploaded += new
    return parts, uploaded


def _listed_again(part: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    return part, False


@dataclass(frozen=True)
class _PartBuild:
    """What every part a compaction uploads shares: where it comes from and where it goes."""

    store: PageStore
    db_name: str
    generation: str
    seq: int
    into: str
    into_seq: int
    page_size: int
    db_size: int
    base_page_size: int
    compression: str
    counter: Callable[[bytes], None] | None

    def part(
        self, number: int, first: int, last: int, old: dict[str, Any] | None,
        changed: dict[int, bytes],
    ) -> tuple[dict[str, Any], bool]:
        """Upload part ``number`` (pages ``first..last``): the previous snapshot's part
        ``old``, if any, overlaid with the ``changed`` pages. Runs in an upload thread."""
        pages: dict[int, bytes] = {}
        if old is not None:
            key = str(old["key"])
            raw = fmt.decode_raw(self.store.get(key), key)
            check_part(raw, key, old, self.base_page_size)
            pages.update((n, p) for n, p in raw.to_batch().pages.items() if n <= last)
        pages.update(changed)
        lock_page = fmt.lock_byte_page(self.page_size)
        if first <= lock_page <= last and lock_page not in pages:
            pages[lock_page] = bytes(self.page_size)  # SQLite never writes it (> 1 GiB)
        missing = [n for n in range(first, last + 1) if n not in pages]
        if missing:
            raise CorruptObjectError(
                f"{self.db_name}: cannot build the snapshot at commit {self.seq} of"
                f" {self.generation}: pages {missing[:5]} are in neither the previous snapshot"
                " nor the commits"
            )
        return _encode_part(
            self.store, fmt.part_key(self.db_name, self.into, self.into_seq, number), self.into,
            number, self.page_size, self.db_size, pages, self.compression, self.counter,
        ), True

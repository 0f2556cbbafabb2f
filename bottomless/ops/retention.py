"""Retention: deleting what no restorable point inside the retention window needs.

The window is every moment from ``now - older_than`` onwards, widened (never narrowed) so that
the newest ``keep_snapshots`` snapshots stay restorable. Inside a generation, the *boundary* is
the newest commit at or before the window starts: every point inside the window is it or a
later commit. The *anchor* is the newest snapshot at or before the boundary (and at or before
every snapshot ``keep_snapshots`` keeps): snapshots and commits before it, and parts that no
kept snapshot lists, can go. The anchor's own commit goes too if the anchor's time is at or
before the window's start; otherwise it stays, so that a restore by timestamp still finds when
that state began. A generation that ended before the window goes entirely, except parts a kept
snapshot still lists (branches share parts). The newest generation is always kept restorable
up to its last commit.

When the newest generation's anchor is older than its boundary, the log between them would
have to stay, however long; so gc first builds a snapshot at the boundary from the bucket (a
compaction: the anchor plus the commits since, unchanged parts listed again), which becomes
the anchor; its time is its commit's. Snapshots are create-only objects: if another process
(the writer's own background snapshot, another gc) builds the same one at the same time, gc
uses theirs once it is complete, and otherwise leaves the log for a later run.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field

from bottomless import format as fmt
from bottomless.backends.base import PageStore
from bottomless.errors import ObjectExistsError, ObjectNotFoundError
from bottomless.ops.restore import commit_header, commit_numbers, generations
from bottomless.ops.snapshots import compact, planned_parts, read_manifest, snapshot_seqs

logger = logging.getLogger(__name__)

#: an unreferenced part or an incomplete generation younger than this may be an upload in
#: progress, so gc leaves it alone
GRACE_SECONDS = 3600

Snapshot = tuple[str, int]  # (generation, commit number)


@dataclass(frozen=True)
class _Listed:
    """What gc needs of a snapshot's manifest: its time and the keys of its parts."""

    created_ms: int
    parts: list[str]


@dataclass
class GcReport:
    """What gc deleted (or, in a dry run, would delete) and what it kept.

    Attributes:
        window_start: Every point from this moment on (ISO 8601 UTC) stays restorable.
        deleted: Keys deleted, in the order of deletion.
        kept_generations: Generations that stay restorable.
        dry_run: True when nothing was deleted or built.
        temporaries: Leftover temporary objects of interrupted writes, deleted as well.
        snapshot_built: The commit of the newest generation at which gc built a snapshot (in
            a dry run: would build one), so that the log before the window could go; None if
            none was needed, or another process was building it.
    """

    db_name: str
    window_start: str
    deleted: list[str] = field(default_factory=list)
    kept_generations: list[str] = field(default_factory=list)
    dry_run: bool = False
    temporaries: list[str] = field(default_factory=list)
    snapshot_built: int | None = None


@dataclass
class _History:
    """One complete generation: what it holds, and where the retention window starts in it."""

    generation: str
    snapshots: list[int]
    commits: list[int]
    kept: bool  #: it ends inside the window, or it is the newest generation
    boundary: int  #: the newest commit at or before the window starts (or its first snapshot)

    def anchor(self, keep: set[Snapshot]) -> int:
        """The snapshot every point inside the window is restored from."""
        limit = min([self.boundary, *(s for g, s in keep if g == self.generation)])
        older = [s for s in self.snapshots if s <= limit]
        return older[-1] if older else self.snapshots[0]


@dataclass(frozen=True)
class _BuildOptions:
    """How gc builds a snapshot, as the writer's settings say."""

    compression: str
    parallelism: int
    part_mb: int


def collect_garbage(
    store: PageStore, db_name: str, *, older_than: dt.timedelta | None,
    keep_snapshots: int = 0, dry_run: bool = False, now: float | None = None,
    compression: str = "zstd", parallelism: int = 4, part_mb: int = 16,
) -> GcReport:
    """Delete the objects of ``db_name`` that fall outside retention (see module docstring),
    building a snapshot at the window's start first when the newest generation needs one
    (``compression``, ``parallelism`` and ``part_mb`` say how, as for background snapshots).

    With ``dry_run`` nothing is built or deleted; the report says what would be. Raises
    CorruptObjectError (an object gc must read does not parse, or the log a snapshot would be
    built from is broken) or StoreError, before deleting anything.
    """
    now = time.time() if now is None else now
    gens = generations(store, db_name)
    listed = {g: snapshot_seqs(store, db_name, g) for g in gens}
    manifests = {
        (g, s): read_manifest(store, db_name, g, s) for g in gens for s in listed[g]
    }
    window_ms = _window_start(now, older_than, keep_snapshots, manifests)
    keep = set(sorted(manifests, reverse=True)[:keep_snapshots])
    report = GcReport(db_name, fmt.iso_time(window_ms, timespec="seconds"), dry_run=dry_run)
    histories = _histories(store, db_name, listed, manifests, window_ms)
    known = {snapshot: _listed(m) for snapshot, m in manifests.items()}
    cleared: list[str] = []
    if histories:
        cleared = _snapshot_boundary(
            store, db_name, histories[-1], keep, known, now, report,
            _BuildOptions(compression, parallelism, part_mb),
        )
    doomed, kept = _doomed_history(
        store, db_name, listed, histories, keep, known, window_ms, now, report
    )
    needed = {key for snapshot in kept for key in known[snapshot].parts}
    doomed.extend(_doomed_parts(store, db_name, listed, needed, doomed, now))
    # a part a kept snapshot lists is never deleted, whichever generation it sits in
    report.deleted = sorted(set(doomed) - needed | set(cleared), key=_deletion_order)
    report.temporaries = store.stale_temporaries(
        fmt.db_prefix(db_name), older_than=GRACE_SECONDS, now=now
    )
    if not dry_run:
        # snapshots first, oldest first, then commits, then parts: a gc killed half-way leaves
        # fewer restorable points, never a snapshot whose parts or commits are gone
        for key in report.deleted:
            if key not in cleared:  # already gone
                store.delete(key)
        for key in report.temporaries:
            store.delete(key)
        logger.info("%s: gc deleted %d objects", db_name, len(report.deleted))
    return report


def _window_start(
    now: float, older_than: dt.timedelta | None, keep_snapshots: int,
    manifests: dict[Snapshot, fmt.Manifest],
) -> int:
    """When the retention window starts (ms): ``older_than`` before ``now``, moved earlier so
    that it holds the newest ``keep_snapshots`` snapshots."""
    now_ms = int(now * 1000)
    window_ms = now_ms - int(older_than.total_seconds() * 1000) if older_than is not None else 0
    if keep_snapshots > 0:
        ordered = sorted(manifests, reverse=True)  # generation ids and seqs sort in time
        if len(ordered) >= keep_snapshots:
            window_ms = min(window_ms, manifests[ordered[keep_snapshots - 1]].created_ms)
        else:
            window_ms = 0
    return window_ms


def _histories(
    store: PageStore, db_name: str, listed: dict[str, list[int]],
    manifests: dict[Snapshot, fmt.Manifest], window_ms: int,
) -> list[_History]:
    """The complete generations, oldest first; the last one is the newest."""
    complete = [g for g, seqs in listed.items() if seqs]
    histories = []
    for generation in complete:
        seqs = listed[generation]
        commits = commit_numbers(store, db_name, generation)
        last = commit_header(store, db_name, generation, commits[-1]) if commits else None
        last_ms = last.created_ms if last else manifests[(generation, seqs[-1])].created_ms
        kept = generation == complete[-1] or last_ms >= window_ms
        replayed = commits[:-1] if last and last.kind == fmt.KIND_SUCCESSOR else commits
        boundary = (
            _boundary(store, db_name, generation, seqs, replayed, window_ms) if kept else seqs[0]
        )
        histories.append(_History(generation, list(seqs), commits, kept, boundary))
    return histories


def _boundary(
    store: PageStore, db_name: str, generation: str, snapshots: list[int], commits: list[int],
    window_ms: int,
) -> int:
    """The newest commit made at or before ``window_ms`` that a restore reaches from the first
    snapshot (that snapshot itself if none is), found by bisection over commit headers."""
    last = snapshots[-1]
    for seq in commits:
        if seq > last + 1:
            break  # a gap: nothing after it is restorable
        last = max(last, seq)
    candidates = [c for c in commits if snapshots[0] < c <= last]
    low, high = 0, len(candidates)  # candidates[:low] were made at or before the window
    while low < high:
        middle = (low + high) // 2
        if commit_header(store, db_name, generation, candidates[middle]).created_ms <= window_ms:
            low = middle + 1
        else:
            high = middle
    return candidates[low - 1] if low else snapshots[0]


def _listed(manifest: fmt.Manifest) -> _Listed:
    return _Listed(manifest.created_ms, [str(p["key"]) for p in manifest.parts])


def _snapshot_boundary(
    store: PageStore, db_name: str, history: _History, keep: set[Snapshot],
    known: dict[Snapshot, _Listed], now: float, report: GcReport, options: _BuildOptions,
) -> list[str]:
    """Build the snapshot at the newest generation's boundary if its anchor is older (in a dry
    run: plan it), and add it to ``history`` and ``known``; record it in ``report``.

    Returns the parts an abandoned attempt at the same snapshot left behind, which are
    deleted first (in a dry run: would be).
    """
    seq, generation = history.boundary, history.generation
    if history.anchor(keep) >= seq or seq in history.snapshots:
        return []  # covered, or a snapshot that keep_snapshots keeps comes first
    referenced = {key for listed in known.values() for key in listed.parts}
    leftovers = [
        key for key in store.list_keys(fmt.parts_prefix(db_name, generation))
        if fmt.part_snapshot_seq(key) == seq
    ]
    if any(k in referenced or _part_age(store, k, now) <= GRACE_SECONDS for k in leftovers):
        logger.info("%s: the snapshot at commit %d of %s is being built by another process;"
                    " gc leaves the log before it to a later run", db_name, seq, generation)
        return []
    report.snapshot_built = seq
    created_ms = commit_header(store, db_name, generation, seq).created_ms
    if report.dry_run:
        known[(generation, seq)] = _Listed(created_ms, planned_parts(
            store, db_name=db_name, generation=generation, seq=seq,
            parallelism=options.parallelism, part_mb=options.part_mb,
        ))
    else:
        for key in leftovers:
            store.delete(key)
        try:
            manifest = compact(
                store, db_name=db_name, generation=generation, seq=seq,
                compression=options.compression, parallelism=options.parallelism,
                writer=fmt.new_writer_id().hex(), part_mb=options.part_mb,
                created_ms=created_ms,
            )
            logger.info("%s: gc built the snapshot at commit %d of %s, the window's start",
                        db_name, seq, generation)
        except ObjectExistsError:  # another process is building the very same snapshot
            report.snapshot_built = None
            try:
                manifest = read_manifest(store, db_name, generation, seq)
            except ObjectNotFoundError:
                logger.info("%s: another process is building the snapshot at commit %d of %s;"
                            " gc leaves the log before it to a later run",
                            db_name, seq, generation)
                return leftovers
        known[(generation, seq)] = _listed(manifest)
    history.snapshots = sorted([*history.snapshots, seq])
    return leftovers


def _doomed_history(
    store: PageStore, db_name: str, listed: dict[str, list[int]], histories: list[_History],
    keep: set[Snapshot], known: dict[Snapshot, _Listed], window_ms: int, now: float,
    report: GcReport,
) -> tuple[list[str], list[Snapshot]]:
    """The snapshots, commits and whole generations (but their parts) that can go, and the
    snapshots that stay; records the generations kept in ``report``."""
    doomed: list[str] = []
    kept: list[Snapshot] = []
    complete = {h.generation: h for h in histories}
    for generation in listed:
        prefix = fmt.generation_prefix(db_name, generation)
        history = complete.get(generation)
        if history is None:
            if _age_seconds(generation, now) > GRACE_SECONDS:
                doomed.extend(store.list_keys(prefix))  # an interrupted initial upload
            continue
        if not history.kept:
            doomed.extend(k for k in store.list_keys(prefix) if not fmt.is_part_key(k))
            continue
        report.kept_generations.append(generation)
        anchor = history.anchor(keep)
        # a restore by timestamp dates the oldest snapshot by its commit, or by its own time
        # once that commit is gone: the commit goes if that time is before the window
        dated = known[(generation, anchor)].created_ms <= window_ms
        doomed.extend(
            fmt.snapshot_key(db_name, generation, s) for s in history.snapshots if s < anchor
        )
        doomed.extend(
            fmt.commit_key(db_name, generation, c) for c in history.commits
            if c < anchor or (c == anchor and dated)
        )
        kept.extend((generation, s) for s in history.snapshots if s >= anchor)
    return doomed, kept


def _doomed_parts(
    store: PageStore, db_name: str, listed: dict[str, list[int]], needed: set[str],
    doomed: list[str], now: float,
) -> list[str]:
    """The parts that no kept snapshot lists (nor ``doomed`` holds already): those of the
    snapshots listed when gc started, and any other once it is older than the grace period
    (its snapshot may be being built, by the writer or by another gc)."""
    parts: list[str] = []
    for generation, seqs in listed.items():
        written = set(seqs)
        for key in store.list_keys(fmt.parts_prefix(db_name, generation)):
            if key in needed or key in doomed:
                continue
            if fmt.part_snapshot_seq(key) in written or _part_age(store, key, now) > GRACE_SECONDS:
                parts.append(key)
    return parts


def _deletion_order(key: str) -> tuple[int, str]:
    rank = 0 if fmt.is_snapshot_key(key) else 1 if fmt.is_commit_key(key) else 2
    return rank, key


def _age_seconds(generation: str, now: float) -> float:
    return now - fmt.generation_time(generation)


def _part_age(store: PageStore, key: str, now: float) -> float:
    head = fmt.decode_header(store.get_range(key, 0, fmt.HEADER_SIZE), key)
    return now - head.created_ms / 1000

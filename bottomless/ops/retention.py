"""Retention: deleting what no restorable point inside the retention window needs.

The window is every moment from ``now - older_than`` onwards, widened (never narrowed) so that
the newest ``keep_snapshots`` snapshots stay restorable. Inside a generation, the *anchor* is
the newest snapshot taken at or before the window starts: snapshots before it, commits up to
it, and parts that no kept snapshot lists can go. A generation that ended before the window
goes entirely, except parts a kept snapshot still lists (branches share parts). The newest
generation is always kept restorable up to its last commit.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field

from bottomless import format as fmt
from bottomless.backends.base import PageStore
from bottomless.ops.restore import commit_header, commit_numbers, generations
from bottomless.ops.snapshots import read_manifest, snapshot_seqs

logger = logging.getLogger(__name__)

#: an unreferenced part or an incomplete generation younger than this may be an upload in
#: progress, so gc leaves it alone
GRACE_SECONDS = 3600


@dataclass
class GcReport:
    """What gc deleted (or, in a dry run, would delete) and what it kept.

    Attributes:
        window_start: Every point from this moment on (ISO 8601 UTC) stays restorable.
        deleted: Keys deleted, in the order of deletion.
        kept_generations: Generations that stay restorable.
        dry_run: True when nothing was deleted.
        temporaries: Leftover temporary objects of interrupted writes, deleted as well.
    """

    db_name: str
    window_start: str
    deleted: list[str] = field(default_factory=list)
    kept_generations: list[str] = field(default_factory=list)
    dry_run: bool = False
    temporaries: list[str] = field(default_factory=list)


def collect_garbage(
    store: PageStore, db_name: str, *, older_than: dt.timedelta | None,
    keep_snapshots: int = 0, dry_run: bool = False, now: float | None = None,
) -> GcReport:
    """Delete the objects of ``db_name`` that fall outside retention (see module docstring)."""
    now = time.time() if now is None else now
    gens = generations(store, db_name)
    snapshots = {g: snapshot_seqs(store, db_name, g) for g in gens}
    manifests = {
        (g, s): read_manifest(store, db_name, g, s) for g in gens for s in snapshots[g]
    }
    window_ms = _window_start(now, older_than, keep_snapshots, manifests)
    report = GcReport(db_name, fmt.iso_time(window_ms, timespec="seconds"), dry_run=dry_run)
    doomed, kept_manifests = _doomed_history(
        store, db_name, snapshots, manifests, window_ms, now, report
    )
    needed = {str(p["key"]) for m in kept_manifests for p in m.parts}
    doomed.extend(_doomed_parts(store, db_name, snapshots, needed, doomed, now))
    # a part a kept snapshot lists is never deleted, whichever generation it sits in
    report.deleted = sorted(set(doomed) - needed, key=_deletion_order)
    report.temporaries = store.stale_temporaries(
        fmt.db_prefix(db_name), older_than=GRACE_SECONDS, now=now
    )
    if not dry_run:
        # snapshots first, oldest first, then commits, then parts: a gc killed half-way leaves
        # fewer restorable points, never a snapshot whose parts or commits are gone
        for key in report.deleted:
            store.delete(key)
        for key in report.temporaries:
            store.delete(key)
        logger.info("%s: gc deleted %d objects", db_name, len(report.deleted))
    return report


def _window_start(
    now: float, older_than: dt.timedelta | None, keep_snapshots: int,
    manifests: dict[tuple[str, int], fmt.Manifest],
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


def _doomed_history(
    store: PageStore, db_name: str, snapshots: dict[str, list[int]],
    manifests: dict[tuple[str, int], fmt.Manifest], window_ms: int, now: float,
    report: GcReport,
) -> tuple[list[str], list[fmt.Manifest]]:
    """The snapshots, commits and whole generations (but their parts) that can go, and the
    manifests that stay; records the generations kept in ``report``."""
    complete = [g for g in snapshots if snapshots[g]]
    newest = complete[-1] if complete else None
    doomed: list[str] = []
    kept_manifests: list[fmt.Manifest] = []
    for generation, seqs in snapshots.items():
        prefix = fmt.generation_prefix(db_name, generation)
        if not seqs:
            keys = store.list_keys(prefix)
            if _age_seconds(generation, now) > GRACE_SECONDS:
                doomed.extend(keys)  # an interrupted initial upload
            continue
        commits = commit_numbers(store, db_name, generation)
        last_ms = (
            commit_header(store, db_name, generation, commits[-1]).created_ms
            if commits else manifests[(generation, seqs[-1])].created_ms
        )
        if generation != newest and last_ms < window_ms:
            doomed.extend(k for k in store.list_keys(prefix) if not fmt.is_part_key(k))
            continue
        report.kept_generations.append(generation)
        older = [s for s in seqs if manifests[(generation, s)].created_ms <= window_ms]
        anchor = older[-1] if older else seqs[0]
        doomed.extend(fmt.snapshot_key(db_name, generation, s) for s in seqs if s < anchor)
        doomed.extend(fmt.commit_key(db_name, generation, c) for c in commits if c <= anchor)
        kept_manifests.extend(manifests[(generation, s)] for s in seqs if s >= anchor)
    return doomed, kept_manifests


def _doomed_parts(
    store: PageStore, db_name: str, snapshots: dict[str, list[int]], needed: set[str],
    doomed: list[str], now: float,
) -> list[str]:
    """The parts that no kept snapshot lists (nor ``doomed`` holds already), leaving alone
    those that may be an upload in progress."""
    parts: list[str] = []
    for generation, seqs in snapshots.items():
        newest_snapshot = seqs[-1] if seqs else -1
        for key in store.list_keys(fmt.parts_prefix(db_name, generation)):
            if key in needed or key in doomed:
                continue
            written_for = fmt.part_snapshot_seq(key)
            if written_for <= newest_snapshot or _part_age(store, key, now) > GRACE_SECONDS:
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

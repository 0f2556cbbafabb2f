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
    """What gc deleted (or, in a dry run, would delete) and what it kept."""

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
    now_ms = int(now * 1000)
    window_ms = now_ms - int(older_than.total_seconds() * 1000) if older_than is not None else 0
    gens = generations(store, db_name)
    snapshots = {g: snapshot_seqs(store, db_name, g) for g in gens}
    manifests = {
        (g, s): read_manifest(store, db_name, g, s) for g in gens for s in snapshots[g]
    }
    if keep_snapshots > 0:
        ordered = sorted(manifests, reverse=True)  # generation ids and seqs sort in time
        if len(ordered) >= keep_snapshots:
            window_ms = min(window_ms, manifests[ordered[keep_snapshots - 1]].created_ms)
        else:
            window_ms = 0
    report = GcReport(db_name, _iso(window_ms), dry_run=dry_run)
    complete = [g for g in gens if snapshots[g]]
    newest = complete[-1] if complete else None
    doomed: list[str] = []
    kept_manifests: list[fmt.Manifest] = []
    for generation in gens:
        seqs = snapshots[generation]
        prefix = f"{fmt.generations_prefix(db_name)}{generation}/"
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
            doomed.extend(k for k in store.list_keys(prefix) if "/parts/" not in k)
            continue
        report.kept_generations.append(generation)
        older = [s for s in seqs if manifests[(generation, s)].created_ms <= window_ms]
        anchor = older[-1] if older else seqs[0]
        doomed.extend(fmt.snapshot_key(db_name, generation, s) for s in seqs if s < anchor)
        doomed.extend(fmt.commit_key(db_name, generation, c) for c in commits if c <= anchor)
        kept_manifests.extend(manifests[(generation, s)] for s in seqs if s >= anchor)
    needed = {str(p["key"]) for m in kept_manifests for p in m.parts}
    newest_snapshot = {g: (snapshots[g][-1] if snapshots[g] else -1) for g in gens}
    for generation in gens:
        for key in store.list_keys(f"{fmt.generations_prefix(db_name)}{generation}/parts/"):
            if key in needed or key in doomed:
                continue
            written_for = int(key.rsplit("/", 1)[-1].split("-")[0])
            if written_for <= newest_snapshot[generation] or _part_age(store, key, now) > (
                GRACE_SECONDS
            ):
                doomed.append(key)
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


def _deletion_order(key: str) -> tuple[int, str]:
    rank = 0 if "/snapshots/" in key else 1 if "/commits/" in key else 2
    return rank, key


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).isoformat(timespec="seconds")


def _age_seconds(generation: str, now: float) -> float:
    stamp = dt.datetime.strptime(generation[:18], "%Y%m%dT%H%M%S%f").replace(tzinfo=dt.UTC)
    return now - stamp.timestamp()


def _part_age(store: PageStore, key: str, now: float) -> float:
    head = fmt.decode_header(store.get_range(key, 0, fmt.HEADER_SIZE), key)
    return now - head.created_ms / 1000

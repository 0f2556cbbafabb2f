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

Uploads in progress are left alone: gc judges an incomplete generation, or the unreferenced
parts written for one snapshot, by the newest object among them, and deletes them only once
that is older than the grace period. When gc builds the anchor while a writer holds the
database (its lease has not expired), that writer may be building its own background snapshot
from the anchor before, and lists that snapshot's parts again: so in that run gc deletes the
snapshot it built over but not its parts; a later run finds them unreferenced, and deletes
them once they are older than the grace period.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from bottomless import format as fmt
from bottomless.backends.base import PageStore
from bottomless.errors import (
    CorruptObjectError,
    ObjectExistsError,
    ObjectNotFoundError,
    ReplicaNotFoundError,
)
from bottomless.ops.snapshots import (
    check_snapshot,
    compact,
    planned_parts,
    read_manifest,
    snapshot_seqs,
)
from bottomless.ops.targets import commit_header, commit_numbers, generations

logger = logging.getLogger(__name__)

#: unreferenced parts of a snapshot, or an incomplete generation, whose newest object is
#: younger than this may be an upload in progress, so gc leaves them alone
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


class _Ages:
    """How long ago objects were written, each read once from its header (a ranged GET)."""

    def __init__(self, store: PageStore, now: float) -> None:
        self.store = store
        self.now = now
        self._created_ms: dict[str, int] = {}

    def of(self, key: str) -> float:
        """Seconds since ``key`` (a page batch: a part or a commit) was written."""
        if key not in self._created_ms:
            head = fmt.decode_header(self.store.get_range(key, 0, fmt.HEADER_SIZE), key)
            self._created_ms[key] = head.created_ms
        return self.now - self._created_ms[key] / 1000

    def newest(self, keys: Iterable[str]) -> float:
        """Seconds since the newest of ``keys`` was written, reading only the header of the
        highest-numbered part of each snapshot (parts go up roughly in order) and of the
        highest-numbered commit."""
        latest: dict[tuple[str, int], str] = {}
        for key in keys:
            if fmt.is_part_key(key):
                group = ("part", fmt.part_snapshot_seq(key))
            elif fmt.is_commit_key(key):
                group = ("commit", 0)
            else:
                continue
            latest[group] = max(latest.get(group, key), key)  # zero-padded: sorts by number
        return min((self.of(key) for key in latest.values()), default=float("inf"))


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
    CorruptObjectError (an object gc must read does not parse, the log a snapshot would be
    built from is broken, or a part of the snapshot every kept point would be restored from
    is damaged) or StoreError, before deleting anything.
    """
    now = time.time() if now is None else now
    gens = generations(store, db_name)
    if not gens and not store.list_keys(fmt.db_prefix(db_name)):
        raise ReplicaNotFoundError(f"{store.location} holds no replica of {db_name!r}")
    listed = {g: snapshot_seqs(store, db_name, g) for g in gens}
    manifests = {
        (g, s): read_manifest(store, db_name, g, s) for g in gens for s in listed[g]
    }
    window_ms = _window_start(now, older_than, keep_snapshots, manifests)
    keep = set(sorted(manifests, reverse=True)[:keep_snapshots])
    # a window with no start (every point kept) is reported from the oldest snapshot, as
    # nothing is older, rather than from 1970
    shown_ms = window_ms or min((m.created_ms for m in manifests.values()), default=0)
    report = GcReport(db_name, fmt.iso_time(shown_ms, timespec="seconds"), dry_run=dry_run)
    histories = _histories(store, db_name, listed, manifests, window_ms)
    known = {snapshot: _listed(m) for snapshot, m in manifests.items()}
    ages = _Ages(store, now)
    cleared: list[str] = []
    based_on: list[Snapshot] = []  # what a writer may be building a snapshot from
    if histories:
        newest = histories[-1]
        anchor = newest.anchor(keep)
        cleared = _snapshot_boundary(
            store, db_name, newest, keep, known, ages, report,
            _BuildOptions(compression, parallelism, part_mb),
        )
        if report.snapshot_built is not None and _writer_may_be_live(store, db_name, now):
            based_on.append((newest.generation, anchor))
    doomed, kept = _doomed_history(
        store, db_name, listed, histories, keep, known, window_ms, ages, report
    )
    # a part a kept snapshot lists is never deleted, whichever generation it sits in; nor,
    # in this run, one that the anchor gc just built over lists, while a writer may be
    # building a snapshot from that anchor (which lists it too)
    spared = {key for snapshot in [*kept, *based_on] for key in known[snapshot].parts}
    doomed.extend(_doomed_parts(store, db_name, listed, spared, set(doomed), ages))
    report.deleted = sorted(set(doomed) - spared | set(cleared), key=_deletion_order)
    report.temporaries = store.stale_temporaries(
        fmt.db_prefix(db_name), older_than=GRACE_SECONDS, now=now
    )
    if not dry_run:
        for history in histories:  # gc builds in the newest one alone
            built = report.snapshot_built if history is histories[-1] else None
            _check_anchor(store, db_name, history, keep, report, parallelism, built)
        _delete(store, db_name, report, cleared)
    return report


def _delete(store: PageStore, db_name: str, report: GcReport, cleared: list[str]) -> None:
    """Delete what ``report`` lists, but ``cleared`` (gone already): snapshots first, oldest
    first, then commits, then parts (the order of ``report.deleted``), so that a gc killed
    half-way leaves fewer restorable points, never a snapshot whose parts or commits are gone."""
    for key in report.deleted:
        if key not in cleared:
            store.delete(key)
    for key in report.temporaries:
        store.delete(key)
    logger.info("%s: gc deleted %d objects", db_name, len(report.deleted))


def _check_anchor(store: PageStore, db_name: str, history: _History, keep: set[Snapshot],
                  report: GcReport, parallelism: int, built: int | None) -> None:
    """Before gc deletes older snapshots or commits of a generation it keeps, check the
    snapshot the points it keeps there are then restored from: a damaged part (as a part
    listed again, unread, by a snapshot gc built would be) must not become the only way
    there. Parts gc uploaded in this run were just written from checked pages."""
    if not history.kept or not any(
        (fmt.is_snapshot_key(key) or fmt.is_commit_key(key))
        and fmt.generation_of_key(key) == history.generation for key in report.deleted
    ):
        return  # a generation gc deletes whole, or one whose history stays as it is
    seq = history.anchor(keep)
    try:
        check_snapshot(read_manifest(store, db_name, history.generation, seq), store,
                       parallelism, written_for=built)
    except CorruptObjectError as e:
        raise CorruptObjectError(
            f"{db_name}: gc deleted nothing: the snapshot at commit {seq} of generation"
            f" {history.generation}, which every point gc keeps would be restored from, is"
            f" damaged ({e}). The older snapshots and commits still reach those points;"
            f" `bottomless verify {db_name}` lists what is damaged",
            key=e.key,
        ) from e


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
    """The complete generations, oldest first; the last one is the newest.

    A generation's state holds until the next complete generation begins, so one ends at the
    later of its last object and that beginning: without its successor object (a start that
    failed to write it), its last commit may be well before the next generation.
    """
    complete = [g for g, seqs in listed.items() if seqs]
    if not complete:
        return []
    histories = []
    for generation, following in zip(complete, [*complete[1:], None], strict=True):
        seqs = listed[generation]
        commits = commit_numbers(store, db_name, generation)
        last = commit_header(store, db_name, generation, commits[-1]) if commits else None
        last_ms = last.created_ms if last else manifests[(generation, seqs[-1])].created_ms
        if following is not None:
            last_ms = max(last_ms, manifests[(following, listed[following][0])].created_ms)
        kept = following is None or last_ms >= window_ms
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
    known: dict[Snapshot, _Listed], ages: _Ages, report: GcReport, options: _BuildOptions,
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
    if any(k in referenced for k in leftovers) or ages.newest(leftovers) <= GRACE_SECONDS:
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
    keep: set[Snapshot], known: dict[Snapshot, _Listed], window_ms: int, ages: _Ages,
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
            # an interrupted initial upload, unless its newest object is recent: one that is
            # still going (a large database, a slow link) may have started long ago
            keys = store.list_keys(prefix)
            started = ages.now - fmt.generation_time(generation)
            if started > GRACE_SECONDS and ages.newest(keys) > GRACE_SECONDS:
                doomed.extend(keys)
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
    store: PageStore, db_name: str, listed: dict[str, list[int]], spared: set[str],
    doomed: set[str], ages: _Ages,
) -> list[str]:
    """The parts that ``spared`` does not hold (nor ``doomed`` already): those written for
    the snapshots listed when gc started, and those written for any other snapshot once the
    newest of them is older than the grace period (that snapshot may be being built, by the
    writer or by another gc, its early parts long written)."""
    parts: list[str] = []
    for generation, seqs in listed.items():
        written = set(seqs)
        groups: dict[int, list[str]] = {}
        for key in store.list_keys(fmt.parts_prefix(db_name, generation)):
            groups.setdefault(fmt.part_snapshot_seq(key), []).append(key)
        for seq, keys in groups.items():
            loose = [k for k in keys if k not in spared and k not in doomed]
            if loose and (seq in written or ages.newest(keys) > GRACE_SECONDS):
                parts.extend(loose)
    return parts


def _writer_may_be_live(store: PageStore, db_name: str, now: float) -> bool:
    """Whether a writer may hold ``db_name`` now: its lease has not expired (a writer that
    closed expired it), or there is no lease to tell (``lease_ttl=0``)."""
    try:
        lease = fmt.LeaseRecord.decode(store.get(fmt.lease_key(db_name)))
    except ObjectNotFoundError:
        return True
    return lease.expires_ms > now * 1000


def _deletion_order(key: str) -> tuple[int, str]:
    rank = 0 if fmt.is_snapshot_key(key) else 1 if fmt.is_commit_key(key) else 2
    return rank, key


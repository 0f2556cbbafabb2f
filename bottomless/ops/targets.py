"""What a restore lands on: the generations and commits the store holds, and the target a
restore resolves from them (the newest commit, an exact one, or a moment in time).

Restorable commits are runs: each snapshot and the commits that follow it without a gap. A
superseded generation stops at its successor object and, when the next generation branched
from it, at the commit it branched from (what follows is an orphan its writer never
committed). Errors name the nearest restorable points.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from bottomless import format as fmt
from bottomless.backends.base import PageStore
from bottomless.errors import ObjectNotFoundError, ReplicaNotFoundError, RestoreError
from bottomless.ops.snapshots import read_manifest, snapshot_seqs

logger = logging.getLogger(__name__)


@dataclass
class Target:
    """A restorable point: a commit of a generation, and the snapshot to start from."""

    generation: str
    seq: int
    snapshot: fmt.Manifest


def generations(store: PageStore, db_name: str) -> list[str]:
    """Generation ids of ``db_name``, oldest first (including incomplete ones)."""
    children = store.list_children(fmt.generations_prefix(db_name))
    return sorted(c for c in children if fmt.is_generation_id(c))


def complete_generations(store: PageStore, db_name: str) -> list[str]:
    """Generations that have at least one snapshot (incomplete uploads excluded), oldest first."""
    return [g for g in generations(store, db_name) if snapshot_seqs(store, db_name, g)]


def latest_generation(store: PageStore, db_name: str) -> fmt.Manifest | None:
    """Oldest kept snapshot of the newest complete generation of ``db_name``, or ``None``.

    That is snapshot 0 unless gc removed the generation's early history.
    """
    for generation in reversed(generations(store, db_name)):
        seqs = snapshot_seqs(store, db_name, generation)
        if seqs:
            return read_manifest(store, db_name, generation, seqs[0])
        logger.debug("generation %s has no snapshot (incomplete), skipping", generation)
    return None


def commit_numbers(store: PageStore, db_name: str, generation: str) -> list[int]:
    """Sequence numbers of the commits stored for a generation, ascending."""
    return fmt.seqs_of(store.list_keys(fmt.commits_prefix(db_name, generation)))


def commit_header(store: PageStore, db_name: str, generation: str, seq: int) -> fmt.BatchHeader:
    """The header of one commit, with one ranged GET."""
    key = fmt.commit_key(db_name, generation, seq)
    return fmt.decode_header(store.get_range(key, 0, fmt.HEADER_SIZE), key)


def history(store: PageStore, db_name: str, generation: str, *, newest: str) -> list[int]:
    """The commit numbers of a generation, without the successor object that ends a
    superseded one (one ranged GET when ``generation`` is not ``newest``, the newest
    generation, which has none)."""
    return _without_successor(
        store, db_name, generation, commit_numbers(store, db_name, generation), newest
    )


def _without_successor(
    store: PageStore, db_name: str, generation: str, commits: list[int], newest: str
) -> list[int]:
    """``commits`` (listed) without a superseded generation's successor object."""
    if commits and generation != newest:
        with contextlib.suppress(ObjectNotFoundError):
            if commit_header(store, db_name, generation, commits[-1]).kind == fmt.KIND_SUCCESSOR:
                commits.pop()
    return commits


class _Listing:
    """What the store holds of one database, each prefix listed at most once while a target
    is resolved: the generation ids, then for each generation looked at its snapshots and
    commits, from one LIST of the generation's prefix.

    Resolving the newest commit lists twice (generations, then the newest one), where listing
    snapshots and commits apart, and again for each question asked, took five LISTs.
    """

    def __init__(self, store: PageStore, db_name: str) -> None:
        self.store = store
        self.db_name = db_name
        self._generations: list[str] | None = None
        self._seqs: dict[str, tuple[list[int], list[int]]] = {}
        self._branch_points: dict[str, int | None] = {}

    def generations(self) -> list[str]:
        """Generation ids, oldest first (including incomplete ones)."""
        if self._generations is None:
            self._generations = generations(self.store, self.db_name)
        return self._generations

    def _listed(self, generation: str) -> tuple[list[int], list[int]]:
        if generation not in self._seqs:
            keys = self.store.list_keys(fmt.generation_prefix(self.db_name, generation))
            snapshots = fmt.snapshots_prefix(self.db_name, generation)
            commits = fmt.commits_prefix(self.db_name, generation)
            self._seqs[generation] = (
                fmt.seqs_of([k for k in keys if k.startswith(snapshots)]),
                fmt.seqs_of([k for k in keys if k.startswith(commits)]),
            )
        return self._seqs[generation]

    def snapshots(self, generation: str) -> list[int]:
        """Commit numbers at which ``generation`` has a snapshot, ascending."""
        return self._listed(generation)[0]

    def history(self, generation: str, newest: str) -> list[int]:
        """As :func:`history`, from this listing, without the orphans a branch left behind
        (see :meth:`kept_snapshots`)."""
        commits = list(self._listed(generation)[1])
        commits = _without_successor(self.store, self.db_name, generation, commits, newest)
        branched = self._branched_at(generation, newest)
        return commits if branched is None else [c for c in commits if c <= branched]

    def kept_snapshots(self, generation: str, newest: str) -> list[int]:
        """:meth:`snapshots`, up to the commit the next generation branched from, if it is a
        branch of this one: a writer reopened after a crash and went on from the last commit
        its local file held, and what follows it here is an orphan it never committed."""
        branched = self._branched_at(generation, newest)
        snapshots = self.snapshots(generation)
        return snapshots if branched is None else [s for s in snapshots if s <= branched]

    def _branched_at(self, generation: str, newest: str) -> int | None:
        if generation == newest:
            return None
        if generation not in self._branch_points:
            later = [g for g in self.generations() if g > generation and self.snapshots(g)]
            self._branch_points[generation] = None
            if later and self.snapshots(later[0])[0] == 0:
                base = read_manifest(self.store, self.db_name, later[0], 0).base
                if base and base.get("generation") == generation:
                    self._branch_points[generation] = int(base["seq"])
        return self._branch_points[generation]

    def complete(self) -> Iterator[str]:
        """Generations with at least one snapshot, newest first, each listed when reached."""
        return (g for g in reversed(self.generations()) if self.snapshots(g))


Span = tuple[int, int]  # first and last commit of a run of restorable commits


def _restorable(snapshots: list[int], commits: list[int]) -> list[Span]:
    """The restorable commits of a generation, given what is stored: each snapshot and the
    commits that follow it without a gap, as spans ``(first, last)``, ascending, apart from
    each other. Every commit in a span but its first is stored; its first is a snapshot."""
    stored = set(commits)
    spans: list[Span] = []
    for start in snapshots:
        if spans and start <= spans[-1][1]:
            continue  # within the previous span: its commits run on to the same end
        last = start
        while last + 1 in stored:
            last += 1
        spans.append((start, last))
    return spans


def _describe(spans: list[Span]) -> str:
    return ", ".join(f"{first}..{last}" for first, last in spans)


def resolve_target(
    store: PageStore, db_name: str, *, generation: str | None = None, seq: int | None = None,
    timestamp: dt.datetime | None = None,
) -> Target:
    """Find the snapshot and commit a restore should use; raise with the nearest valid points."""
    bucket = _Listing(store, db_name)
    newest = next(bucket.complete(), None)
    if newest is None:
        raise ReplicaNotFoundError(f"{store.location} holds no replica of {db_name!r}")
    if generation is not None and (
        generation not in bucket.generations() or not bucket.snapshots(generation)
    ):
        gens = reversed(list(bucket.complete()))
        raise RestoreError(
            f"{db_name}: no complete generation {generation}; generations: {', '.join(gens)}"
        )
    if timestamp is not None:
        return _target_at(bucket, timestamp, [generation] if generation else bucket.complete(),
                          newest)
    gen = generation or newest
    commits = bucket.history(gen, newest)
    spans = _restorable(bucket.kept_snapshots(gen, newest), commits)
    last = spans[-1][1]
    if seq is None:
        later = [c for c in commits if c > last]
        if later:
            raise RestoreError(
                f"{db_name}: generation {gen} is missing commit {last + 1} while later"
                f" commits exist; the last consistent point is commit {last}; pass"
                f" commit={last} (CLI: --commit {last}) to restore it"
            )
        return _target(bucket, gen, last)
    if not any(first <= seq <= end for first, end in spans):
        raise RestoreError(
            f"{db_name}: commit {seq} of generation {gen} cannot be restored; restorable"
            f" commits are {_describe(spans)}"
        )
    return _target(bucket, gen, seq)


def _target_at(
    bucket: _Listing, timestamp: dt.datetime, candidates: Iterable[str], newest: str
) -> Target:
    """The last commit at or before ``timestamp`` in the newest of ``candidates`` (complete
    generations, newest first) that has one."""
    store, db_name = bucket.store, bucket.db_name
    wanted_ms = int(timestamp.timestamp() * 1000)
    oldest = newest
    for gen in candidates:
        oldest = gen
        seq = _commit_at(bucket, gen, newest, wanted_ms, timestamp)
        if seq is not None:
            return _target(bucket, gen, seq)
    earliest = read_manifest(store, db_name, oldest, bucket.snapshots(oldest)[0])
    raise RestoreError(
        f"{db_name}: nothing restorable at or before {timestamp.isoformat()}; the earliest"
        f" restorable point is generation {oldest} as of {fmt.iso_time(earliest.created_ms)}"
    )


def _commit_at(
    bucket: _Listing, gen: str, newest: str, wanted_ms: int, timestamp: dt.datetime
) -> int | None:
    """The last restorable commit of ``gen`` made at or before ``wanted_ms``, found by
    bisection over commit headers; None if its first restorable point is later. Raises
    RestoreError if ``timestamp`` falls where commits are missing, or a commit is gone."""
    commits = bucket.history(gen, newest)
    spans = _restorable(bucket.kept_snapshots(gen, newest), commits)
    for index in reversed(range(len(spans))):
        first, last = spans[index]
        if _point_ms(bucket, gen, first, commits) > wanted_ms:
            continue
        low, high = first, last  # last commit with created_ms <= wanted, by bisection
        while low < high:
            middle = (low + high + 1) // 2
            if _commit_ms(bucket, gen, middle, spans) <= wanted_ms:
                low = middle
            else:
                high = middle - 1
        missing = spans[index + 1][0] > last + 1 if index + 1 < len(spans) else (
            bool(commits) and commits[-1] > last
        )
        if low == last and missing:
            raise RestoreError(
                f"{bucket.db_name}: {timestamp.isoformat()} falls after commit {last} of"
                f" generation {gen}, where commit {last + 1} and maybe later ones are missing;"
                f" restorable commits are {_describe(spans)}"
            )
        return low
    return None


def _point_ms(bucket: _Listing, gen: str, seq: int, commits: list[int]) -> int:
    """When the state of commit ``seq`` began, for a span's first point: the commit's time, or
    its snapshot's once the commit is gone (gc deletes the commit an old snapshot stands
    for)."""
    if seq > 0 and seq in commits:
        with contextlib.suppress(ObjectNotFoundError):
            return commit_header(bucket.store, bucket.db_name, gen, seq).created_ms
    return read_manifest(bucket.store, bucket.db_name, gen, seq).created_ms


def _commit_ms(bucket: _Listing, gen: str, seq: int, spans: list[Span]) -> int:
    """The time of a commit a span holds; RestoreError if it is gone since it was listed."""
    try:
        return commit_header(bucket.store, bucket.db_name, gen, seq).created_ms
    except ObjectNotFoundError:
        raise RestoreError(
            f"{bucket.db_name}: commit {seq} of generation {gen} is gone (deleted by hand, or"
            f" by a gc running meanwhile); restorable commits were {_describe(spans)}"
        ) from None


def _target(bucket: _Listing, generation: str, seq: int) -> Target:
    start = max(s for s in bucket.snapshots(generation) if s <= seq)
    manifest = read_manifest(bucket.store, bucket.db_name, generation, start)
    return Target(generation, seq, manifest)

"""Failover: a read replica takes over as the writer, on the same lineage.

:func:`promote` takes the database's writer lease (once the writer's has expired, or at once
with ``force``), applies every commit the bucket holds, puts a commit of the new writer that
changes nothing at the next position (the fence), and leaves ``path`` as the writer's own
local file: a state file at the fence, a writer id of its own, and the lease held for that
writer id until it expires. ``bottomless.connect(path, settings)`` then continues
the lineage at the next commit.

The old writer is fenced by the lease: its next renewal finds the lease taken (``If-Match``
fails), and its next commit is refused with a ReplicaConflictError. A commit it had already
checked the lease for and was uploading when the lease moved is caught by the create-only
write of the commit's position: whichever of the two writers comes second is refused, so
history never forks silently. The fence keeps the old writer out after the lease expires
again, before the new writer's app has committed: its open and its commits meet it.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any, Protocol

from bottomless import format as fmt
from bottomless.backends.base import PageStore
from bottomless.engine.lease import WriterLease
from bottomless.errors import ConfigError, ObjectExistsError, ReplicaConflictError
from bottomless.local.files import (
    LocalImage,
    LocalState,
    remove_local_files,
    sync_state,
    write_state,
)
from bottomless.local.lockfile import local_writer_id, open_lock
from bottomless.log import for_database
from bottomless.ops.snapshots import iter_commits, read_manifest, snapshot_seqs
from bottomless.ops.targets import commit_numbers, complete_generations
from bottomless.replica.bookmark import format_bookmark
from bottomless.replica.position import Point, follower_lock_path, position_path
from bottomless.settings import Settings


class Replica(Protocol):
    """What promotion needs of a :class:`~bottomless.replica.follower.Replica` (which calls
    :func:`promote` from its own ``promote`` method, so this module cannot import it)."""

    settings: Settings
    db_name: str
    path: str

    @property
    def store(self) -> PageStore: ...

    def start_if_needed(self) -> None: ...

    def wait_for(self, bookmark: str, timeout: float | None = None) -> None: ...

    def stop_at(self) -> tuple[Point, int]: ...

#: how many times promotion catches up again when a commit lands after the lease moved
CATCH_UP_ROUNDS = 5


@dataclass(frozen=True)
class Promotion:
    """What :func:`promote` did.

    Attributes:
        generation: The generation the new writer continues.
        seq: The last commit it holds (the fence); its first commit will be ``seq + 1``.
        writer: The new writer id (hex).
        lease_wait_seconds: How long it waited for the old writer's lease to expire.
        seconds: How long promotion took in all.
    """

    generation: str
    seq: int
    writer: str
    lease_wait_seconds: float
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return dict(self.__dict__)


def promote(
    replica: Replica, *, force: bool = False, timeout: float | None = None
) -> Promotion:
    """Make ``replica``'s file the writer's (see the module docstring); the follower stops.

    ``timeout``: give up (ReplicaTimeoutError) if the lease is not free and caught up by then;
    by default the lease TTL plus a minute. Raises ConfigError if the settings have no lease
    (``lease_ttl`` 0: nothing would fence the old writer), ReplicaConflictError if another
    writer keeps the lease (without ``force``) or a commit of the old writer cannot be placed.
    """
    settings = replica.settings
    if not settings.lease_ttl:
        raise ConfigError(
            "promotion needs the writer lease to fence the old writer: set lease_ttl above 0"
            " (env LIBSQL_BOTTOMLESS_LEASE_TTL, URI parameter lease_ttl)",
            field="lease_ttl", value=settings.lease_ttl,
        )
    started = time.monotonic()
    deadline = started + (timeout if timeout is not None else settings.lease_ttl + 60)
    replica.start_if_needed()
    store = replica.store
    with open_lock(replica.path) as lock_fd:
        writer = local_writer_id(lock_fd, fmt.new_writer_id())
    lease = WriterLease(store, replica.db_name, writer.hex(), settings.lease_ttl)
    _take_lease(lease, force=force, deadline=deadline)
    waited = time.monotonic() - started
    try:
        _catch_up(replica, store, deadline, settings.lease_ttl / 3 + 1 if lease.forced else 0)
        point, page_size = replica.stop_at()
        newest = _newest(store, replica.db_name)
        if (point.generation, point.seq) != newest:
            raise ReplicaConflictError(
                f"{replica.path}: the replica stopped at commit {point.seq} of generation"
                f" {point.generation}, but the bucket has commit {newest[1]} of generation"
                f" {newest[0]}: another writer is still running; promotion abandoned",
                db_name=replica.db_name,
            )
        if point.seq == 0 and not read_manifest(store, replica.db_name, point.generation,
                                                0).db_size:
            # the writer had no pages yet, and the replica stood in for that with one: the
            # writer's file has none either, or its first open takes it for a changed file
            remove_local_files(replica.path, include_db=False)
            os.truncate(replica.path, 0)
        seq, digest = _fence(replica, store, point, writer, settings.compression)
        _to_the_writer(replica.path, LocalState(
            replica.db_name, point.generation, seq, digest, page_size, writer.hex(),
            store.location,
        ))
    except BaseException:
        lease.release()  # a later promotion (or the old writer) need not wait for it
        raise
    lease.hand_over()
    promotion = Promotion(point.generation, seq, writer.hex(), round(waited, 3),
                          round(time.monotonic() - started, 3))
    for_database(__name__, replica.db_name).warning(
        "promoted %s to writer at commit %d of generation %s (waited %.1fs for the lease)",
        replica.path, seq, point.generation, waited)
    return promotion


def _to_the_writer(path: str, state: LocalState) -> None:
    """Make the replica file at ``path`` the writer's, at ``state``."""
    write_state(path, state)
    sync_state(path)
    os.unlink(position_path(path))  # no longer a replica: the writer's file
    with contextlib.suppress(FileNotFoundError):
        os.unlink(follower_lock_path(path))


def _fence(replica: Replica, store: PageStore, point: Point, writer: bytes,
           compression: str) -> tuple[int, str]:
    """Put the new writer's first commit, which changes nothing (page 1 as it is), at the
    position after ``point``; return the position and digest the new writer continues from.

    The old writer may come back after the lease expired again, before the new writer's
    app commits (or be paused in its upload as the lease moved): with this commit in place,
    its next commit, and its open, meet another writer's object and are refused. A database
    with no pages yet has no page 1 to write: the lease alone fences it."""
    image = LocalImage(replica.path)
    try:
        if not image.db_size:
            return point.seq, point.digest
        page = bytearray(image.page(1))  # the replica's says WAL mode, whatever the writer's
        page[18:20] = _file_format(store, replica.db_name, point)
        batch = fmt.PageBatch(
            fmt.KIND_COMMIT, point.generation, point.seq + 1, image.page_size, image.db_size,
            {1: bytes(page)}, prev=bytes.fromhex(point.digest), writer=writer,
        )
    finally:
        image.close()
    key = fmt.commit_key(replica.db_name, point.generation, point.seq + 1)
    try:
        store.put_once(key, fmt.encode_batch(batch, compression))
    except ObjectExistsError:
        raise ReplicaConflictError(
            f"{replica.db_name!r}: the old writer uploaded commit {point.seq + 1} after the"
            " replica caught up (it was refused to its app, its lease being gone); promotion"
            " abandoned: promote again to take that commit in", db_name=replica.db_name,
            key=key,
        ) from None
    return point.seq + 1, batch.digest.hex()


def _take_lease(lease: WriterLease, *, force: bool, deadline: float) -> None:
    """Take the lease as soon as the holder's expires (at once with ``force``)."""
    while True:
        try:
            lease.acquire(force=force)
            return
        except ReplicaConflictError as e:
            if e.expires_at is None:
                raise
            wait = e.expires_at.timestamp() - time.time() + 0.05
            if time.monotonic() + max(wait, 0) > deadline:
                raise ReplicaConflictError(
                    f"{lease.db_name!r}: the writer's lease ({e.holder}) runs until"
                    f" {e.expires_at.isoformat()}, past the promotion timeout; pass force=True"
                    " (CLI: --force) to take it over now", db_name=lease.db_name, key=e.key,
                    holder=e.holder, expires_at=e.expires_at,
                ) from e
            time.sleep(max(wait, 0.05))


def _newest(store: PageStore, db_name: str) -> tuple[str, int]:
    """The newest generation and its last commit, by listing: its last commit object, or its
    newest snapshot if that is later (gc deletes the commits a snapshot it built stands for,
    the last one included)."""
    generation = complete_generations(store, db_name)[-1]
    return generation, max(
        max(commit_numbers(store, db_name, generation), default=0),
        max(snapshot_seqs(store, db_name, generation), default=0),
    )


def _catch_up(replica: Replica, store: PageStore, deadline: float, settle: float) -> None:
    """Wait until the follower has applied the bucket's newest commit, as of after the lease
    moved (the old writer may have finished one more upload meanwhile: look again).

    ``settle``: seconds to follow the old writer before the newest commit may count as the
    last, for a writer whose running lease was taken by force: it goes on committing until
    its next renewal (a third of the TTL) tells it; one whose lease expired has stopped
    already. One still committing after that is caught by the fence (promotion then fails)."""
    settle_by = min(deadline, time.monotonic() + settle)
    target = _newest(store, replica.db_name)
    rounds = 0  # counted once ``settle_by`` has passed
    while rounds < CATCH_UP_ROUNDS:
        remaining = max(deadline - time.monotonic(), 0.1)
        replica.wait_for(format_bookmark(*target), remaining)
        again = _newest(store, replica.db_name)
        if again == target:
            if time.monotonic() >= settle_by:
                return
            time.sleep(0.1)  # a writer that may still commit: follow it until it is told
            continue
        target = again
        rounds += time.monotonic() >= settle_by
    raise ReplicaConflictError(
        f"{replica.db_name!r}: commits keep arriving after the lease moved: another writer is"
        " still running; promotion abandoned", db_name=replica.db_name,
    )


def _file_format(store: PageStore, db_name: str, point: Point) -> bytes:
    """Bytes 18-19 of page 1 (rollback journal or WAL) in the bucket's state at ``point``:
    from the last commit since the snapshot before it that holds page 1, else from that
    snapshot (promotion reads them once)."""
    base = max(s for s in snapshot_seqs(store, db_name, point.generation) if s <= point.seq)
    manifest = read_manifest(store, db_name, point.generation, base)
    found = None
    for raw in iter_commits(store, db_name, point.generation, base + 1, point.seq,
                            manifest.chain_digest, parallelism=4):
        if raw.numbers and raw.numbers[0] == 1:
            found = raw.payload[18:20]
    if found is not None:
        return found
    key = str(manifest.parts[0]["key"])  # the first part holds page 1
    return fmt.decode_raw(store.get(key), key).payload[18:20]

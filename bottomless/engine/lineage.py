"""The lineage check at open: how a local file relates to the newest generation in the bucket.

:meth:`LineageCheck.decide` returns a :class:`Decision`: a :class:`Verdict` and why, plus the
state to continue from when the local file turned out to be further on than its state file
said. It reads the bucket and the local file and changes neither.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from bottomless import format as fmt
from bottomless.backends.base import PageStore
from bottomless.errors import CorruptObjectError, ObjectNotFoundError, RestoreError
from bottomless.local.files import LocalImage, LocalState
from bottomless.local.session import Interrupted
from bottomless.ops.snapshots import check_part, iter_commits, read_manifest, snapshot_seqs
from bottomless.ops.targets import commit_numbers


class Verdict(enum.Enum):
    """What to do with a local file whose database the bucket already holds."""

    #: the local file is at the newest generation's last commit: replicate on from there
    CONTINUE = "continue"
    #: the bucket holds one commit the local file lacks (a crash between upload and local
    #: commit): start a generation from the local file's commit, leaving that orphan behind
    BRANCH = "branch"
    #: our own lineage, but the local file cannot be placed on it exactly: start a new
    #: generation from the local file
    RESTART = "restart"
    #: another lineage: the ``initial_replication`` policy decides
    CONFLICT = "conflict"


@dataclass(frozen=True)
class Decision:
    """A verdict, why (empty for a plain continue), and the state to go on from."""

    verdict: Verdict
    reason: str = ""
    state: LocalState | None = None


INTERRUPTED_ASYNC = (
    "the last async session's spool was lost (a machine restart: it is not fsynced) or"
    " damaged, so the local file may hold commits the bucket lacks"
)


def same_page(pgno: int, local: bytes, stored: bytes) -> bool:
    """Whether a local page holds the stored one. Bytes 18 and 19 of page 1 (the file format
    versions, which say rollback journal or WAL) are not compared: a read replica's file is in
    WAL mode whatever the writer's was, and they hold no data."""
    if pgno != 1 or local[18:20] == stored[18:20]:
        return local == stored
    return local[:18] == stored[:18] and local[20:] == stored[20:]


def matches(image: LocalImage, batch: fmt.PageBatch) -> bool:
    """Whether the local content equals the state right after commit ``batch``."""
    return batch.db_size == image.db_size and all(
        same_page(n, image.page(n), page) for n, page in batch.pages.items()
    )


def is_own_orphan(
    store: PageStore, db_name: str, header: fmt.BatchHeader, state: LocalState
) -> bool:
    """Whether the object after ``state`` (whose ``header`` is given) is an orphan of this
    writer: a commit of this writer, chained to ``state``, that nothing was stored after
    (anything else is another writer's work, maybe a copy of this database with its side
    files) but this writer's own successor object, left by a fork over that very orphan whose
    commit did not reach its commit point."""
    if header.writer != state.writer_bytes or header.prev != state.digest_bytes:
        return False
    after = fmt.commit_key(db_name, state.generation, state.seq + 2)
    try:
        following = fmt.decode_header(store.get_range(after, 0, fmt.HEADER_SIZE), after)
    except ObjectNotFoundError:
        return True
    return following.kind == fmt.KIND_SUCCESSOR and following.writer == state.writer_bytes


class LineageCheck:
    """Places a local file on the bucket's newest generation (see :meth:`decide`)."""

    def __init__(self, store: PageStore, db_name: str, writer: bytes, parallelism: int) -> None:
        self.store = store
        self.db_name = db_name
        self.writer = writer
        self.parallelism = parallelism

    def decide(
        self, state: LocalState | None, manifest: fmt.Manifest, image: LocalImage,
        interrupted: Interrupted | None = None,
    ) -> Decision:
        """Decide how the local file relates to ``manifest``'s generation.

        ``interrupted``: a machine restart interrupted the last session, so the state file
        cannot be trusted. After a sync session the local file is checked page by page
        against the bucket's two newest commits; after an async session (or with its spool
        found damaged) it may be ahead of the bucket, so a continue or a branch becomes a
        restart of our lineage. Either way every commit after the state must be ours.
        """
        decision = self._decide(state, manifest, image, interrupted)
        if interrupted == "async" and decision.verdict in (Verdict.CONTINUE, Verdict.BRANCH):
            # the local file may be ahead of what the bucket and the state file say
            return Decision(Verdict.RESTART, INTERRUPTED_ASYNC)
        if decision.state is None and decision.verdict is not Verdict.RESTART:
            decision = replace(decision, state=state)
        return decision

    def _decide(
        self, state: LocalState | None, manifest: fmt.Manifest, image: LocalImage,
        interrupted: Interrupted | None,
    ) -> Decision:
        if state is None:
            if manifest.writer == self.writer.hex():
                # our own upload, interrupted before the state file was written
                return Decision(Verdict.RESTART,
                                "the previous open was interrupted before it finished")
            return Decision(Verdict.CONFLICT,
                            "the local file has no bottomless state (never replicated here)")
        if state.generation != manifest.generation:
            if manifest.writer == state.writer and manifest.generation > state.generation:
                # our own generation start whose reply was lost: the local file is the truth
                return Decision(Verdict.RESTART, f"generation {manifest.generation} was"
                                " started but not recorded")
            return Decision(Verdict.CONFLICT,
                            f"the local file belongs to generation {state.generation}")
        ours = bytes.fromhex(state.writer)
        if interrupted == "sync":
            # the state file may be behind the bucket, or (synchronous below FULL) ahead of
            # the local file: only a check of every page tells where the local file is
            followed, why = self._follow(state, ours)
            if followed is None:
                return Decision(Verdict.CONFLICT, why)
            return self._after_sync_restart(state, image, followed)
        next_key = fmt.commit_key(self.db_name, state.generation, state.seq + 1)
        if self.store.exists(next_key):
            return self._one_ahead(state, image, next_key, ours, interrupted)
        if state.seq == 0:
            if manifest.digest != state.digest_bytes:
                return Decision(Verdict.CONFLICT,
                                "the generation's base snapshot is not the one it recorded")
            if (manifest.db_size, manifest.page_size or image.page_size) != (
                image.db_size, image.page_size
            ):
                return Decision(Verdict.RESTART,
                                "the local file changed without bottomless seeing it")
            return Decision(Verdict.CONTINUE)
        return self._at_last_commit(state, image, ours, interrupted)

    def _one_ahead(
        self, state: LocalState, image: LocalImage, next_key: str, ours: bytes,
        interrupted: Interrupted | None,
    ) -> Decision:
        """The bucket holds the commit after the state's: whose, and is it in the file?"""
        batch = fmt.decode_batch(self.store.get(next_key), next_key)
        if batch.writer != ours or batch.prev != state.digest_bytes:
            return Decision(Verdict.CONFLICT, f"another writer added commit {state.seq + 1}"
                            f" after the local file's commit {state.seq}")
        if interrupted == "async":
            followed, why = self._follow(state, ours)
            # the local file may be ahead of all: restart, unless someone else went on
            if followed is None:
                return Decision(Verdict.CONFLICT, why)
            return Decision(Verdict.RESTART, INTERRUPTED_ASYNC)
        if self.store.exists(fmt.commit_key(self.db_name, state.generation, state.seq + 2)):
            return Decision(Verdict.CONFLICT,
                            f"the bucket runs more than one commit past {state.seq}")
        if matches(image, batch):
            # committed locally, but the process died before recording it
            return Decision(Verdict.CONTINUE, state=replace(
                state, seq=batch.seq, digest=batch.digest.hex(), page_size=batch.page_size
            ))
        return self._orphan_verdict(state, image)

    def _at_last_commit(
        self, state: LocalState, image: LocalImage, ours: bytes,
        interrupted: Interrupted | None,
    ) -> Decision:
        """Nothing follows the state's commit: is that commit in the bucket and the file?"""
        key = fmt.commit_key(self.db_name, state.generation, state.seq)
        try:
            last = fmt.decode_batch(self.store.get(key), key)
        except ObjectNotFoundError:
            snapshot = fmt.snapshot_key(self.db_name, state.generation, state.seq)
            if self.store.exists(snapshot):  # the commit was compacted away by gc
                kept = fmt.decode_manifest(self.store.get(snapshot), snapshot)
                if kept.commit_digest == state.digest:
                    return Decision(Verdict.CONTINUE)
            return Decision(Verdict.CONFLICT,
                            f"the bucket lacks commit {state.seq} that the local file recorded")
        if last.digest != state.digest_bytes:
            return Decision(Verdict.CONFLICT, f"{key} is not the object the local file recorded")
        if not matches(image, last):
            if last.writer == ours or interrupted == "async":
                return Decision(Verdict.RESTART, f"the local file does not hold commit"
                                f" {state.seq} it recorded (a crash between recording and"
                                " committing)")
            return Decision(Verdict.CONFLICT,
                            f"the local file does not match commit {state.seq}")
        return Decision(Verdict.CONTINUE)

    def _follow(self, state: LocalState, ours: bytes) -> tuple[_Followed | None, str]:
        """Read the commits from the newest snapshot at or before ``state`` (which a machine
        restart may have left behind) to the bucket's newest; ``(None, why)`` unless the
        chain holds, ``state``'s commit is the recorded one and every later commit is ours."""
        base = max((s for s in snapshot_seqs(self.store, self.db_name, state.generation)
                    if s <= state.seq), default=None)
        if base is None:
            return None, f"the commits after {state.seq} were compacted away (gc)"
        try:
            snapshot = read_manifest(self.store, self.db_name, state.generation, base)
        except (CorruptObjectError, ObjectNotFoundError) as e:
            return None, f"snapshot {base} is unusable: {e}"
        if base == state.seq and snapshot.chain_digest != state.digest_bytes:
            return None, f"snapshot {base} is not the state the local file recorded"
        newest = max(commit_numbers(self.store, self.db_name, state.generation), default=base)
        if newest < state.seq:
            return None, f"the bucket lacks commit {state.seq} that the local file recorded"
        followed = _Followed(snapshot)
        try:
            for raw in iter_commits(
                self.store, self.db_name, state.generation, base + 1, newest,
                snapshot.chain_digest, self.parallelism,
            ):
                seq = raw.head.seq
                if seq == state.seq and raw.digest != state.digest_bytes:
                    return None, f"commit {seq} is not the object the local file recorded"
                if seq > state.seq and raw.head.writer != ours:
                    return None, (
                        f"another writer added commit {seq} after the local file's commit"
                        f" {state.seq}"
                    )
                followed.add(raw)
        except (CorruptObjectError, RestoreError) as e:  # a gap, or a broken chain
            return None, f"the commits after {state.seq} cannot be followed: {e}"
        return followed, ""

    def _after_sync_restart(
        self, state: LocalState, image: LocalImage, followed: _Followed
    ) -> Decision:
        """Where the local file is after a machine restart interrupted a sync session.

        With ``synchronous=FULL`` it holds every commit it acknowledged: it is at the bucket's
        newest commit, or at the one before (the newest was uploaded but not committed
        locally). Which one is checked page by page, every page of the database: the pages
        commits touched since the snapshot by digest, the others against the snapshot
        (downloaded: a rare path, and cheaper than the full upload of a new generation).
        """
        candidates = followed.candidates()
        newest_seq = candidates[0].seq
        for candidate in candidates:
            try:
                held = image.db_size == candidate.db_size and all(
                    n > candidate.db_size or fmt.page_digest(image.page(n)) == digest
                    for n, digest in candidate.pages.items()
                ) and self._matches_snapshot(
                    image, followed.snapshot, candidate.pages, candidate.db_size
                )
            except (CorruptObjectError, ObjectNotFoundError) as e:
                return Decision(Verdict.CONFLICT, "the snapshot to check the local file"
                                f" against is unusable: {e}")
            if held:
                verdict = Verdict.CONTINUE if candidate.seq == newest_seq else Verdict.BRANCH
                return Decision(verdict, (
                    f"commit {newest_seq} reached the bucket but not the local file (a"
                    " machine restart between upload and local commit)"
                ), replace(state, seq=candidate.seq, digest=candidate.digest,
                           page_size=candidate.page_size))
        return Decision(Verdict.CONFLICT, (
            f"after a machine restart the local file is at neither of the bucket's two newest"
            f" commits ({' and '.join(str(c.seq) for c in reversed(candidates))}): it lost"
            " commits it had acknowledged (synchronous below FULL?) or is an older copy"
        ))

    def _matches_snapshot(
        self, image: LocalImage, snapshot: fmt.Manifest, touched: dict[int, bytes], size: int
    ) -> bool:
        """Whether every page up to ``size`` that is not in ``touched`` is the snapshot's."""
        # never written by SQLite, so held by no commit (a file past 1 GiB)
        lock_page = fmt.lock_byte_page(image.page_size) if image.page_size else 0
        if any(n not in touched and n != lock_page
               for n in range(snapshot.db_size + 1, size + 1)):
            return False  # a page neither the snapshot nor a later commit holds
        for part in snapshot.parts:
            first, count = int(part["first"]), int(part["pages"])
            wanted = [n for n in range(first, min(first + count, size + 1)) if n not in touched]
            if not wanted:
                continue
            key = str(part["key"])
            raw = fmt.decode_raw(self.store.get(key), key)
            check_part(raw, key, part, snapshot.page_size)
            pages = raw.to_batch().pages
            if any(not same_page(n, image.page(n), pages[n]) for n in wanted):
                return False
        return True

    def _orphan_verdict(self, state: LocalState, image: LocalImage) -> Decision:
        why = (
            f"commit {state.seq + 1} reached the bucket but not the local file (a crash between"
            " upload and local commit)"
        )
        if state.seq == 0:
            return Decision(Verdict.BRANCH, why)
        key = fmt.commit_key(self.db_name, state.generation, state.seq)
        try:
            last = fmt.decode_batch(self.store.get(key), key)
        except ObjectNotFoundError:
            return Decision(Verdict.RESTART, why)
        return Decision(Verdict.BRANCH if matches(image, last) else Verdict.RESTART, why)


@dataclass
class _Candidate:
    """A commit the local file may be at: its position and the digests of the pages that
    changed since the snapshot (the others are the snapshot's)."""

    seq: int
    digest: str
    db_size: int
    page_size: int
    pages: dict[int, bytes]


class _Followed:
    """The commits since a snapshot: the two newest, and every page they touched, as of each
    of those two (digests)."""

    def __init__(self, snapshot: fmt.Manifest) -> None:
        self.snapshot = snapshot
        self.last: list[fmt.RawBatch] = []  # the newest, last
        self.at_newest: dict[int, bytes] = {}
        self._undo: dict[int, bytes | None] = {}  # what the newest commit replaced

    def add(self, raw: fmt.RawBatch) -> None:
        """The next commit, in order."""
        self.last = [*self.last[-1:], raw]
        self._undo = {}
        for pgno, page in raw.to_batch().pages.items():
            self._undo[pgno] = self.at_newest.get(pgno)
            self.at_newest[pgno] = fmt.page_digest(page)

    def _at_before(self) -> dict[int, bytes]:
        pages = dict(self.at_newest)
        for pgno, old in self._undo.items():
            if old is None:
                del pages[pgno]
            else:
                pages[pgno] = old
        return pages

    def candidates(self) -> list[_Candidate]:
        """The newest commit, then the one before (which may be the snapshot itself)."""
        def at(raw: fmt.RawBatch, pages: dict[int, bytes]) -> _Candidate:
            return _Candidate(raw.head.seq, raw.digest.hex(), raw.head.db_size,
                              raw.head.page_size, pages)

        snapshot = self.snapshot
        found = [_Candidate(snapshot.seq, snapshot.chain_digest.hex(), snapshot.db_size,
                            snapshot.page_size, {})]
        if len(self.last) == 2:
            found.insert(0, at(self.last[0], self._at_before()))
        if self.last:
            found.insert(0, at(self.last[-1], self.at_newest))
        return found[:2]

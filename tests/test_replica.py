"""Read replicas: a follower applies the writer's commits while readers in other processes read.

The writer moves money between accounts (each account on a page of its own, so a commit
touches several pages) and counts its transactions. Readers (stdlib ``sqlite3``, SQLite 3.40,
in other processes; the follower writes with the file format of apsw's SQLite) check in every
read that the money adds up and that the counter never goes back: a torn or reordered apply
would break one or the other.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import pathlib
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import apsw
import pytest
from helpers import integrity, rows, wait_for
from helpers import replicator as helpers_replicator

import bottomless
from bottomless import format as fmt
from bottomless.backends.registry import open_store
from bottomless.ops.snapshots import compact
from bottomless.ops.targets import generations
from bottomless.replica import Replica, bookmark_from_status
from bottomless.replica.position import read_position

MakeSettings = Callable[..., bottomless.Settings]
ACCOUNTS = 12
TOTAL = ACCOUNTS * 1000
PAD = 1800  # bytes per account row: two accounts per 4 KiB page at most

#: a reader process: reads the replica read-only until told to stop, checking each read
READER = r"""
import sqlite3, sys, time
path, total, stop_file, hold = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "hold"
import os
last, reads, opens, conn, page_sizes = -1, 0, 0, None, set()
while not os.path.exists(stop_file):
    if conn is None or (reads % 40 == 0 and not hold):
        if conn is not None:
            conn.close()
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        opens += 1
    try:
        money, n, size = conn.execute(
            "SELECT (SELECT sum(balance) FROM accounts), (SELECT n FROM counter),"
            " (SELECT page_size FROM pragma_page_size)").fetchone()
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):
            continue
        raise
    reads += 1
    if reads == 1:
        print("ready", flush=True)
    page_sizes.add(size)
    if money != total:
        sys.exit(f"torn commit: money {money} != {total} at counter {n}")
    if n < last:
        sys.exit(f"went back in time: counter {n} after {last}")
    last = n
print(reads, opens, last, sorted(page_sizes), flush=True)
"""


class Readers:
    """Reader processes on ``path``; :meth:`finish` stops them and checks what they saw."""

    def __init__(self, path: str, stop_file: str, count: int = 3, *, hold: bool = False) -> None:
        """``hold``: each reader keeps one connection (else it reopens every 40 reads)."""
        self.stop_file = stop_file
        how = "hold" if hold else "reopen"
        self.processes = [
            subprocess.Popen([sys.executable, "-c", READER, path, str(TOTAL), stop_file, how],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(count)
        ]
        for process in self.processes:  # each has read once: it sees the state before ours
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line == "ready\n", line + (process.stderr.read() if process.stderr else "")

    def finish(self) -> list[tuple[int, int, int, list[int]]]:
        """Stop the readers; return (reads, opens, last counter, page sizes) of each."""
        open(self.stop_file, "w").close()
        results = []
        for process in self.processes:
            out, err = process.communicate(timeout=60)
            assert process.returncode == 0, err
            reads, opens, last, sizes = out.split(" ", 3)
            results.append((int(reads), int(opens), int(last), eval(sizes)))
        return results


def setup_bank(db: apsw.Connection, mode: str = "wal") -> None:
    """Accounts on pages of their own, and a transaction counter."""
    db.set_busy_timeout(5000)
    db.execute(f"PRAGMA journal_mode={mode}").fetchall()
    with db:
        db.execute("CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER, pad BLOB)")
        db.execute("CREATE TABLE counter(n INTEGER)")
        db.execute("CREATE TABLE junk(x BLOB)")
        db.execute("INSERT INTO counter VALUES(0)")
        for i in range(ACCOUNTS):
            db.execute("INSERT INTO accounts VALUES(?, 1000, zeroblob(?))", (i, PAD))


def transfer(db: apsw.Connection, rng: random.Random) -> None:
    """One transaction: money moves, the counter goes up, sometimes a big row comes or goes."""
    a, b = rng.sample(range(ACCOUNTS), 2)
    amount = rng.randint(1, 50)
    with db:
        db.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (amount, a))
        db.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, b))
        db.execute("UPDATE counter SET n = n + 1")
        if rng.random() < 0.1:
            db.execute("INSERT INTO junk VALUES(randomblob(?))", (rng.randint(1, 30000),))
        elif rng.random() < 0.05:
            db.execute("DELETE FROM junk WHERE rowid IN (SELECT rowid FROM junk LIMIT 2)")


def content(path: str) -> list[Any]:
    """What the bank holds, read with stdlib sqlite3 (read-only)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return [conn.execute("SELECT id, balance FROM accounts ORDER BY id").fetchall(),
                conn.execute("SELECT n FROM counter").fetchall()]
    finally:
        conn.close()


def bookmark(db: apsw.Connection) -> str:
    """The writer's bookmark of its last replicated commit."""
    mark = bottomless.position(db)
    assert mark == bookmark_from_status(bottomless.status(db))
    return mark


@pytest.fixture
def paths(tmp_path: Any) -> Iterator[tuple[str, str]]:
    """The writer's database and the replica's path."""
    yield str(tmp_path / "primary.db"), str(tmp_path / "replica.db")


class Bank(NamedTuple):
    """A bank database written through bottomless on the file backend, and where its
    replica goes."""

    primary: str
    path: str
    settings: bottomless.Settings
    writer: apsw.Connection


@contextlib.contextmanager
def open_bank(make_settings: MakeSettings, paths: tuple[str, str],
              backend: str) -> Iterator[Bank]:
    """The bank set up (WAL) by its writer, replicated as ``bank.db`` on ``backend``; the
    writer is closed afterwards."""
    primary, path = paths
    settings = make_settings(backend, db_name="bank.db")
    writer = bottomless.connect(primary, settings)
    setup_bank(writer)
    try:
        yield Bank(primary, path, settings, writer)
    finally:
        writer.close()


@pytest.fixture
def bank(make_settings: MakeSettings, paths: tuple[str, str]) -> Iterator[Bank]:
    """The bank on the file backend."""
    with open_bank(make_settings, paths, "file") as opened:
        yield opened


@pytest.fixture
def memory_bank(make_settings: MakeSettings, paths: tuple[str, str]) -> Iterator[Bank]:
    """The bank on the memory backend."""
    with open_bank(make_settings, paths, "memory") as opened:
        yield opened


# ---------------------------------------------------------------- following


def test_readers_in_other_processes_see_whole_commits_in_order(
    backend: str, make_settings: MakeSettings, paths: tuple[str, str], tmp_path: Any
) -> None:
    primary, path = paths
    settings = make_settings(backend, db_name="bank.db")
    writer = bottomless.connect(primary, settings)
    setup_bank(writer)
    rng = random.Random(7)
    commits = 25 if backend == "s3" else 120  # each is a synchronous PUT
    with Replica(path, settings, poll_interval=0.05) as replica:
        readers = Readers(path, str(tmp_path / "stop"))
        for i in range(commits):
            transfer(writer, rng)
            if i % 10 == 0:
                time.sleep(0.05)  # some commits arrive alone, some in bursts
        replica.wait_for(bookmark(writer), timeout=30)
        seen = readers.finish()
        assert content(path) == content(primary)
        status = replica.status()
    writer.close()
    assert all(reads > 10 for reads, *_ in seen), seen
    assert max(last for _, _, last, _ in seen) > 0
    assert status["seq"] == status["newest_known_seq"] >= commits
    assert status["commits_applied"] >= commits - status["last_restore"]["seq"]
    assert status["last_error"] is None and status["stopped_by"] is None
    assert status["requests"]["get"] >= 1 and status["lag_seconds"] is not None


def test_an_idle_follower_costs_one_get_per_poll_and_no_list(bank: Bank) -> None:
    _primary, path, settings, writer = bank
    with Replica(path, settings, poll_interval=0.1, generation_check_interval=3600) as replica:
        replica.wait_for(bookmark(writer), timeout=10)
        time.sleep(0.3)  # past the first idle round, which looks for generations once
        before = replica.status()["requests"]
        started = time.monotonic()
        time.sleep(1.05)
        after = replica.status()["requests"]
        elapsed = time.monotonic() - started
    writer.close()
    idle = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    # a poll every 0.1 s (plus its own time: fewer on a loaded machine), each one GET, a 404
    assert 2 <= idle["get_missing"] <= elapsed / 0.1 + 2, (idle, elapsed)
    assert idle.get("list", 0) == 0 and idle.get("get", 0) == 0, idle


def test_catching_up_fetches_in_parallel_and_applies_in_batches(bank: Bank) -> None:
    primary, path, settings, writer = bank
    with Replica(path, settings, poll_interval=0.05):
        pass  # the replica exists, at the setup's last commit
    rng = random.Random(3)
    for _ in range(200):
        transfer(writer, rng)
    with Replica(path, settings, poll_interval=0.05) as replica:
        replica.wait_for(bookmark(writer), timeout=30)
        status = replica.status()
    assert content(path) == content(primary)
    assert status["commits_applied"] == 200 and status["requests"]["get"] >= 200
    # the window of parallel GETs grew (to 32): the round past the newest commit misses less
    # than a window, then each idle poll is one GET
    assert status["requests"].get("get_missing", 0) <= 32 + 5, status["requests"]
    writer.close()


def test_the_replica_continues_where_the_last_follower_stopped(bank: Bank) -> None:
    primary, path, settings, writer = bank
    with Replica(path, settings, poll_interval=0.05) as replica:
        replica.wait_for(bookmark(writer), timeout=10)
    transfer(writer, random.Random(1))
    with Replica(path, settings, poll_interval=0.05) as replica:
        replica.wait_for(bookmark(writer), timeout=10)
        assert replica.status()["restores"] == 0  # no new restore: it resumed
    assert content(path) == content(primary)
    writer.close()


# ---------------------------------------------------------------- errors


def test_a_corrupt_commit_stops_the_follower_naming_the_key(bank: Bank, tmp_path: Any) -> None:
    _primary, path, settings, writer = bank
    with Replica(path, settings, poll_interval=0.05) as replica:
        replica.wait_for(bookmark(writer), timeout=10)
    good = content(path)
    rng = random.Random(2)
    transfer(writer, rng)
    status = bottomless.status(writer)
    key = fmt.commit_key("bank.db", status["generation"], status["last_replicated_commit"])
    stored = os.path.join(settings.bucket, key)
    with open(stored, "rb") as handle:
        data = bytearray(handle.read())
    data[200] ^= 0xFF  # one flipped bit in the pages: only the checksum can tell
    os.chmod(stored, 0o644)
    with open(stored, "wb") as handle:
        handle.write(data)
    transfer(writer, rng)
    replica = Replica(path, settings, poll_interval=0.05).start()
    try:
        with pytest.raises(bottomless.BottomlessError, match="stopped") as info:
            replica.wait_for(bookmark(writer), timeout=10)
        assert isinstance(info.value.__cause__, bottomless.CorruptObjectError)
        assert info.value.__cause__.key == key
        status = replica.status()
        assert key in status["stopped_by"] and "checksum" in status["stopped_by"]
        assert not status["running"]
    finally:
        replica.stop()
    assert content(path) == good  # no page of the bad commit, nor of the one after it
    writer.close()


def test_a_commit_that_breaks_the_chain_stops_the_follower(memory_bank: Bank) -> None:
    _primary, path, settings, writer = memory_bank
    with Replica(path, settings, poll_interval=0.05) as replica:
        replica.wait_for(bookmark(writer), timeout=10)
        good = content(path)
        status = bottomless.status(writer)
        seq = status["last_replicated_commit"] + 1
        batch = fmt.PageBatch(fmt.KIND_COMMIT, status["generation"], seq, 4096, 2,
                              {2: bytes(4096)}, prev=os.urandom(32))  # sealed, but elsewhere's
        key = fmt.commit_key("bank.db", status["generation"], seq)
        store = open_store(settings)
        store.put_if_absent(key, fmt.encode_batch(batch))
        store.close()
        with pytest.raises(bottomless.BottomlessError, match="stopped"):
            replica.wait_for(f"1:{status['generation']}:{seq}", timeout=10)
        assert "breaks the commit chain" in replica.status()["stopped_by"]
    assert content(path) == good
    writer.close()


def test_refuses_a_file_that_is_not_its_replica(bank: Bank) -> None:
    primary, path, settings, writer = bank
    with pytest.raises(bottomless.ReplicaConflictError, match="writer"):
        Replica(primary, settings).start()  # the writer's own file: never
    plain = sqlite3.connect(path)
    plain.execute("CREATE TABLE mine(x)")
    plain.commit()
    plain.close()
    with pytest.raises(bottomless.ReplicaConflictError, match="not a bottomless replica"):
        Replica(path, settings).start()
    with Replica(path, settings, overwrite=True) as replica:
        replica.wait_for(bookmark(writer), timeout=10)
    with pytest.raises(bottomless.ReplicaConflictError, match=r"replica of 'bank\.db'"):
        Replica(path, settings, db_name="other.db").start()
    position = read_position(path)
    assert position is not None and position.db_name == "bank.db"
    writer.close()


def test_a_replacement_interrupted_before_its_rename_is_done_again(
    bank: Bank, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follower told to replace a foreign file dies after recording the replacement but
    before the rename: the next one must not take the foreign file for the restored one."""
    from bottomless.replica import local

    _primary, path, settings, writer = bank
    plain = sqlite3.connect(path)
    plain.execute("CREATE TABLE mine(x)")
    plain.commit()
    plain.close()
    real_replace = os.replace

    def dies_before_the_rename(src: str, dst: str) -> None:
        if dst == path:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(local.os, "replace", dies_before_the_rename)
    with pytest.raises(KeyboardInterrupt):
        Replica(path, settings, overwrite=True).start()
    monkeypatch.undo()
    with Replica(path, settings) as replica:
        replica.wait_for(bookmark(writer), timeout=10)
    assert content(path) == content(bank.primary)
    assert rows(path, "SELECT name FROM sqlite_master WHERE name = 'mine'") == []


def test_a_replica_file_has_one_follower(bank: Bank, tmp_path: Any) -> None:
    """A second follower, here promote while the first still follows, is refused with a
    clear error instead of writing the file under the first one's feet."""
    _primary, path, settings, writer = bank
    with Replica(path, settings, poll_interval=0.05) as first:
        first.wait_for(bookmark(writer), timeout=10)
        with pytest.raises(bottomless.ReplicaConflictError, match="another follower"):
            Replica(path, settings).promote(force=True, timeout=10)
        assert first.error is None
    with Replica(path, settings) as again:  # free once the first has stopped
        again.wait_for(bookmark(writer), timeout=10)


def test_a_replica_in_a_missing_directory_is_refused_naming_it(bank: Bank, tmp_path: Any) -> None:
    _primary, _path, settings, _writer = bank
    missing = tmp_path / "not-made-yet"
    with pytest.raises(FileNotFoundError, match="directory does not exist") as info:
        Replica(str(missing / "r.db"), settings).start()
    assert info.value.filename == str(missing) and not missing.exists()


def test_a_restore_left_by_a_killed_follower_is_removed_at_start(bank: Bank) -> None:
    _primary, path, settings, writer = bank
    with Replica(path, settings) as replica:
        replica.wait_for(bookmark(writer), timeout=10)
    leftovers = [path + ".bottomless-replica-restore-0badf00d",
                 path + ".bottomless-replica-restore-0badf00d.bottomless-restore-12345678"]
    for leftover in leftovers:
        pathlib.Path(leftover).write_bytes(b"\0" * 4096)
    with Replica(path, settings) as replica:
        replica.wait_for(bookmark(writer), timeout=10)
    assert not any(os.path.exists(leftover) for leftover in leftovers)


def test_a_start_that_fails_lets_go_of_the_file(
    bank: Bank, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bottomless.replica import follower

    _primary, path, settings, writer = bank

    def unreachable(settings: bottomless.Settings, **options: Any) -> Any:
        raise bottomless.StoreError("the endpoint is unreachable (injected)")

    monkeypatch.setattr(follower, "open_store", unreachable)
    with pytest.raises(bottomless.StoreError):
        Replica(path, settings).start()
    monkeypatch.undo()
    with Replica(path, settings) as replica:  # the same file, a follower again at once
        replica.wait_for(bookmark(writer), timeout=10)


def test_a_write_to_the_replica_by_someone_else_stops_the_follower(bank: Bank) -> None:
    _primary, path, settings, writer = bank
    with Replica(path, settings, poll_interval=0.05) as replica:
        replica.wait_for(bookmark(writer), timeout=10)
        rogue = sqlite3.connect(path, timeout=10)  # read-write: not how replicas are opened
        rogue.execute("UPDATE counter SET n = -1")
        rogue.commit()
        transfer(writer, random.Random(4))
        with pytest.raises(bottomless.BottomlessError, match="stopped"):
            replica.wait_for(bookmark(writer), timeout=10)
        assert "something other than the follower" in replica.status()["stopped_by"]
        rogue.close()
    writer.close()


def test_wait_for_times_out_and_refuses_malformed_bookmarks(memory_bank: Bank) -> None:
    _primary, path, settings, writer = memory_bank
    mark = bookmark(writer)
    generation, seq = mark.split(":")[1], int(mark.split(":")[2])
    with Replica(path, settings, poll_interval=0.05) as replica:
        replica.wait_for(mark, timeout=5)
        ahead = f"1:{generation}:{seq + 5}"
        started = time.monotonic()
        with pytest.raises(bottomless.ReplicaTimeoutError) as info:
            replica.wait_for(ahead, timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 3
        assert isinstance(info.value, TimeoutError)
        assert info.value.bookmark == ahead and info.value.applied == mark
        with pytest.raises(bottomless.ConfigError, match="bookmark"):
            replica.wait_for("not-a-bookmark", timeout=1)
        older = "1:19990101T000000000Z-00000000:999999"
        replica.wait_for(older, timeout=1)  # an older generation: a newer one contains it
    writer.close()


# ---------------------------------------------------------------- generations, gc, page size


def force_new_generation(primary: str, settings: bottomless.Settings,
                         make_settings: MakeSettings) -> apsw.Connection:
    """Change the database behind bottomless's back, then reopen it with
    ``initial_replication=force``: the writer starts a new generation."""
    plain = apsw.Connection(primary)
    with plain:
        plain.execute("UPDATE accounts SET balance = balance + 10 WHERE id = 0")
        plain.execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1")
        plain.execute("UPDATE counter SET n = n + 1")
    plain.close()
    forced = make_settings("file", db_name="bank.db", bucket=settings.bucket,
                           initial_replication="force")
    return bottomless.connect(primary, forced)


def test_a_new_generation_is_followed_through_its_successor_object(
    bank: Bank, make_settings: MakeSettings, tmp_path: Any
) -> None:
    primary, path, settings, writer = bank
    # no periodic look for generations after the first: only the successor object that ends
    # the old generation, at the key the follower polls anyway, can lead it to the new one
    replica = Replica(path, settings, poll_interval=0.05, generation_check_interval=3600).start()
    try:
        readers = Readers(path, str(tmp_path / "stop"), count=2)
        replica.wait_for(bookmark(writer), timeout=10)
        first = replica.status()["generation"]
        writer.close()
        writer = force_new_generation(primary, settings, make_settings)
        transfer(writer, random.Random(5))
        deadline = time.monotonic() + 20
        while replica.status()["generation"] == first:
            assert time.monotonic() < deadline and replica.error is None, replica.status()
            time.sleep(0.05)
        replica.wait_for(bookmark(writer), timeout=20)
        reason = replica.status()["last_restore"]["reason"]
        assert reason.startswith(f"generation {first} ended at commit"), reason
        readers.finish()
        assert content(path) == content(primary)
    finally:
        replica.stop()
        writer.close()


def test_a_new_generation_without_a_successor_object_is_found_by_listing(
    bank: Bank, make_settings: MakeSettings
) -> None:
    primary, path, settings, writer = bank
    with Replica(path, settings, poll_interval=0.05) as replica:
        replica.wait_for(bookmark(writer), timeout=10)
        first, seq = replica.status()["generation"], replica.status()["seq"]
    writer.close()
    writer = force_new_generation(primary, settings, make_settings)
    successor = os.path.join(settings.bucket, fmt.commit_key("bank.db", first, seq + 1))
    os.unlink(successor)  # as if the writer died before ending the old generation
    with Replica(path, settings, poll_interval=0.05, generation_check_interval=0.2) as replica:
        replica.wait_for(bookmark(writer), timeout=20)
        status = replica.status()
    assert status["generation"] != first
    assert status["last_restore"]["reason"].startswith("the writer started generation")
    assert content(path) == content(primary)
    writer.close()


def test_commits_deleted_by_gc_make_it_restore_the_newest_state(bank: Bank, tmp_path: Any) -> None:
    primary, path, settings, writer = bank
    with writer:  # pages that no transfer touches: the restore must not write them again
        writer.execute("CREATE TABLE archive(x BLOB)")
        for _ in range(100):
            writer.execute("INSERT INTO archive VALUES(zeroblob(3000))")
    with Replica(path, settings, poll_interval=0.05) as replica:
        replica.wait_for(bookmark(writer), timeout=10)
        behind = replica.status()["seq"]
    rng = random.Random(6)
    for _ in range(10):
        transfer(writer, rng)
    status = bottomless.status(writer)
    store = open_store(settings)
    compact(store, db_name="bank.db", generation=status["generation"],
            seq=status["last_replicated_commit"] - 2, compression="zstd", parallelism=2,
            writer="0" * 32)
    store.close()
    bottomless.gc("bank.db", settings, older_than=dt.timedelta(0))
    gone = fmt.commit_key("bank.db", status["generation"], behind + 1)
    assert not os.path.exists(os.path.join(settings.bucket, gone))
    with Replica(path, settings, poll_interval=0.05) as replica:
        readers = Readers(path, str(tmp_path / "stop"), count=2)
        replica.wait_for(bookmark(writer), timeout=20)
        restore = replica.status()["last_restore"]
        readers.finish()
    assert "deleted by gc" in restore["reason"] and restore["seq"] >= behind + 8
    assert restore["pages_written"] < restore["db_pages"] / 2  # only what differs
    assert content(path) == content(primary)
    writer.close()


def test_a_page_size_change_reaches_open_readers_as_one_more_commit(
    make_settings: MakeSettings, paths: tuple[str, str], tmp_path: Any
) -> None:
    primary, path = paths
    settings = make_settings("file", db_name="bank.db")
    writer = bottomless.connect(primary, settings)
    setup_bank(writer, mode="delete")  # a rollback-journal writer can change its page size
    rng = random.Random(8)
    with Replica(path, settings, poll_interval=0.05) as replica:
        readers = Readers(path, str(tmp_path / "stop"), count=2)
        for _ in range(20):
            transfer(writer, rng)
        writer.execute("PRAGMA page_size=8192")
        writer.execute("VACUUM")
        for _ in range(20):
            transfer(writer, rng)
        replica.wait_for(bookmark(writer), timeout=20)
        seen = readers.finish()
        assert content(path) == content(primary)
    assert any(sizes == [4096, 8192] for *_, sizes in seen), seen  # they saw it switch
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA page_size").fetchone() == (8192,)
    check.close()
    writer.close()


def test_a_vacuum_that_shrinks_the_database_is_applied(bank: Bank) -> None:
    primary, path, settings, writer = bank
    with writer:
        for _ in range(40):
            writer.execute("INSERT INTO junk VALUES(randomblob(8000))")
    with Replica(path, settings, poll_interval=0.05) as replica:
        replica.wait_for(bookmark(writer), timeout=10)
        grown = replica.status()["seq"]
        writer.execute("DROP TABLE junk")
        writer.execute("VACUUM")
        replica.wait_for(bookmark(writer), timeout=10)
        assert replica.status()["seq"] > grown
        assert content(path) == content(primary)
    writer.close()
    pages = sqlite3.connect(path).execute("PRAGMA page_count").fetchone()[0]
    assert pages < 40 and os.path.getsize(path) == pages * 4096  # the last close checkpointed


def test_the_apsw_reader_and_the_sqlite3_shell_read_it_too(memory_bank: Bank) -> None:
    primary, path, settings, writer = memory_bank
    with Replica(path, settings, poll_interval=0.05) as replica:
        for _ in range(5):
            transfer(writer, random.Random(9))
        replica.wait_for(bookmark(writer), timeout=10)
        reader = apsw.Connection(f"file:{path}?mode=ro",
                                 flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
        assert reader.execute("SELECT sum(balance) FROM accounts").fetchall() == [(TOTAL,)]
        reader.close()
        shell = "/usr/bin/sqlite3"
        if os.path.exists(shell):
            out = subprocess.run([shell, "-readonly", path, "SELECT n FROM counter"],
                                 capture_output=True, text=True, check=True).stdout
            assert int(out) == content(primary)[1][0][0]
    writer.close()


def test_generations_listing_is_left_to_one_function(make_settings: MakeSettings) -> None:
    """The only LIST of generations on the follow path is Feed.newer_generation."""
    from bottomless.replica import feed, follower, local

    sources = [pathlib.Path(str(m.__file__)).read_text() for m in (feed, follower, local)]
    assert sum(s.count("generations(") for s in sources) == 1
    assert "latest_generation" not in "".join(sources)
    settings = make_settings("memory", db_name="x.db")
    store = open_store(settings)
    assert generations(store, "x.db") == []
    store.close()


def test_a_replica_of_a_database_not_written_yet_follows_its_first_commits(
    make_settings: MakeSettings, paths: tuple[str, str]
) -> None:
    """The writer has opened the database but committed nothing: its snapshot has no pages.
    The replica is then a database with no tables (a file of no pages cannot be in WAL
    mode), readable at once, and it follows the first commits."""
    primary, path = paths
    settings = make_settings("file", db_name="new.db")
    writer = bottomless.connect(primary, settings)
    try:
        with Replica(path, settings, poll_interval=0.02) as replica:
            reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            assert reader.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
            writer.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
            writer.execute("INSERT INTO t VALUES (2)")
            replica.wait_for(bookmark(writer), timeout=10)
            assert reader.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,)]
            reader.close()
        assert integrity(path) == "ok"
    finally:
        writer.close()


@pytest.mark.parametrize("following", [False, True], ids=["resumed", "following"])
def test_orphans_of_a_killed_writer_are_left_out_and_named(
    make_settings: MakeSettings, paths: tuple[str, str], following: bool
) -> None:
    """A sync writer's upload succeeded but its local commit did not (here: the store's answer
    was lost); its next open branches a generation at the commit before. A replica that finds
    that orphan and the generation's end together never applies it; one that applied it
    already says its readers go back. Either way the replica ends as the writer's file."""
    from test_snapshots import LostAckStore

    primary, path = paths
    settings = make_settings("file", db_name="o.db")
    writer = bottomless.connect(primary, settings)
    writer.execute("CREATE TABLE t(x); INSERT INTO t VALUES ('acknowledged')")
    replica = Replica(path, settings, poll_interval=0.02, generation_check_interval=0.05)
    replica.start()
    replica.wait_for(bookmark(writer), timeout=10)
    acknowledged = [("acknowledged",)]
    if not following:
        replica.stop()
        for i in range(8):  # the resumed follower's fetch rounds grow: 1, 1, 2, 4, then 8
            writer.execute("INSERT INTO t VALUES (?)", (i,))
            acknowledged.append((i,))
    orphan = helpers_replicator(primary).state.seq + 1
    lossy = LostAckStore(helpers_replicator(primary).store)
    helpers_replicator(primary).store = lossy
    lossy.armed = True
    with pytest.raises(apsw.IOError):
        writer.execute("INSERT INTO t VALUES ('orphan')")
    if following:
        wait_for(lambda: replica.status()["seq"] == orphan, timeout=10)  # it applied it
    writer.close()
    writer = bottomless.connect(primary, settings)  # branches at the commit before
    writer.execute("INSERT INTO t VALUES ('after')")
    if not following:
        replica = Replica(path, settings, poll_interval=0.02, generation_check_interval=0.05)
        replica.start()
    with replica:
        replica.wait_for(bookmark(writer), timeout=10)
        reason = replica.status()["last_restore"]["reason"]
    assert f"commit(s) {orphan}..{orphan} were uploaded by a writer killed" in reason
    assert (f"readers go back to commit {orphan - 1}" in reason) is following
    assert rows(path, "SELECT x FROM t") == [*acknowledged, ("after",)]
    writer.close()

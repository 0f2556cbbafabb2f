"""Single writer: a second writer fails loudly, a paused writer cannot commit after losing its
lease, a crashed writer's lease is taken over once it expires."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import apsw
import pytest
from helpers import ForwardingStore, replicator, rows

import bottomless
from bottomless import format as fmt
from bottomless.backends.registry import open_store
from bottomless.engine.lease import WriterLease

MakeSettings = Callable[..., bottomless.Settings]

_CHILD = """
import sys, time, apsw, bottomless
settings = bottomless.Settings(backend="file", bucket=sys.argv[2], db_name="shared",
                               lease_ttl=float(sys.argv[3]))
db = bottomless.connect(sys.argv[1], settings)
db.set_busy_timeout(10000)
db.execute("CREATE TABLE IF NOT EXISTS t(x)")
print("ready", flush=True)
i = 0
while True:
    i += 1
    try:
        db.execute("INSERT INTO t VALUES(?)", (i,))
    except apsw.IOError as e:
        print("refused", type(e.__cause__).__name__, e.__cause__, flush=True)
        sys.exit(3)
    print("done", i, flush=True)
    time.sleep(0.05)
"""


def _child(tmp_path: Any, name: str, bucket: str, ttl: float) -> subprocess.Popen[str]:
    script = tmp_path / "lease_child.py"
    script.write_text(_CHILD)
    process = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / name), bucket, str(ttl)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().startswith("ready")
    return process


def test_second_writer_fails_loudly_at_open(tmp_path: Any, backend: str,
                                            make_settings: MakeSettings) -> None:
    settings = make_settings(backend, db_name="one", initial_replication="force")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = bottomless.connect(str(tmp_path / "a" / "db"), settings)
    first.execute("CREATE TABLE t(x); INSERT INTO t VALUES(1)")
    with pytest.raises(bottomless.ReplicaConflictError, match="another writer"):
        bottomless.connect(str(tmp_path / "b" / "db"), settings)
    first.execute("INSERT INTO t VALUES(2)")  # the first writer is unaffected
    first.close()
    # a clean close releases the lease: the other (empty) file may now take over; it is
    # restored from the bucket first
    second = bottomless.connect(str(tmp_path / "b" / "db"), settings)
    assert second.execute("SELECT x FROM t").fetchall() == [(1,), (2,)]
    second.execute("INSERT INTO t VALUES(3)")
    second.close()
    copy = str(tmp_path / "copy.db")
    bottomless.restore(copy, settings, db_name="one")
    assert rows(copy) == [(1,), (2,), (3,)]


def test_paused_writer_cannot_commit_after_losing_its_lease(tmp_path: Any) -> None:
    bucket = str(tmp_path / "replicas")
    ttl = 1.5
    writer = _child(tmp_path, "a.db", bucket, ttl)
    assert writer.stdout is not None
    time.sleep(0.3)
    writer.send_signal(signal.SIGSTOP)
    try:
        time.sleep(ttl + 0.5)
        settings = bottomless.Settings(backend="file", bucket=bucket, db_name="shared",
                                       lease_ttl=ttl, initial_replication="force")
        (tmp_path / "b").mkdir()
        usurper = bottomless.connect(str(tmp_path / "b" / "b.db"), settings)
    finally:
        writer.send_signal(signal.SIGCONT)
    try:
        before = usurper.execute("SELECT x FROM t").fetchall()  # restored from the bucket
        usurper.execute("INSERT INTO t VALUES(-1)")
        out, _ = writer.communicate(timeout=60)
        assert writer.returncode == 3, out
        # the writer's commit may meet the lease, or the usurper's commit object in its way:
        # either way it names the lease
        assert "ReplicaConflictError" in out and "lease" in out, out
        acknowledged = [int(line.split()[1]) for line in out.splitlines()
                        if line.startswith("done")]
        assert before == [(i,) for i in acknowledged], "every acknowledged commit was restored"
        usurper.execute("INSERT INTO t VALUES(-2)")
    finally:
        usurper.close()
    copy = str(tmp_path / "copy.db")
    bottomless.restore(copy, settings, db_name="shared")
    assert sorted(rows(copy)) == sorted([*before, (-1,), (-2,)]), "a late commit appeared"


def test_crashed_writers_lease_is_taken_over_after_expiry(tmp_path: Any) -> None:
    bucket = str(tmp_path / "replicas")
    ttl = 3.0  # the first open below must come before the lease expires, loaded machine or not
    writer = _child(tmp_path, "a.db", bucket, ttl)
    time.sleep(0.2)
    writer.send_signal(signal.SIGKILL)
    writer.wait(10)
    settings = bottomless.Settings(backend="file", bucket=bucket, db_name="shared",
                                   lease_ttl=ttl, initial_replication="force")
    (tmp_path / "b").mkdir()
    path = str(tmp_path / "b" / "b.db")
    started = time.monotonic()
    with pytest.raises(bottomless.ReplicaConflictError, match="lease runs until"):
        bottomless.connect(path, settings)
    while True:
        try:
            db = bottomless.connect(path, settings)
            break
        except bottomless.ReplicaConflictError:
            assert time.monotonic() - started < ttl + 5, "the expired lease was not taken over"
            time.sleep(0.2)
    assert time.monotonic() - started >= ttl * 0.3  # renewed up to ttl / 3 before the kill
    db.execute("CREATE TABLE IF NOT EXISTS t(x); INSERT INTO t VALUES(42)")
    db.close()


def test_processes_sharing_one_file_are_one_writer(tmp_path: Any) -> None:
    bucket = str(tmp_path / "replicas")
    first = _child(tmp_path, "same.db", bucket, 1.5)
    second = _child(tmp_path, "same.db", bucket, 1.5)
    time.sleep(2.5)  # longer than the TTL: renewals from both processes must coexist
    for process in (first, second):
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGTERM)
        process.wait(10)
    # SIGTERM is a crash: one commit may be in the bucket and not in the file. Reopening
    # through bottomless settles that, after which bucket and file agree.
    settings = bottomless.Settings(backend="file", bucket=bucket, db_name="shared")
    bottomless.connect(str(tmp_path / "same.db"), settings).close()
    plain = apsw.Connection(str(tmp_path / "same.db"))
    local = sorted(plain.execute("SELECT x FROM t").fetchall())
    plain.close()
    copy = str(tmp_path / "copy.db")
    bottomless.restore(copy, settings, db_name="shared")
    assert sorted(rows(copy)) == local and len(local) > 20
    os.unlink(copy)


def test_a_commit_that_meets_a_new_holders_object_says_it_lost_the_lease(
        tmp_path: Any, make_settings: Callable[..., bottomless.Settings]) -> None:
    """The lease was taken (a forced failover) while this writer still trusted it, and the
    new holder's commit is at the position this one was about to use: the conditional PUT
    refuses it, and the error says why (it said only that another writer was there)."""
    settings = make_settings("file", lease_ttl=30)
    path = str(tmp_path / "a.db")
    db = bottomless.connect(path, settings)
    db.execute("CREATE TABLE t(x)")
    rep = replicator(path)
    other = WriterLease(open_store(settings), rep.db_name, "ff" * 16, 30)
    other.acquire(force=True)
    try:
        state = rep.state
        assert state is not None
        theirs = fmt.PageBatch(
            fmt.KIND_COMMIT, state.generation, state.seq + 1, state.page_size, 2,
            {2: bytes(state.page_size)}, prev=state.digest_bytes, writer=b"\xff" * 16,
        )
        rep.store.put_once(fmt.commit_key(rep.db_name, state.generation, state.seq + 1),
                           fmt.encode_batch(theirs, "none"))
        with pytest.raises(apsw.IOError) as info:
            db.execute("INSERT INTO t VALUES(1)")
        cause = info.value.__cause__
        assert isinstance(cause, bottomless.ReplicaConflictError)
        assert "lost its lease" in str(cause), cause
    finally:
        other.release()
    db.close()


def test_a_lease_released_on_closing_is_taken_without_a_warning(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Only a lease that expired (its writer crashed) or was forced is worth a warning."""
    store = open_store(bottomless.Settings(backend="file", bucket=str(tmp_path / "replicas")))
    first = WriterLease(store, "handover", fmt.new_writer_id().hex(), ttl=30)
    first.acquire()
    first.release()
    caplog.set_level("INFO", logger="bottomless")
    second = WriterLease(store, "handover", fmt.new_writer_id().hex(), ttl=0.3)
    second.acquire()
    assert [r.levelname for r in caplog.records if "lease" in r.getMessage()] == ["INFO"]
    assert "released on closing" in caplog.text
    second._stop.set()  # crashed: never renewed, never released
    time.sleep(0.4)
    caplog.clear()
    third = WriterLease(store, "handover", fmt.new_writer_id().hex(), ttl=30)
    third.acquire()
    assert [r.levelname for r in caplog.records if "lease" in r.getMessage()] == ["WARNING"]
    assert "(expired)" in caplog.text
    assert not third.forced  # the promotion need not follow a writer that has stopped
    fourth = WriterLease(store, "handover", fmt.new_writer_id().hex(), ttl=30)
    fourth.acquire(force=True)  # from a holder whose lease runs: it may still be committing
    assert fourth.forced and "(forced)" in caplog.text
    third._stop.set()
    fourth.release()
    store.close()


def test_a_commit_whose_upload_outlives_the_lease_is_not_acknowledged(tmp_path: Any) -> None:
    """A writer paused during its PUT (SIGSTOP, a VM freeze) while a promotion takes the
    expired lease and catches up without its object: COMMIT must fail, not succeed."""
    ttl = 1.0
    settings = bottomless.Settings(backend="file", bucket=str(tmp_path / "replicas"),
                                   lease_ttl=ttl)
    path = str(tmp_path / "paused.db")
    db = bottomless.connect(path, settings)
    db.execute("CREATE TABLE t(x)")
    rep = replicator(path)
    assert rep.lease is not None
    rep.lease._stop.set()  # no renewal from here on, as in a paused process
    inner = rep.store

    class PromotedDuringThePut(ForwardingStore):
        def put_if_absent(self, key: str, data: bytes) -> None:
            if fmt.is_commit_key(key):
                time.sleep(ttl + 0.2)  # the lease expires while this PUT is under way
                rival = WriterLease(inner, rep.db_name, fmt.new_writer_id().hex(), ttl=30)
                rival.acquire()  # the promotion; its catch-up saw no commit 2
                rival._stop.set()
            inner.put_if_absent(key, data)

    rep.store = PromotedDuringThePut(inner)
    with pytest.raises(apsw.Error) as info:
        db.execute("INSERT INTO t VALUES (1)")
    cause = info.value.__cause__
    assert isinstance(cause, bottomless.ReplicaConflictError) and "lease" in str(cause)
    assert db.execute("SELECT count(*) FROM t").fetchall() == [(0,)]  # rolled back locally
    rep.store = inner
    db.close()


_EXITING = """
import atexit, logging, sys, time
sys.path.insert(0, sys.argv[2])
import bottomless
from bottomless import format as fmt
from bottomless.backends.registry import open_store
from bottomless.engine.lease import WriterLease
from bottomless.errors import StoreError
from helpers import ForwardingStore

logging.basicConfig(level=logging.WARNING)
inner = open_store(bottomless.Settings(backend="file", bucket=sys.argv[1]))

class ShutDown(ForwardingStore):
    refuse = False
    def put_if_match(self, key, data, version):
        if self.refuse:  # as s3fs's loop does once Python's thread pools are shut down
            raise StoreError("PUT lease failed: cannot schedule new futures after shutdown")
        return self.inner.put_if_match(key, data, version)

store = ShutDown(inner)
lease = WriterLease(store, "exiting", fmt.new_writer_id().hex(), ttl=0.3)
lease.acquire()
atexit.register(time.sleep, 0.5)  # renewals come due while Python is exiting
store.refuse = True
"""


def test_a_renewal_that_fails_as_python_exits_is_not_a_warning(tmp_path: Any) -> None:
    script = tmp_path / "exiting.py"
    script.write_text(_EXITING)
    tests = os.path.dirname(os.path.abspath(__file__))
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "replicas"), tests],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "lease renewal failed" not in done.stderr

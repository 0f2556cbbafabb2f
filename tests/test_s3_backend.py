"""What the S3 backend does beyond the PageStore contract: its two clients.

Object bodies (create-only writes and reads), listings and the bucket check go through a plain
botocore client in the calling thread, and so do the lease's conditional reads and writes;
s3fs, for deletes, is built only when one first runs, so a restore never imports it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from faultproxy import FaultProxy

import bottomless
from bottomless.backends.base import PageStore
from bottomless.backends.registry import open_store
from bottomless.errors import ObjectExistsError, StoreError

pytestmark = pytest.mark.s3


def test_create_only_writes_from_many_threads_each_land_once(
    make_settings: Callable[..., bottomless.Settings],
) -> None:
    store = open_store(make_settings("s3", parallelism=4))
    try:
        bodies = {f"t/{i:03d}": os.urandom(1000 + i) for i in range(40)}
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda item: store.put_if_absent(*item), bodies.items()))
        assert store.list_keys("t/") == sorted(bodies)
        assert all(store.get(key) == body for key, body in bodies.items())
        with pytest.raises(ObjectExistsError):
            store.put_if_absent("t/000", b"other")
    finally:
        store.close()


def test_a_forked_child_writes_through_a_client_of_its_own(
    make_settings: Callable[..., bottomless.Settings],
) -> None:
    store: Any = open_store(make_settings("s3"))
    try:
        store.put_if_absent("parent/before", b"1")  # the parent's pooled connection exists
        store.put_if_absent("parent/doomed", b"1")
        store.delete("parent/doomed")  # s3fs, with its event loop, exists too
        parents_client = store.client
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                store.put_if_absent("child/key", b"2")
                store.put_if_absent("child/doomed", b"2")
                store.delete("child/doomed")  # s3fs refuses to run in a forked child
                code = 0 if store.client is not parents_client else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        assert store.client is parents_client
        store.put_if_absent("parent/after", b"3")  # its connection was not disturbed
        assert store.get("child/key") == b"2"
        assert store.get("parent/after") == b"3"
    finally:
        store.close()


def test_live_stores_tracks_open_stores_and_is_the_fork_hook(
    make_settings: Callable[..., bottomless.Settings],
) -> None:
    from bottomless.backends.s3 import live_stores

    store: Any = open_store(make_settings("s3"))
    other: Any = open_store(make_settings("s3"))
    try:
        assert {store, other} <= set(live_stores.stores())
        first = store.client
        live_stores.forget_clients()  # what a forked child runs
        assert store.client is not first
        store.put_if_absent("after/forget", b"1")
        store.close()
        assert store not in live_stores.stores()
        assert other in live_stores.stores()
        live_stores.close_all()
        assert live_stores.stores() == []
    finally:
        store.close()
        other.close()


def _store_directly(s3_settings: dict[str, Any], key: str, body: bytes) -> None:
    direct = open_store(bottomless.Settings(**s3_settings))
    try:
        direct.put_if_absent(key, body)
    finally:
        direct.close()


@contextlib.contextmanager
def _store_behind(proxy: FaultProxy, s3_settings: dict[str, Any],
                  **overrides: Any) -> Iterator[PageStore]:
    """A store of the test bucket reached through ``proxy``."""
    store = open_store(bottomless.Settings(
        **{**s3_settings, "endpoint": proxy.endpoint, **overrides}
    ))
    try:
        yield store
    finally:
        store.close()


READERS: dict[str, Callable[[PageStore, str], bytes]] = {
    "get": lambda store, key: store.get(key),
    "get_chunks": lambda store, key: b"".join(store.get_chunks(key, 64 * 1024)),
}


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize(("retries", "survives"), [(2, True), (0, False)])
def test_a_body_cut_short_is_fetched_again(
    seaweed: Any, s3_settings: dict[str, Any], reader: str, retries: int, survives: bool,
) -> None:
    """botocore's retries end when the headers arrive: a body cut short while it is read is
    fetched again (a whole GET), or resumed where it stopped (a ranged GET, when streamed)."""
    body = os.urandom(600_000)
    _store_directly(s3_settings, "cut/object", body)
    with FaultProxy(seaweed.endpoint, rate=1.0, kinds=("truncate",), match="GET /",
                    budget=1) as proxy:
        with _store_behind(proxy, s3_settings, max_retries=retries) as store:
            if survives:
                assert READERS[reader](store, "cut/object") == body
                gets = [r for r in proxy.seen if r.startswith("GET ")]
                assert gets == [f"GET /{s3_settings['bucket']}/cut/object"] * 2
            else:
                with pytest.raises(StoreError) as raised:
                    READERS[reader](store, "cut/object")
                assert "GET cut/object" in str(raised.value)
                assert proxy.endpoint in str(raised.value)
        assert proxy.faults() == {"truncate": 1}


def test_a_resumed_stream_skips_what_it_has_when_the_server_ignores_range(
    seaweed: Any, s3_settings: dict[str, Any],
) -> None:
    """A server that answers a ranged GET with the whole object (200, no Content-Range) must
    not make the stream repeat the bytes it already yielded."""
    body = os.urandom(600_000)
    _store_directly(s3_settings, "cut/object", body)
    with FaultProxy(seaweed.endpoint, rate=1.0, kinds=("truncate",), match="GET /",
                    budget=1) as proxy:
        proxy.drop_request_headers = {"range"}
        with _store_behind(proxy, s3_settings) as store:
            assert b"".join(store.get_chunks("cut/object", 64 * 1024)) == body
        assert proxy.faults() == {"truncate": 1}


def test_a_body_damaged_in_transit_is_fetched_again_or_reported(
    seaweed: Any, s3_settings: dict[str, Any],
) -> None:
    """SeaweedFS sends a CRC-32 of each body and botocore checks it at the end of the read: a
    whole read starts again, a stream (whose bytes are already out) fails with a StoreError."""
    body = os.urandom(300_000)
    _store_directly(s3_settings, "cut/object", body)
    with FaultProxy(seaweed.endpoint, rate=1.0, kinds=("flip",), match="GET /",
                    budget=1) as proxy, _store_behind(proxy, s3_settings) as store:
        assert store.get("cut/object") == body
        assert proxy.faults() == {"flip": 1}
        proxy.budget = 2
        with pytest.raises(StoreError, match="damaged") as raised:
            b"".join(store.get_chunks("cut/object"))
        assert "GET cut/object" in str(raised.value)
        assert proxy.faults() == {"flip": 2}


def test_retries_of_a_cut_body_share_the_requests_budget(
    seaweed: Any, s3_settings: dict[str, Any],
) -> None:
    """Every response cut short: with max_retries=2 that is three GETs in all, not three per
    botocore attempt."""
    _store_directly(s3_settings, "cut/object", os.urandom(300_000))
    proxy = FaultProxy(seaweed.endpoint, rate=1.0, kinds=("truncate",), match="GET /")
    with proxy, _store_behind(proxy, s3_settings, max_retries=2) as store:
        for read in READERS.values():
            before = len(proxy.seen)
            with pytest.raises(StoreError):
                read(store, "cut/object")
            assert len(proxy.seen) - before == 3


def test_a_range_read_from_a_server_that_ignores_range_is_still_the_range(
    seaweed: Any, s3_settings: dict[str, Any],
) -> None:
    body = os.urandom(50_000)
    _store_directly(s3_settings, "cut/object", body)
    with FaultProxy(seaweed.endpoint) as proxy:
        proxy.drop_request_headers = {"range"}
        with _store_behind(proxy, s3_settings) as store:
            assert store.get_range("cut/object", 1000, 3000) == body[1000:3000]
            assert store.get_range("cut/object", 0, 100) == body[:100]


def test_reads_damaged_every_time_stop_after_the_budget(
    seaweed: Any, s3_settings: dict[str, Any],
) -> None:
    _store_directly(s3_settings, "cut/object", os.urandom(100_000))
    with FaultProxy(seaweed.endpoint, rate=1.0, kinds=("flip",), match="GET /") as proxy:
        with (_store_behind(proxy, s3_settings, max_retries=2) as store,
              pytest.raises(StoreError, match="damaged")):
            store.get("cut/object")
        assert proxy.faults() == {"flip": 3}


def _replica(s3_settings: dict[str, Any], path: str, name: str) -> None:
    """A replica of ``name`` in the test bucket: its snapshot and a few commits."""
    db = bottomless.connect(path, bottomless.Settings(**s3_settings, db_name=name))
    try:
        db.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)")
    finally:
        db.close()


def _request_kind(request: str, bucket: str) -> str:
    """``HEAD bucket``, ``LIST`` or ``GET`` for a request the proxy saw (path-style URLs)."""
    method, _, target = request.partition(" ")
    path, _, query = target.partition("?")
    if path.strip("/") == bucket:
        return "LIST" if method == "GET" and "list-type" in query else f"{method} bucket"
    return method


def test_a_restore_of_the_newest_commit_lists_twice_then_reads_each_object_once(
    seaweed: Any, s3_settings: dict[str, Any], tmp_path: Any,
) -> None:
    _replica(s3_settings, str(tmp_path / "rt.db"), "rt.db")
    with FaultProxy(seaweed.endpoint) as proxy:
        result = bottomless.restore(
            str(tmp_path / "out.db"),
            bottomless.Settings(**{**s3_settings, "endpoint": proxy.endpoint}), db_name="rt.db",
        )
    kinds = [_request_kind(r, s3_settings["bucket"]) for r in proxy.seen]
    # the bucket check, the generations, the newest generation's keys, its snapshot's manifest
    assert kinds[:4] == ["HEAD bucket", "LIST", "LIST", "GET"], proxy.seen
    assert kinds[4:] == ["GET"] * (result.objects - 1), proxy.seen  # parts and commits
    assert result.seq == 3


def test_restore_and_ls_never_import_s3fs(s3_settings: dict[str, Any], tmp_path: Any) -> None:
    _replica(s3_settings, str(tmp_path / "rt.db"), "rt.db")
    code = (
        "import json, sys, bottomless\n"
        f"settings = bottomless.Settings(**{s3_settings!r})\n"
        f"bottomless.restore({str(tmp_path / 'out.db')!r}, settings, db_name='rt.db')\n"
        "assert bottomless.ls(None, settings) == ['rt.db']\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert "botocore" in loaded
    assert not {"s3fs", "aiobotocore", "aiohttp", "fsspec"} & loaded


def test_the_leases_requests_fail_within_the_timeout_when_the_server_stalls(
        s3_settings: dict[str, Any], seaweed: Any) -> None:
    """A server that accepts and never answers (here SIGSTOPped): the lease's read and its
    conditional replace fail within ``timeout``, as every other request does, so that a commit
    waiting on the lease is refused in time instead of hanging for the whole outage."""
    store = open_store(bottomless.Settings(**{**s3_settings, "timeout": 1, "max_retries": 0}))
    store.put_if_absent("lease-like", b"one")
    _body, version = store.get_versioned("lease-like")
    calls: dict[str, Callable[[], Any]] = {
        "put_if_match": lambda: store.put_if_match("lease-like", b"two", version),
        "get_versioned": lambda: store.get_versioned("lease-like"),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        os.killpg(seaweed.process.pid, signal.SIGSTOP)
        try:
            for name, call in calls.items():
                started = time.monotonic()
                pending = pool.submit(call)
                with pytest.raises(StoreError):
                    pending.result(timeout=15)  # before the fix, put_if_match never returned
                assert time.monotonic() - started < 10, name
        finally:
            os.killpg(seaweed.process.pid, signal.SIGCONT)
    assert store.get_versioned("lease-like")[0] in (b"one", b"two")  # the server is back


def test_a_write_that_finds_its_own_object_is_confirmed_with_retries(
        s3_settings: dict[str, Any]) -> None:
    """After "it exists" (a retry of a PUT whose reply was lost), the read that confirms the
    object is ours gets the usual retries, not the one-attempt probe meant for a failed PUT:
    a wrong "no" would make the writer take its own commit for an orphan."""
    store: Any = open_store(bottomless.Settings(**s3_settings))
    store.put_if_absent("c/1", b"commit")

    class Unanswered:
        def get_object(self, **request: Any) -> Any:
            raise ConnectionResetError("the probe's one attempt failed")

        def close(self) -> None:
            pass

    store._probe = Unanswered()
    store.put_once("c/1", b"commit")  # ours: confirmed
    with pytest.raises(ObjectExistsError):
        store.put_once("c/1", b"other bytes")
    store.close()

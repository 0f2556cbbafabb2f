"""What the S3 backend does beyond the PageStore contract: its two clients.

Reads and listings go through s3fs; create-only writes through a plain botocore client in the
calling thread (no hand-off to s3fs's event loop on the commit path).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

import bottomless
from bottomless.errors import ObjectExistsError
from bottomless.pagestore import open_store

pytestmark = pytest.mark.s3


def test_create_only_writes_from_many_threads_each_land_once(
    make_settings: Callable[..., bottomless.Settings],
) -> None:
    from concurrent.futures import ThreadPoolExecutor

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
        parents_client = store.client
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                store.put_if_absent("child/key", b"2")
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


@pytest.mark.parametrize(("retries", "survives"), [(2, True), (0, False)])
def test_a_body_cut_short_is_fetched_again(
    seaweed: Any, s3_settings: dict[str, Any], retries: int, survives: bool,
) -> None:
    from faultproxy import FaultProxy

    from bottomless.errors import StoreError

    body = os.urandom(200_000)
    direct = open_store(bottomless.Settings(**s3_settings))
    try:
        direct.put_if_absent("cut/object", body)
    finally:
        direct.close()
    with FaultProxy(seaweed.endpoint, rate=1.0, kinds=("truncate",), match="GET /",
                    budget=1) as proxy:
        store = open_store(bottomless.Settings(
            **{**s3_settings, "endpoint": proxy.endpoint, "max_retries": retries}
        ))
        try:
            if survives:
                assert store.get("cut/object") == body
            else:
                with pytest.raises(StoreError) as raised:
                    store.get("cut/object")
                assert "GET cut/object" in str(raised.value)
                assert proxy.endpoint in str(raised.value)
        finally:
            store.close()
        assert proxy.faults() == {"truncate": 1}


@pytest.mark.parametrize(("retries", "survives"), [(2, True), (0, False)])
def test_a_streamed_body_cut_short_resumes_where_it_stopped(
    seaweed: Any, s3_settings: dict[str, Any], retries: int, survives: bool,
) -> None:
    from faultproxy import FaultProxy

    from bottomless.errors import StoreError

    body = os.urandom(600_000)
    direct = open_store(bottomless.Settings(**s3_settings))
    try:
        direct.put_if_absent("cut/streamed", body)
    finally:
        direct.close()
    with FaultProxy(seaweed.endpoint, rate=1.0, kinds=("truncate",), match="GET /",
                    budget=1) as proxy:
        store = open_store(bottomless.Settings(
            **{**s3_settings, "endpoint": proxy.endpoint, "max_retries": retries}
        ))
        try:
            if survives:
                assert b"".join(store.get_chunks("cut/streamed", 64 * 1024)) == body
                assert [r for r in proxy.seen if r.startswith("GET ")] == [
                    f"GET /{s3_settings['bucket']}/cut/streamed"] * 2  # the second one ranged
            else:
                with pytest.raises(StoreError) as raised:
                    b"".join(store.get_chunks("cut/streamed"))
                assert "GET cut/streamed" in str(raised.value)
        finally:
            store.close()
        assert proxy.faults() == {"truncate": 1}

"""The :class:`~bottomless.backends.base.PageStore` contract, run against every backend.

The ``store`` fixture (``tests/conftest.py``) is parametrized over memory, file and s3 (a real
SeaweedFS), each on a fresh location; every test also works under its own random key prefix and
deletes what it wrote. Where a backend breaks the contract the test says so with
``xfail(strict=True)``, so fixing the backend turns the xfail into a failure to remove it.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
from seaweed import SECRET_KEY

from bottomless import ObjectExistsError, ObjectNotFoundError, PageStore, Settings
from bottomless.backends.base import open_store

#: size of the object the get_range tests slice; odd, so no range lines up with a power of two
RANGE_SIZE = 4096 + 17
MIB = 1024 * 1024


def pattern(size: int, salt: int = 0) -> bytes:
    """``size`` bytes in which every short slice is distinct and NULs occur."""
    return bytes((i * 7 + i // 251 + salt) % 256 for i in range(size))


def xfail_on(request: pytest.FixtureRequest, backend: str, reasons: dict[str, str]) -> None:
    """Mark the running test as a known gap if ``backend`` is one of ``reasons``."""
    if backend in reasons:
        request.applymarker(pytest.mark.xfail(reason=reasons[backend], strict=True))


@pytest.fixture
def prefix(store: PageStore) -> Iterator[str]:
    """A fresh ``<uuid4 hex>/`` prefix; everything under it is deleted afterwards."""
    chosen = f"{uuid.uuid4().hex}/"
    yield chosen
    for key in store.list_keys(chosen):
        store.delete(key)


# ---------------------------------------------------------------- put_if_absent and get

PAYLOADS: dict[str, Callable[[], bytes]] = {
    "binary-with-nuls": lambda: b"\0" + pattern(1000) + b"\0\0\xff\0",
    "only-nuls": lambda: bytes(64),
    "empty": lambda: b"",
    "one-byte": lambda: b"x",
    "5MB": lambda: os.urandom(5 * MIB + 3),
}


@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_put_if_absent_then_get_round_trips(store: PageStore, prefix: str, payload: str) -> None:
    data = PAYLOADS[payload]()
    key = f"{prefix}objects/{payload}"
    store.put_if_absent(key, data)
    got = store.get(key)
    assert type(got) is bytes
    assert len(got) == len(data)
    assert got == data


@pytest.mark.parametrize("second", [b"", b"other", pattern(2000, salt=1)], ids=len)
def test_put_if_absent_on_existing_key_raises_and_keeps_original(
    store: PageStore, prefix: str, second: bytes
) -> None:
    key = f"{prefix}once"
    original = pattern(1000)
    store.put_if_absent(key, original)
    with pytest.raises(ObjectExistsError) as raised:
        store.put_if_absent(key, second)
    assert isinstance(raised.value, FileExistsError)
    assert key in str(raised.value)
    assert store.get(key) == original


def test_put_if_absent_of_identical_content_still_raises(store: PageStore, prefix: str) -> None:
    key = f"{prefix}same"
    store.put_if_absent(key, b"same")
    with pytest.raises(ObjectExistsError):
        store.put_if_absent(key, b"same")


@pytest.mark.parametrize("where", ["unused-prefix", "beside-an-object"])
def test_get_and_get_range_of_missing_key_raise_not_found(
    store: PageStore, prefix: str, where: str
) -> None:
    if where == "beside-an-object":
        store.put_if_absent(f"{prefix}dir/present", b"here")
    key = f"{prefix}dir/missing"
    with pytest.raises(ObjectNotFoundError) as raised:
        store.get(key)
    assert isinstance(raised.value, FileNotFoundError)
    assert key in str(raised.value)
    with pytest.raises(ObjectNotFoundError) as raised:
        store.get_range(key, 0, 10)
    assert isinstance(raised.value, FileNotFoundError)
    assert key in str(raised.value)


def test_a_key_that_is_only_a_prefix_of_other_keys_is_not_found(
    store: PageStore, prefix: str, backend: str, request: pytest.FixtureRequest
) -> None:
    store.put_if_absent(f"{prefix}d/x", b"1")
    key = f"{prefix}d"
    with pytest.raises(ObjectNotFoundError):
        store.get(key)
    with pytest.raises(ObjectNotFoundError):
        store.get_range(key, 0, 1)
    assert not store.exists(key)
    store.delete(key)
    assert store.get(f"{prefix}d/x") == b"1"


# ---------------------------------------------------------------- get_range

RANGES = [
    (0, 1),
    (0, 32),
    (1, 2),
    (100, 1100),
    (0, RANGE_SIZE),
    (RANGE_SIZE - 32, RANGE_SIZE),  # the checksum trailer of an object
    (RANGE_SIZE - 1, RANGE_SIZE),
    (RANGE_SIZE - 10, RANGE_SIZE + 100),  # runs past the end: fewer bytes
    (0, RANGE_SIZE + 1),
    (4000, 10 * RANGE_SIZE),
]


@pytest.mark.parametrize(("start", "end"), RANGES)
def test_get_range_returns_exactly_the_requested_bytes(
    store: PageStore, prefix: str, start: int, end: int
) -> None:
    data = pattern(RANGE_SIZE)
    key = f"{prefix}ranged"
    store.put_if_absent(key, data)
    got = store.get_range(key, start, end)
    assert type(got) is bytes
    assert got == data[start:end]


def test_get_range_of_last_32_bytes_of_a_large_object(store: PageStore, prefix: str) -> None:
    data = os.urandom(5 * MIB + 1)
    key = f"{prefix}large"
    store.put_if_absent(key, data)
    assert store.get_range(key, len(data) - 32, len(data)) == data[-32:]
    assert store.get_range(key, MIB, MIB + 4096) == data[MIB : MIB + 4096]


@pytest.mark.parametrize(
    ("size", "start", "end"),
    [(100, 50, 50), (100, 100, 110), (100, 150, 160), (0, 0, 1)],
    ids=["start-equals-end", "start-at-end", "start-past-end", "empty-object"],
)
def test_get_range_that_selects_nothing_returns_empty_bytes(
    store: PageStore,
    prefix: str,
    backend: str,
    request: pytest.FixtureRequest,
    size: int,
    start: int,
    end: int,
) -> None:
    key = f"{prefix}small"
    store.put_if_absent(key, pattern(size))
    assert store.get_range(key, start, end) == b""


# ---------------------------------------------------------------- list

def put_all(store: PageStore, keys: list[str]) -> None:
    """Write every key, its own name as content, in the order given."""
    for key in keys:
        store.put_if_absent(key, key.encode())


def test_list_returns_every_key_under_prefix_sorted(store: PageStore, prefix: str) -> None:
    inside = [f"{prefix}a/b/{name}" for name in ("9", "10", "A", "_", "x/deep/er", "0")]
    siblings = [f"{prefix}a/bc/1", f"{prefix}a/b2", f"{prefix}a/c"]
    elsewhere = f"{uuid.uuid4().hex}/a/b/1"
    put_all(store, [*inside, *siblings, elsewhere])
    try:
        assert store.list_keys(f"{prefix}a/b/") == sorted(inside)
        # a prefix is a string prefix, not a directory: "a/b" also matches "a/bc/..." and "a/b2"
        wider = [*inside, f"{prefix}a/bc/1", f"{prefix}a/b2"]
        assert store.list_keys(f"{prefix}a/b") == sorted(wider)
        assert store.list_keys(prefix) == sorted([*inside, *siblings])
        assert store.list_keys(f"{prefix}a/b/x/deep/er") == [f"{prefix}a/b/x/deep/er"]
    finally:
        store.delete(elsewhere)


@pytest.mark.parametrize("unknown", ["nothing/", "nothing", "a/b/zz"])
def test_list_of_unknown_prefix_is_empty(store: PageStore, prefix: str, unknown: str) -> None:
    put_all(store, [f"{prefix}a/b/1"])
    assert store.list_keys(f"{prefix}{unknown}") == []
    assert store.list_keys(f"{uuid.uuid4().hex}/") == []


def test_list_children_returns_immediate_children_sorted(store: PageStore, prefix: str) -> None:
    put_all(store, [
        f"{prefix}c/y/z/deep", f"{prefix}c/b", f"{prefix}c/x/2", f"{prefix}c/x/1", f"{prefix}c/a",
        f"{prefix}cc/other",
    ])
    assert store.list_children(f"{prefix}c/") == ["a", "b", "x", "y"]
    assert store.list_children(f"{prefix}c/x/") == ["1", "2"]
    assert store.list_children(f"{prefix}c/y/") == ["z"]
    assert store.list_children(prefix) == ["c", "cc"]


def test_list_children_of_unknown_prefix_is_empty(store: PageStore, prefix: str) -> None:
    put_all(store, [f"{prefix}a/1"])
    assert store.list_children(f"{prefix}nothing/") == []
    assert store.list_children(f"{uuid.uuid4().hex}/") == []


def test_list_children_below_an_object_key_is_empty(
    store: PageStore, prefix: str, backend: str, request: pytest.FixtureRequest
) -> None:
    put_all(store, [f"{prefix}k"])
    assert store.list_children(f"{prefix}k/") == []


def test_list_children_forgets_a_child_once_its_last_key_is_deleted(
    store: PageStore, prefix: str, backend: str, request: pytest.FixtureRequest
) -> None:
    xfail_on(request, backend, {
        "s3": "SeaweedFS keeps an emptied directory and still returns it as a CommonPrefix"
        " (a server quirk; AWS S3 has no directories)",
    })
    put_all(store, [f"{prefix}gone/only", f"{prefix}kept/one"])
    store.delete(f"{prefix}gone/only")
    assert store.list_keys(prefix) == [f"{prefix}kept/one"]
    assert store.list_children(prefix) == ["kept"]


# ---------------------------------------------------------------- delete and exists

def test_delete_removes_the_key_and_nothing_else(store: PageStore, prefix: str) -> None:
    put_all(store, [f"{prefix}doomed", f"{prefix}doomed-not", f"{prefix}doomed2/x"])
    store.delete(f"{prefix}doomed")
    with pytest.raises(ObjectNotFoundError):
        store.get(f"{prefix}doomed")
    assert not store.exists(f"{prefix}doomed")
    assert store.list_keys(prefix) == [f"{prefix}doomed-not", f"{prefix}doomed2/x"]
    # the key is free again
    store.put_if_absent(f"{prefix}doomed", b"reborn")
    assert store.get(f"{prefix}doomed") == b"reborn"


def test_deleting_a_missing_key_is_not_an_error(store: PageStore, prefix: str) -> None:
    store.delete(f"{prefix}never-written")
    store.delete(f"{uuid.uuid4().hex}/never/written")
    put_all(store, [f"{prefix}twice"])
    store.delete(f"{prefix}twice")
    store.delete(f"{prefix}twice")
    assert store.list_keys(prefix) == []


def test_exists(store: PageStore, prefix: str) -> None:
    key = f"{prefix}here"
    assert not store.exists(key)
    store.put_if_absent(key, b"\0")
    assert store.exists(key)
    assert not store.exists(f"{prefix}her")
    assert not store.exists(f"{prefix}here2")
    store.delete(key)
    assert not store.exists(key)


def test_exists_for_an_empty_object(
    store: PageStore, prefix: str, backend: str, request: pytest.FixtureRequest
) -> None:
    key = f"{prefix}empty"
    store.put_if_absent(key, b"")
    assert store.exists(key)


# ---------------------------------------------------------------- concurrency

@pytest.mark.parametrize("round_", range(3))
def test_concurrent_put_if_absent_has_exactly_one_winner(
    store: PageStore, prefix: str, round_: int
) -> None:
    writers = 8
    key = f"{prefix}contended"
    payloads = [pattern(256 * 1024, salt=i) + f"writer {i}".encode() for i in range(writers)]
    start = threading.Barrier(writers)
    lock = threading.Lock()
    winners: list[int] = []
    losers: list[int] = []
    failures: list[BaseException] = []

    def write(i: int) -> None:
        start.wait(timeout=30)
        try:
            store.put_if_absent(key, payloads[i])
        except ObjectExistsError:
            with lock:
                losers.append(i)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            with lock:
                failures.append(e)
        else:
            with lock:
                winners.append(i)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert len(winners) == 1, f"winners: {winners}"
    assert sorted(winners + losers) == list(range(writers))
    assert store.get(key) == payloads[winners[0]]


# ---------------------------------------------------------------- secrets

def test_repr_and_location_never_contain_the_secret(
    store: PageStore,
    prefix: str,
    backend: str,
    make_settings: Callable[..., Settings],
) -> None:
    with_secret = open_store(make_settings(backend, secret_access_key=SECRET_KEY))
    try:
        for opened in (store, with_secret):
            assert opened.location
            assert opened.location in repr(opened)
            assert SECRET_KEY not in opened.location
            assert SECRET_KEY not in repr(opened)
            assert SECRET_KEY not in str(opened)
            with pytest.raises(ObjectNotFoundError) as raised:
                opened.get(f"{prefix}missing")
            assert SECRET_KEY not in str(raised.value)
    finally:
        with_secret.close()


# ---------------------------------------------------------------- streamed reads

@pytest.mark.parametrize("size", [0, 1, 1000, 300_000])
def test_get_chunks_yields_the_object_in_bounded_pieces(
    store: PageStore, prefix: str, size: int
) -> None:
    data = pattern(size, salt=5)
    store.put_if_absent(f"{prefix}streamed", data)
    chunks = list(store.get_chunks(f"{prefix}streamed", chunk_size=64 * 1024))
    assert b"".join(chunks) == data
    assert all(len(c) <= 64 * 1024 for c in chunks)


def test_get_chunks_of_a_missing_key_raises_not_found(store: PageStore, prefix: str) -> None:
    with pytest.raises(ObjectNotFoundError):
        list(store.get_chunks(f"{prefix}missing"))

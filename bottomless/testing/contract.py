"""The :class:`~bottomless.PageStore` contract as a pytest mixin, for any backend.

Every built-in backend passes it, and so must a third-party one: subclass
:class:`PageStoreContract` in a test module (the class name must start with ``Test``) and give
it a ``store`` fixture that yields a store; pytest collects every contract test for it::

    import pytest
    from bottomless.testing.contract import PageStoreContract
    from my_backend import MyPageStore

    class TestMyPageStore(PageStoreContract):
        @pytest.fixture
        def store(self):
            store = MyPageStore(...)
            yield store
            store.close()

Each test works under its own random prefix (``<uuid4 hex>/``) and deletes what it wrote, so
the store may be shared with other tests, though not with writers of its own. A backend that
knows it breaks a rule lists the test in :attr:`PageStoreContract.known_gaps`; the test then
runs as ``xfail(strict=True)``, so a fix turns it into a failure that asks to remove the entry.

This module needs pytest, which bottomless does not depend on: import it only from tests.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

try:
    import pytest
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("bottomless.testing.contract needs pytest: pip install pytest") from e

from bottomless.backends.base import PageStore
from bottomless.errors import (
    ObjectChangedError,
    ObjectExistsError,
    ObjectNotFoundError,
    StoreError,
)

__all__ = ["PageStoreContract"]

#: size of the object the get_range tests slice; odd, so no range lines up with a power of two
RANGE_SIZE = 4096 + 17
MIB = 1024 * 1024


def _pattern(size: int, salt: int = 0) -> bytes:
    """``size`` bytes in which every short slice is distinct and NULs occur."""
    return bytes((i * 7 + i // 251 + salt) % 256 for i in range(size))


def _put_all(store: PageStore, keys: list[str]) -> None:
    """Write every key, its own name as content, in the order given."""
    for key in keys:
        store.put_if_absent(key, key.encode())


PAYLOADS: dict[str, Callable[[], bytes]] = {
    "binary-with-nuls": lambda: b"\0" + _pattern(1000) + b"\0\0\xff\0",
    "only-nuls": lambda: bytes(64),
    "empty": lambda: b"",
    "one-byte": lambda: b"x",
    "5MB": lambda: os.urandom(5 * MIB + 3),
}

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


class PageStoreContract:
    """Mixin of every rule a :class:`~bottomless.PageStore` must keep, as pytest tests.

    Subclasses provide the ``store`` fixture, and may override :attr:`known_gaps` and the
    ``store_secrets`` fixture.
    """

    #: contract tests this backend is known to fail, by test function name, with the reason;
    #: each runs as ``xfail(strict=True)``. A name that is no contract test is a TypeError.
    known_gaps: ClassVar[Mapping[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        unknown = [name for name in cls.known_gaps if not name.startswith("test_")
                   or not callable(getattr(cls, name, None))]
        if unknown:
            raise TypeError(f"{cls.__name__}.known_gaps names no contract test: {unknown}")

    @pytest.fixture
    def store(self) -> Iterator[PageStore]:
        """The store under test; subclasses must override this fixture."""
        raise NotImplementedError(
            f"{type(self).__name__} must define a `store` fixture yielding a PageStore"
        )
        yield  # pragma: no cover - makes this a generator, as overrides usually are

    @pytest.fixture
    def store_secrets(self) -> Sequence[str]:
        """Credentials the store was built with; none may appear in what it shows."""
        return ()

    @pytest.fixture
    def prefix(self, store: PageStore) -> Iterator[str]:
        """A fresh ``<uuid4 hex>/`` prefix; everything under it is deleted afterwards."""
        chosen = f"{uuid.uuid4().hex}/"
        yield chosen
        for key in store.list_keys(chosen):
            store.delete(key)

    @pytest.fixture(autouse=True)
    def _known_gap(self, request: pytest.FixtureRequest) -> None:
        name = getattr(request.node, "originalname", request.node.name)
        reason = self.known_gaps.get(name)
        if reason is not None:
            request.applymarker(pytest.mark.xfail(reason=reason, strict=True))

    # ------------------------------------------------------------ put_if_absent and get

    @pytest.mark.parametrize("payload", list(PAYLOADS))
    def test_put_if_absent_then_get_round_trips(
        self, store: PageStore, prefix: str, payload: str
    ) -> None:
        data = PAYLOADS[payload]()
        key = f"{prefix}objects/{payload}"
        store.put_if_absent(key, data)
        got = store.get(key)
        assert type(got) is bytes
        assert len(got) == len(data)
        assert got == data

    @pytest.mark.parametrize("second", [b"", b"other", _pattern(2000, salt=1)], ids=len)
    def test_put_if_absent_on_existing_key_raises_and_keeps_original(
        self, store: PageStore, prefix: str, second: bytes
    ) -> None:
        key = f"{prefix}once"
        original = _pattern(1000)
        store.put_if_absent(key, original)
        with pytest.raises(ObjectExistsError) as raised:
            store.put_if_absent(key, second)
        assert isinstance(raised.value, FileExistsError)
        assert key in str(raised.value)
        assert store.get(key) == original

    def test_put_if_absent_of_identical_content_still_raises(
        self, store: PageStore, prefix: str
    ) -> None:
        key = f"{prefix}same"
        store.put_if_absent(key, b"same")
        with pytest.raises(ObjectExistsError):
            store.put_if_absent(key, b"same")

    def test_put_once_accepts_its_own_earlier_write_only(
        self, store: PageStore, prefix: str
    ) -> None:
        key = f"{prefix}idempotent"
        store.put_once(key, b"body")
        store.put_once(key, b"body")  # a retry that finds its own write: success
        with pytest.raises(ObjectExistsError):
            store.put_once(key, b"other body")
        assert store.get(key) == b"body"

    @pytest.mark.parametrize("where", ["unused-prefix", "beside-an-object"])
    def test_get_and_get_range_of_missing_key_raise_not_found(
        self, store: PageStore, prefix: str, where: str
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
        self, store: PageStore, prefix: str
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

    # ------------------------------------------------------------ get_range

    @pytest.mark.parametrize(("start", "end"), RANGES)
    def test_get_range_returns_exactly_the_requested_bytes(
        self, store: PageStore, prefix: str, start: int, end: int
    ) -> None:
        data = _pattern(RANGE_SIZE)
        key = f"{prefix}ranged"
        store.put_if_absent(key, data)
        got = store.get_range(key, start, end)
        assert type(got) is bytes
        assert got == data[start:end]

    def test_get_range_of_last_32_bytes_of_a_large_object(
        self, store: PageStore, prefix: str
    ) -> None:
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
        self, store: PageStore, prefix: str, size: int, start: int, end: int
    ) -> None:
        key = f"{prefix}small"
        store.put_if_absent(key, _pattern(size))
        assert store.get_range(key, start, end) == b""

    # ------------------------------------------------------------ list

    def test_list_returns_every_key_under_prefix_sorted(
        self, store: PageStore, prefix: str
    ) -> None:
        inside = [f"{prefix}a/b/{name}" for name in ("9", "10", "A", "_", "x/deep/er", "0")]
        siblings = [f"{prefix}a/bc/1", f"{prefix}a/b2", f"{prefix}a/c"]
        elsewhere = f"{uuid.uuid4().hex}/a/b/1"
        _put_all(store, [*inside, *siblings, elsewhere])
        try:
            assert store.list_keys(f"{prefix}a/b/") == sorted(inside)
            # a prefix is a string prefix, not a directory: "a/b" also matches "a/bc/..."
            wider = [*inside, f"{prefix}a/bc/1", f"{prefix}a/b2"]
            assert store.list_keys(f"{prefix}a/b") == sorted(wider)
            assert store.list_keys(prefix) == sorted([*inside, *siblings])
            assert store.list_keys(f"{prefix}a/b/x/deep/er") == [f"{prefix}a/b/x/deep/er"]
        finally:
            store.delete(elsewhere)

    @pytest.mark.parametrize("unknown", ["nothing/", "nothing", "a/b/zz"])
    def test_list_of_unknown_prefix_is_empty(
        self, store: PageStore, prefix: str, unknown: str
    ) -> None:
        _put_all(store, [f"{prefix}a/b/1"])
        assert store.list_keys(f"{prefix}{unknown}") == []
        assert store.list_keys(f"{uuid.uuid4().hex}/") == []

    def test_list_children_returns_immediate_children_sorted(
        self, store: PageStore, prefix: str
    ) -> None:
        _put_all(store, [
            f"{prefix}c/y/z/deep", f"{prefix}c/b", f"{prefix}c/x/2", f"{prefix}c/x/1",
            f"{prefix}c/a", f"{prefix}cc/other",
        ])
        assert store.list_children(f"{prefix}c/") == ["a", "b", "x", "y"]
        assert store.list_children(f"{prefix}c/x/") == ["1", "2"]
        assert store.list_children(f"{prefix}c/y/") == ["z"]
        assert store.list_children(prefix) == ["c", "cc"]

    def test_list_children_of_unknown_prefix_is_empty(
        self, store: PageStore, prefix: str
    ) -> None:
        _put_all(store, [f"{prefix}a/1"])
        assert store.list_children(f"{prefix}nothing/") == []
        assert store.list_children(f"{uuid.uuid4().hex}/") == []

    def test_list_children_below_an_object_key_is_empty(
        self, store: PageStore, prefix: str
    ) -> None:
        _put_all(store, [f"{prefix}k"])
        assert store.list_children(f"{prefix}k/") == []

    def test_list_children_forgets_a_child_once_its_last_key_is_deleted(
        self, store: PageStore, prefix: str
    ) -> None:
        _put_all(store, [f"{prefix}gone/only", f"{prefix}kept/one"])
        store.delete(f"{prefix}gone/only")
        assert store.list_keys(prefix) == [f"{prefix}kept/one"]
        assert store.list_children(prefix) == ["kept"]

    # ------------------------------------------------------------ delete and exists

    def test_delete_removes_the_key_and_nothing_else(
        self, store: PageStore, prefix: str
    ) -> None:
        _put_all(store, [f"{prefix}doomed", f"{prefix}doomed-not", f"{prefix}doomed2/x"])
        store.delete(f"{prefix}doomed")
        with pytest.raises(ObjectNotFoundError):
            store.get(f"{prefix}doomed")
        assert not store.exists(f"{prefix}doomed")
        assert store.list_keys(prefix) == [f"{prefix}doomed-not", f"{prefix}doomed2/x"]
        # the key is free again
        store.put_if_absent(f"{prefix}doomed", b"reborn")
        assert store.get(f"{prefix}doomed") == b"reborn"

    def test_deleting_a_missing_key_is_not_an_error(
        self, store: PageStore, prefix: str
    ) -> None:
        store.delete(f"{prefix}never-written")
        store.delete(f"{uuid.uuid4().hex}/never/written")
        _put_all(store, [f"{prefix}twice"])
        store.delete(f"{prefix}twice")
        store.delete(f"{prefix}twice")
        assert store.list_keys(prefix) == []

    def test_exists(self, store: PageStore, prefix: str) -> None:
        key = f"{prefix}here"
        assert not store.exists(key)
        store.put_if_absent(key, b"\0")
        assert store.exists(key)
        assert not store.exists(f"{prefix}her")
        assert not store.exists(f"{prefix}here2")
        store.delete(key)
        assert not store.exists(key)

    def test_exists_for_an_empty_object(self, store: PageStore, prefix: str) -> None:
        key = f"{prefix}empty"
        store.put_if_absent(key, b"")
        assert store.exists(key)

    # ------------------------------------------------------------ concurrency

    @pytest.mark.parametrize("round_", range(3))
    def test_concurrent_put_if_absent_has_exactly_one_winner(
        self, store: PageStore, prefix: str, round_: int
    ) -> None:
        writers = 8
        key = f"{prefix}contended"
        payloads = [_pattern(256 * 1024, salt=i) + f"writer {i}".encode() for i in range(writers)]
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

    # ------------------------------------------------------------ conditional replace

    def test_put_if_match_replaces_only_the_expected_version(
        self, store: PageStore, prefix: str
    ) -> None:
        key = f"{prefix}lease"
        store.put_if_absent(key, b"one")
        data, first = store.get_versioned(key)
        assert data == b"one"
        assert isinstance(first, str)
        second = store.put_if_match(key, b"two", first)
        assert second != first
        assert store.get_versioned(key) == (b"two", second)
        # a stale version must be refused by the store itself (If-Match reaches the server)
        with pytest.raises(ObjectChangedError) as raised:
            store.put_if_match(key, b"three", first)
        assert isinstance(raised.value, StoreError)
        assert store.get(key) == b"two"

    def test_put_if_match_on_a_missing_key_is_refused(
        self, store: PageStore, prefix: str
    ) -> None:
        key = f"{prefix}gone"
        with pytest.raises(ObjectNotFoundError):
            store.get_versioned(key)
        with pytest.raises(ObjectChangedError):
            store.put_if_match(key, b"x", "no-such-version")
        assert not store.exists(key)

    def test_concurrent_put_if_match_has_one_winner(self, store: PageStore, prefix: str) -> None:
        key = f"{prefix}race"
        store.put_if_absent(key, b"start")
        _, version = store.get_versioned(key)
        lock = threading.Lock()
        wins: list[bytes] = []
        losses: list[Exception] = []

        def attempt(body: bytes) -> None:
            try:
                store.put_if_match(key, body, version)
            except ObjectChangedError as e:
                with lock:
                    losses.append(e)
            else:
                with lock:
                    wins.append(body)

        threads = [threading.Thread(target=attempt, args=(f"w{i}".encode(),)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert len(wins) == 1 and len(losses) == 5
        assert store.get(key) == wins[0]

    # ------------------------------------------------------------ what a store shows

    def test_location_and_repr_never_contain_a_secret(
        self, store: PageStore, prefix: str, store_secrets: Sequence[str]
    ) -> None:
        assert store.location
        assert store.location in repr(store)
        with pytest.raises(ObjectNotFoundError) as raised:
            store.get(f"{prefix}missing")
        for secret in store_secrets:
            assert secret not in store.location
            assert secret not in repr(store)
            assert secret not in str(store)
            assert secret not in str(raised.value)

    # ------------------------------------------------------------ streamed reads

    @pytest.mark.parametrize("size", [0, 1, 1000, 300_000])
    def test_get_chunks_yields_the_object_in_bounded_pieces(
        self, store: PageStore, prefix: str, size: int
    ) -> None:
        data = _pattern(size, salt=5)
        store.put_if_absent(f"{prefix}streamed", data)
        chunks = list(store.get_chunks(f"{prefix}streamed", chunk_size=64 * 1024))
        assert b"".join(chunks) == data
        assert all(len(c) <= 64 * 1024 for c in chunks)

    def test_get_chunks_of_a_missing_key_raises_not_found(
        self, store: PageStore, prefix: str
    ) -> None:
        with pytest.raises(ObjectNotFoundError):
            list(store.get_chunks(f"{prefix}missing"))

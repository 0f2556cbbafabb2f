"""Contract: conditional replace (If-Match) on every backend, the primitive behind the lease."""

from __future__ import annotations

import threading
import uuid

import pytest

from bottomless.backends.base import PageStore
from bottomless.errors import ObjectChangedError, ObjectNotFoundError


def test_put_if_match_replaces_only_the_expected_version(store: PageStore) -> None:
    key = f"{uuid.uuid4().hex}/lease"
    store.put_if_absent(key, b"one")
    data, first = store.get_versioned(key)
    assert data == b"one"
    second = store.put_if_match(key, b"two", first)
    assert second != first
    assert store.get_versioned(key) == (b"two", second)
    # a stale version must be refused by the store itself (If-Match reaches the server)
    with pytest.raises(ObjectChangedError):
        store.put_if_match(key, b"three", first)
    assert store.get(key) == b"two"


def test_put_if_match_on_a_missing_key_is_refused(store: PageStore) -> None:
    key = f"{uuid.uuid4().hex}/gone"
    with pytest.raises(ObjectNotFoundError):
        store.get_versioned(key)
    with pytest.raises(ObjectChangedError):
        store.put_if_match(key, b"x", "no-such-version")


def test_concurrent_put_if_match_has_one_winner(store: PageStore) -> None:
    key = f"{uuid.uuid4().hex}/race"
    store.put_if_absent(key, b"start")
    _, version = store.get_versioned(key)
    wins: list[bytes] = []
    losses: list[Exception] = []

    def attempt(body: bytes) -> None:
        try:
            store.put_if_match(key, body, version)
            wins.append(body)
        except ObjectChangedError as e:
            losses.append(e)

    threads = [threading.Thread(target=attempt, args=(f"w{i}".encode(),)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1 and len(losses) == 5
    assert store.get(key) == wins[0]

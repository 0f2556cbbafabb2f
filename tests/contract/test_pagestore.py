"""The :class:`~bottomless.PageStore` contract (:mod:`bottomless.testing.contract`) on every
built-in backend: memory, file, and s3 against a real SeaweedFS, each on a fresh location.

Known gaps are listed in ``known_gaps`` and run as ``xfail(strict=True)``, so fixing the backend
turns the xfail into a failure that asks to remove the entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import ClassVar

import pytest

from bottomless import PageStore, Settings
from bottomless.backends.registry import open_store
from bottomless.testing.contract import PageStoreContract
from bottomless.testing.seaweed import SECRET_KEY

MakeSettings = Callable[..., Settings]


def _opened(settings: Settings) -> Iterator[PageStore]:
    store = open_store(settings)
    try:
        yield store
    finally:
        store.close()


class TestMemoryPageStore(PageStoreContract):
    @pytest.fixture
    def store(self, make_settings: MakeSettings) -> Iterator[PageStore]:
        yield from _opened(make_settings("memory"))


class TestFilePageStore(PageStoreContract):
    @pytest.fixture
    def store(self, make_settings: MakeSettings) -> Iterator[PageStore]:
        yield from _opened(make_settings("file"))


@pytest.mark.s3
class TestS3PageStore(PageStoreContract):
    known_gaps: ClassVar[Mapping[str, str]] = {
        "test_list_children_forgets_a_child_once_its_last_key_is_deleted":
            "SeaweedFS keeps an emptied directory and still returns it as a CommonPrefix"
            " (a server quirk; AWS S3 has no directories)",
    }

    @pytest.fixture
    def store(self, make_settings: MakeSettings) -> Iterator[PageStore]:
        settings = make_settings("s3")
        assert settings.secret_access_key is not None
        assert settings.secret_access_key.get_secret_value() == SECRET_KEY
        yield from _opened(settings)

    @pytest.fixture
    def store_secrets(self) -> Sequence[str]:
        return (SECRET_KEY,)

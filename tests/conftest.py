"""Shared fixtures: one real SeaweedFS per session, a fresh bucket/directory per test."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import bottomless
from bottomless.sqlite.vfs import registration
from bottomless.testing.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedServer, start_seaweed

BACKENDS = ["memory", "file", "s3"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test sees the developer's own LIBSQL_BOTTOMLESS_* or AWS settings, nor the VFS
    defaults an earlier test gave ``bottomless.register``."""
    for name in list(os.environ):
        if name.startswith(("LIBSQL_BOTTOMLESS_", "AWS_")):
            monkeypatch.delenv(name)
    yield
    registered = registration.current
    if registered is not None:
        registered.settings = None


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedServer]:
    """A real SeaweedFS S3 server for the whole session."""
    server = start_seaweed()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_settings(seaweed: SeaweedServer) -> Iterator[dict[str, Any]]:
    """Settings values for a fresh bucket on the test server."""
    bucket = seaweed.new_bucket()
    yield {
        "backend": "s3",
        "endpoint": seaweed.endpoint,
        "bucket": bucket,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        "region": "us-east-1",
        "timeout": 10,
        "max_retries": 2,
    }
    seaweed.drop_bucket(bucket)


@pytest.fixture
def make_settings(
    request: pytest.FixtureRequest, tmp_path: Any
) -> Callable[..., bottomless.Settings]:
    """Factory: ``make_settings(backend, **overrides)`` for a fresh, empty replica location."""

    def build(backend: str, **overrides: Any) -> bottomless.Settings:
        if backend == "s3":
            values = dict(request.getfixturevalue("s3_settings"))
        elif backend == "file":
            values = {"backend": "file", "bucket": str(tmp_path / f"replicas-{uuid.uuid4().hex}")}
        else:
            values = {"backend": "memory", "bucket": f"ns-{uuid.uuid4().hex}"}
        values.update(overrides)
        return bottomless.Settings(**values)

    return build


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend in turn."""
    name: str = request.param
    if name == "s3":
        request.node.add_marker(pytest.mark.s3)
    return name


# SQLAlchemy's compliance suite has its own config and plugin; tests/test_sqlalchemy_suite.py
# runs it in subprocesses.
collect_ignore = ["sqla_suite"]

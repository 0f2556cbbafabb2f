"""Load SQLAlchemy's test plugin, the way SQLAlchemy's README.dialects.rst describes."""

from __future__ import annotations

import os

import pytest
from sqlalchemy.dialects import registry

# The installed entry point registers it too; this keeps the suite runnable from a checkout.
registry.register("sqlite.bottomless", "bottomless.sqlalchemy", "BottomlessDialect")

# SQLite's provisioning (ATTACH of "test_schema", per-driver file names) is keyed on the
# backend name "sqlite", but SQLAlchemy imports it from the dialect's own package; load it here.
import sqlalchemy.dialects.sqlite.provision  # noqa: E402, F401

# The provisioning ATTACHes "<driver>_test_schema.db" by plain file name. On a bottomless
# connection the attached file goes through the bottomless VFS too, which replicates it with
# the process-wide settings (environment), not the engine's URL settings: point those at the
# same local directory as the [db] URL, so the suite needs no S3 server.
os.environ.setdefault("LIBSQL_BOTTOMLESS_BACKEND", "file")
os.environ.setdefault("LIBSQL_BOTTOMLESS_BUCKET", "replicas")

pytest.register_assert_rewrite("sqlalchemy.testing.assertions")

from sqlalchemy.testing.plugin.pytestplugin import *  # noqa: E402, F403

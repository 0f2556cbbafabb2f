"""SQLAlchemy's dialect compliance suite; every test runs against the configured --db."""

from sqlalchemy.testing.suite import *  # noqa: F403

"""Settings for Django's own test suite (its ``runtests.py --settings=suite_settings``).

``BOTTOMLESS_DJANGO_SUITE_ENGINE`` picks the backend: ``bottomless`` (``bottomless.django``,
replicating to the directory ``replicas/`` with the file backend) or ``stock``
(``django.db.backends.sqlite3``). Either way both databases and their test databases are files
in ``BOTTOMLESS_DJANGO_SUITE_DIR``, so the two runs differ only in the backend.
"""

from __future__ import annotations

import os
from typing import Any

WORK_DIR = os.environ["BOTTOMLESS_DJANGO_SUITE_DIR"]
ENGINE = os.environ.get("BOTTOMLESS_DJANGO_SUITE_ENGINE", "bottomless")


def _database(alias: str) -> dict[str, Any]:
    database: dict[str, Any] = {
        "NAME": os.path.join(WORK_DIR, f"{alias}.sqlite3"),
        "TEST": {"NAME": os.path.join(WORK_DIR, f"test_{alias}.sqlite3")},
    }
    if ENGINE == "stock":
        database["ENGINE"] = "django.db.backends.sqlite3"
    else:
        database["ENGINE"] = "bottomless.django"
        database["OPTIONS"] = {"backend": "file", "bucket": os.path.join(WORK_DIR, "replicas")}
    return database


DATABASES = {"default": _database("default"), "other": _database("other")}

SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False
TEST_RUNNER = "suite_runner.RecordingRunner"

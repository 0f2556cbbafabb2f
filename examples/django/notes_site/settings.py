"""Settings of the notes example: one app, its database replicated by bottomless.

With no ``LIBSQL_BOTTOMLESS_*`` variable set, replicas go to the directory ``replicas/`` beside
this project; set ``LIBSQL_BOTTOMLESS_BACKEND=s3`` (and ``_BUCKET``, ``_ENDPOINT``, AWS
credentials) to use a bucket. ``NOTES_DB`` moves the database file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-key-for-the-example-only")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]

INSTALLED_APPS = ["notes"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "notes_site.urls"
WSGI_APPLICATION = "notes_site.wsgi.application"

if any(name.startswith("LIBSQL_BOTTOMLESS_") for name in os.environ):
    REPLICAS: dict[str, Any] = {}  # the environment says where
else:
    REPLICAS = {"backend": "file", "bucket": str(BASE_DIR / "replicas")}

DATABASE_FILE = Path(os.environ.get("NOTES_DB", BASE_DIR / "notes.sqlite3"))

DATABASES = {
    "default": {
        "ENGINE": "bottomless.django",
        "NAME": str(DATABASE_FILE),
        "OPTIONS": {
            **REPLICAS,
            # several workers: take the write lock at BEGIN, wait up to 20 s for it
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL",
        },
        # `manage.py test` uses (and replicates) a file too, not an in-memory database
        "TEST": {"NAME": str(DATABASE_FILE.with_name("test_" + DATABASE_FILE.name))},
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

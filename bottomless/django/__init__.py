"""A Django database backend: ``"ENGINE": "bottomless.django"``.

Django's SQLite backend over :mod:`bottomless.dbapi`: every commit of the database file is in
the bucket before it returns, and a missing file is restored from the bucket when the first
connection opens. ``OPTIONS`` take the :class:`bottomless.Settings` fields beside Django's own
SQLite options (see :mod:`bottomless.django.options`)::

    DATABASES = {
        "default": {
            "ENGINE": "bottomless.django",
            "NAME": BASE_DIR / "db.sqlite3",
            "OPTIONS": {"backend": "s3", "bucket": "my-app", "transaction_mode": "IMMEDIATE"},
        }
    }
"""

"""``manage.py dbshell``: the SQLite shell through bottomless, so its commits replicate.

Django's SQLite backend starts the ``sqlite3`` program on the file; a commit made there would
not be replicated, and the next open would find the file and its replica disagreeing. This
client runs ``python -m bottomless shell`` instead, with the database's settings passed in
``LIBSQL_BOTTOMLESS_*`` environment variables.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from django.db.backends.sqlite3 import client as sqlite_client
from pydantic import SecretStr

from bottomless.django.options import settings_from_options
from bottomless.settings import Settings, env_var


def settings_environment(settings: Settings) -> dict[str, str]:
    """The ``LIBSQL_BOTTOMLESS_*`` variables that reproduce ``settings`` in a child process."""
    env: dict[str, str] = {}
    for field in Settings.model_fields:
        value = getattr(settings, field)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[env_var(field)] = str(value)
    return env


class DatabaseClient(sqlite_client.DatabaseClient):  # type: ignore[misc]
    """Runs ``python -m bottomless shell NAME`` (apsw's shell, replicated) instead of
    ``sqlite3 NAME``; everything else is Django's SQLite client."""

    executable_name = "python -m bottomless shell"

    @classmethod
    def settings_to_cmd_args_env(
        cls, settings_dict: Mapping[str, Any], parameters: Sequence[str]
    ) -> tuple[list[str], dict[str, str]]:
        """The command line and the environment of the shell."""
        settings = settings_from_options(settings_dict["OPTIONS"], "dbshell")
        name = os.fspath(settings_dict["NAME"])
        args = [sys.executable, "-m", "bottomless", "shell", name]
        if parameters:  # the sqlite3 shell's options and commands, as Django hands them on
            args += ["--", *parameters]
        return args, settings_environment(settings)

"""The ``OPTIONS`` of a ``bottomless.django`` database: which are bottomless settings.

``OPTIONS`` holds two kinds of entries side by side:

- every :class:`bottomless.Settings` field (``backend``, ``bucket``, ``endpoint``,
  ``durability``, ...), except that the store's request timeout is called ``store_timeout``
  because ``timeout`` keeps the meaning it has in Django's SQLite backend (how long SQLite
  waits for a lock);
- ``settings``: a ready :class:`bottomless.Settings`, which the single fields above override;
- everything Django's SQLite backend accepts: the arguments of ``connect`` (``timeout``,
  ``check_same_thread``, ``cached_statements``, ...), ``init_command`` and
  ``transaction_mode``.

Fields given neither way come from the ``LIBSQL_BOTTOMLESS_*`` environment variables, then the
defaults, exactly as for :func:`bottomless.connect`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from bottomless import dbapi
from bottomless.errors import ConfigError, ConfigProblem
from bottomless.format import default_db_name
from bottomless.settings import SECRET_FIELDS, Settings, check_environment, env_var

SETTINGS_OPTION = "settings"
#: option name -> Settings field it sets
FIELD_OF_OPTION: dict[str, str] = {
    **{field: field for field in Settings.model_fields if field != "timeout"},
    "store_timeout": "timeout",
}
OPTION_OF_FIELD: dict[str, str] = {field: option for option, field in FIELD_OF_OPTION.items()}
#: options Django's SQLite backend consumes itself instead of passing them to ``connect``
DJANGO_OPTIONS = frozenset({"init_command", "transaction_mode"})


def connect_options() -> frozenset[str]:
    """The keyword arguments of :func:`bottomless.dbapi.connect` an OPTION may set."""
    parameters = inspect.signature(dbapi.connect).parameters
    return frozenset(parameters) - {"database", SETTINGS_OPTION}


def is_bottomless_option(name: str) -> bool:
    """True for ``settings`` and the options that set a :class:`bottomless.Settings` field."""
    return name == SETTINGS_OPTION or name in FIELD_OF_OPTION


def _where(alias: str, option: str) -> str:
    return f"settings.DATABASES[{alias!r}]['OPTIONS'][{option!r}]"


def check_options(options: Mapping[str, Any], alias: str) -> None:
    """Raise ConfigError naming every OPTION that neither bottomless nor SQLite knows."""
    known_sqlite = connect_options() | DJANGO_OPTIONS
    unknown = sorted(
        name for name in options if not is_bottomless_option(name) and name not in known_sqlite
    )
    if unknown:
        raise ConfigError(
            f"settings.DATABASES[{alias!r}]['OPTIONS'] has unknown option(s)"
            f" {', '.join(map(repr, unknown))}; bottomless options: {SETTINGS_OPTION},"
            f" {', '.join(FIELD_OF_OPTION)}; SQLite options: {', '.join(sorted(known_sqlite))}"
        )


def settings_from_options(
    options: Mapping[str, Any], alias: str, *, db_name: str | None = None
) -> Settings:
    """Build the :class:`bottomless.Settings` of a database from its ``OPTIONS``.

    Single options override the ``settings`` option, which replaces the environment; with no
    ``settings`` option the environment fills in what the options leave. ``db_name``, when
    given, overrides everything (test databases use it). Raises ConfigError naming every bad
    option (or environment variable), the value given (never a secret) and what is allowed.
    """
    base = options.get(SETTINGS_OPTION)
    if base is not None and not isinstance(base, Settings):
        raise ConfigError(
            f"{_where(alias, SETTINGS_OPTION)} must be a bottomless.Settings, not"
            f" {type(base).__name__}"
        )
    values = {FIELD_OF_OPTION[name]: value for name, value in options.items()
              if name in FIELD_OF_OPTION}
    if db_name is not None:
        values["db_name"] = db_name
    check_environment()  # before anything is merged, so the message names the variable
    if base is not None and not values:
        return base
    try:
        if base is None:
            return Settings(**values)
        merged = {field: getattr(base, field) for field in Settings.model_fields}
        merged.update(values)
        return Settings(**merged)
    except ConfigError as e:
        problems = "; ".join(
            _describe(problem, alias, given=values, from_object=base is not None)
            for problem in e.problems
        )
        raise ConfigError(f"invalid bottomless option(s): {problems}",
                          problems=e.problems) from None


def _describe(problem: ConfigProblem, alias: str, *, given: Mapping[str, Any],
              from_object: bool) -> str:
    field, message = problem.field, problem.reason
    if field in given:
        where = _where(alias, OPTION_OF_FIELD.get(field, field))
    elif from_object:
        where = _where(alias, SETTINGS_OPTION) + f".{field}"
    else:
        where = f"environment variable {env_var(field)}"
    shown = "" if field in SECRET_FIELDS else f" (got {problem.value!r})"
    return f"{where}: {message}{shown}"


def replica_name(settings: Settings, database: str) -> str:
    """The ``db_name`` a database file replicates under: the setting, else its base name."""
    return settings.db_name or default_db_name(database)

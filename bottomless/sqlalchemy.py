"""SQLAlchemy dialect ``sqlite+bottomless``: SQLAlchemy's pysqlite dialect over bottomless.dbapi.

Change the URL and an SQLAlchemy application replicates every commit::

    engine = create_engine("sqlite+bottomless:///app.db?backend=s3&bucket=my-bucket")

URL query parameters that name a :class:`bottomless.Settings` field (``backend``, ``bucket``,
``endpoint``, ``durability``, ...; not ``timeout``, which stays SQLite's busy timeout as in any
pysqlite URL) become the connection's settings; they override a
``Settings`` passed as ``connect_args={"settings": ...}``, which overrides the
``LIBSQL_BOTTOMLESS_*`` environment. Every other query parameter means what it means to the
pysqlite dialect (``timeout``, ``uri``, ``check_same_thread``, SQLite URI parameters with
``uri=true``). Everything else (pool selection, isolation levels, the ``regexp`` function,
the savepoint recipe, type handling) is SQLAlchemy's pysqlite dialect unchanged, because
:mod:`bottomless.dbapi` behaves like ``sqlite3``.

An invalid settings parameter raises :class:`bottomless.ConfigError` naming it, already in
``create_engine``. ``sqlite+bottomless://`` and ``sqlite+bottomless:///:memory:`` are plain,
unreplicated in-memory databases.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

try:
    from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
    from sqlalchemy.engine.url import URL
    from sqlalchemy.util import asbool
except ImportError as e:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "bottomless.sqlalchemy needs SQLAlchemy: pip install 'bottomless[sqlalchemy]'"
    ) from e

from bottomless.errors import ConfigError
from bottomless.settings import Settings, resolve

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import ConnectArgsType, DBAPIConnection, DBAPIModule

__all__ = ["BottomlessDialect", "dialect", "settings_parameters"]

#: query parameters the pysqlite dialect hands to ``connect()`` itself
DRIVER_PARAMETERS = (
    "uri", "timeout", "isolation_level", "detect_types", "check_same_thread", "cached_statements",
)
#: settings a URL may carry: every Settings field except those whose name is a driver argument
#: (``timeout`` stays SQLite's busy timeout, as in every pysqlite URL; the store's request
#: timeout comes from ``connect_args`` settings or ``LIBSQL_BOTTOMLESS_TIMEOUT``)
URL_SETTINGS = tuple(name for name in Settings.model_fields if name not in DRIVER_PARAMETERS)


def settings_parameters(url: URL) -> dict[str, str]:
    """The query parameters of ``url`` that are :class:`bottomless.Settings` fields.

    ``timeout`` is not among them: in a URL it is the driver's (SQLite's busy timeout).

    Raises :class:`bottomless.ConfigError` if one of them is given more than once.
    """
    found: dict[str, str] = {}
    repeated = []
    for name, value in url.query.items():
        if name not in URL_SETTINGS:
            continue
        if isinstance(value, tuple):
            repeated.append(name)
            continue
        found[name] = value
    if repeated:
        raise ConfigError(
            f"URL parameter(s) {', '.join(sorted(repeated))} given more than once; give each"
            " bottomless setting once"
        )
    return found


def _check_unknown(url: URL) -> None:
    """Without ``uri=true`` a query parameter that is neither a setting nor a driver argument
    would be dropped (pysqlite only warns); a typo must not silently fall back to a default."""
    uri = url.query.get("uri")
    if isinstance(uri, str) and asbool(uri):
        return  # the rest belongs to the SQLite URI, where the VFS checks it
    unknown = sorted(
        k for k in url.query if k not in URL_SETTINGS and k not in DRIVER_PARAMETERS
    )
    if unknown:
        raise ConfigError(
            f"unknown URL parameter(s) {', '.join(unknown)}; bottomless settings:"
            f" {', '.join(URL_SETTINGS)}; driver arguments: {', '.join(DRIVER_PARAMETERS)}"
            " (SQLite URI parameters need uri=true)"
        )


def _check(parameters: Mapping[str, str]) -> None:
    """Validate URL settings on their own (defaults elsewhere), so errors name the parameter.

    The environment is left out here: it may be incomplete or overridden by ``connect_args``;
    it is read when a connection opens.
    """
    if parameters:
        resolve(Settings.model_construct(), parameters)


class BottomlessDialect(SQLiteDialect_pysqlite):
    """The ``sqlite+bottomless`` dialect: pysqlite's, with :mod:`bottomless.dbapi` as driver.

    File databases are opened through the bottomless VFS (restored from the bucket when the
    local file is missing, every commit replicated); in-memory databases are plain SQLite.
    """

    driver = "bottomless"
    supports_statement_cache = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Settings fields given in the engine URL; applied over connect_args' ``settings``.
        self.url_settings: dict[str, str] = {}

    @classmethod
    def import_dbapi(cls) -> DBAPIModule:
        """Return :mod:`bottomless.dbapi`, the ``sqlite3``-compatible driver."""
        import bottomless.dbapi

        return cast("DBAPIModule", bottomless.dbapi)

    def create_connect_args(self, url: URL) -> ConnectArgsType:
        """Split the URL's bottomless settings from pysqlite's parameters.

        Raises :class:`bottomless.ConfigError` if a settings parameter is invalid, or (without
        ``uri=true``) a parameter is neither a setting nor a driver argument, naming it.
        """
        _check_unknown(url)
        parameters = settings_parameters(url)
        _check(parameters)
        self.url_settings = parameters
        return super().create_connect_args(url.difference_update_query(parameters))

    def connect(self, *cargs: Any, **cparams: Any) -> DBAPIConnection:
        """Open a DB-API connection with the URL's settings laid over ``settings=``."""
        base = cparams.pop("settings", None)
        if base is not None and not isinstance(base, Settings):
            raise ConfigError(
                f"connect_args 'settings' must be a bottomless.Settings, not {type(base).__name__}"
            )
        if self.url_settings:
            cparams["settings"] = resolve(base, self.url_settings)
        elif base is not None:
            cparams["settings"] = base
        return super().connect(*cargs, **cparams)


dialect = BottomlessDialect

"""Configuration: one validated :class:`Settings` from env vars, code and URI parameters.

Precedence, highest first: URI parameter (``file:app.db?vfs=bottomless&bucket=...``), the
``Settings`` object passed to :func:`bottomless.connect` / :func:`bottomless.register`,
``LIBSQL_BOTTOMLESS_<FIELD>`` environment variables, defaults.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import urllib.parse
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args, get_origin

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bottomless.errors import ConfigError, ConfigProblem
from bottomless.format import validate_db_name

ENV_PREFIX = "LIBSQL_BOTTOMLESS_"
#: environment variables with our prefix that are not Settings fields
NON_FIELD_ENV = {"LOG"}
#: URI parameters SQLite itself understands; they are not bottomless settings
SQLITE_URI_PARAMETERS = {"vfs", "mode", "cache", "psow", "nolock", "immutable", "modeof"}
#: private URI parameter used by bottomless.connect to pass a Settings object
SETTINGS_TOKEN_PARAMETER = "bottomless_settings"
SECRET_FIELDS = {"access_key_id", "secret_access_key", "session_token"}


_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> dt.timedelta:
    """Parse ``30s``, ``15m``, ``12h``, ``7d`` or ``2w``; raise ConfigError otherwise."""
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(
            f"invalid duration {text!r}: use a number and a unit s, m, h, d or w, e.g. 7d",
            value=text,
        )
    return dt.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


class Settings(BaseSettings):
    """Where a database is replicated and how.

    Every field reads the environment variable ``LIBSQL_BOTTOMLESS_<FIELD>`` (for example
    ``LIBSQL_BOTTOMLESS_BUCKET``) and can be overridden per connection by the URI parameter of
    the same name. Credentials are ``SecretStr`` and never appear in ``repr``, logs or errors.

    Raises ConfigError (not pydantic's ValidationError) naming every invalid value at once,
    with its environment variable, URI parameter and the allowed values.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, frozen=True
    )

    #: The names ``backend`` accepts. The backend registry, a layer above, installs its
    #: ``names`` here when imported, since this module may not import it; None accepts any.
    backend_names: ClassVar[Callable[[], Collection[str]] | None] = None

    backend: str = Field(
        "s3",
        description="Where replicas live: `s3` (an S3 bucket), `file` (a local directory),"
        " `memory`, or a backend registered with `bottomless.register_backend`.",
    )
    endpoint: str = Field(
        "http://localhost:9000",
        description="S3 endpoint URL (s3 backend). Empty means AWS's regional endpoint.",
    )
    bucket: str = Field(
        "libsql",
        description="S3 bucket; for `file` the directory holding replicas; for `memory` a"
        " namespace.",
        min_length=1,
    )
    db_name: str | None = Field(
        None,
        description="Name of the database in the bucket; its objects live under this prefix."
        " Defaults to the database file's base name (with other characters than"
        " [A-Za-z0-9._-]: a name derived from it, e.g. `my db.sqlite` ->"
        " `my_db.sqlite-<8 hex digits>`).",
    )
    initial_replication: Literal["error", "force", "skip"] = Field(
        "error",
        description="What to do when the local file and the replica in the bucket disagree:"
        " refuse to open, replicate the local file as a new generation, or open without"
        " replicating.",
    )
    region: str | None = Field(None, description="S3 region; default from the AWS chain.")
    access_key_id: SecretStr | None = Field(
        None, description="S3 access key; default from the AWS chain (AWS_ACCESS_KEY_ID, ...)."
    )
    secret_access_key: SecretStr | None = Field(
        None, description="S3 secret key; default from the AWS chain.", validate_default=True
    )
    session_token: SecretStr | None = Field(None, description="S3 session token, if any.")
    verify_tls: bool = Field(True, description="Verify TLS certificates of https endpoints.")
    create_bucket: bool = Field(True, description="Create the S3 bucket if it does not exist.")
    durability: Literal["sync", "async"] = Field(
        "sync",
        description="sync: COMMIT returns once the transaction is in the store. async: COMMIT"
        " returns at local speed and a background uploader ships commits in order, at most"
        " `max_lag` seconds behind.",
    )
    max_lag: float = Field(
        1.0, gt=0, le=3600,
        description="async: how far (seconds) replication may fall behind before commits wait.",
    )
    ship_interval: float | None = Field(
        None, gt=0, le=3600,
        description="async: least time (seconds) between two uploads while commits keep"
        " coming; a commit after a quiet spell is uploaded at once. Longer: fewer requests,"
        " more lag. At most `max_lag`; unset: 1, or `max_lag` if smaller.",
    )
    max_spool_mb: int = Field(
        256, ge=1, description="async: local spool size (MiB) at which commits wait."
    )
    lease_ttl: float = Field(
        30.0, ge=0, le=3600,
        description="Seconds a writer's lease on a db_name lasts without renewal; a second"
        " writer fails until it expires (0: no single-writer fencing).",
    )
    compression: Literal["zstd", "none"] = Field(
        "zstd", description="Compression of pages in new objects (old objects stay readable)."
    )
    timeout: float = Field(
        10.0, gt=0, le=600, description="Seconds before one store request times out."
    )
    max_retries: int = Field(
        3, ge=0, le=20, description="Retries of a failed store request before it fails."
    )
    parallelism: int = Field(
        8, ge=1, le=64, description="Concurrent transfers during restore and snapshot upload."
    )
    snapshot_part_mb: int = Field(
        16, ge=1, le=1024, description="Size of one snapshot part object, in MiB of pages."
    )
    snapshot_interval_commits: int = Field(
        1000, ge=0, description="Take a new snapshot after this many commits (0: never)."
    )
    snapshot_interval_mb: int = Field(
        64, ge=0, description="Take a new snapshot after this many MiB of commits (0: never)."
    )
    snapshot_worker: Literal["process", "thread"] = Field(
        "process",
        description="Where background snapshots are built: `process`, a child Python process"
        " (it does not hold the interpreter lock commits need), or `thread`."
        " Backends another process cannot open the same way (`memory`, ones registered as"
        " objects at run time) always use a thread.",
    )
    retention: str = Field(
        "7d",
        description="How far back `bottomless gc` keeps every point restorable (30s, 15m, 12h,"
        " 7d, 2w).",
    )
    keep_snapshots: int = Field(
        0, ge=0, description="`gc` also keeps the newest N snapshots restorable (0: off)."
    )

    if not TYPE_CHECKING:  # type checkers keep the per-field signature pydantic gives them

        def __init__(self, **values: Any) -> None:
            check_environment()  # a mistyped variable must not fall back to a default
            problem = None
            try:
                super().__init__(**values)
            except ValidationError as e:
                problem = config_error(e)
            if problem is not None:  # raised here, so that pydantic's error (which quotes
                raise problem  # every input, secrets included) is not even its context

    @field_validator("backend")
    @classmethod
    def _check_backend(cls, value: str) -> str:
        names = cls.backend_names() if cls.backend_names is not None else None
        if names is not None and value not in names:
            allowed = ", ".join(repr(name) for name in sorted(names))
            raise ValueError(
                f"unknown backend; allowed: {allowed}, or one registered with"
                " bottomless.register_backend"
            )
        return value

    @field_validator("bucket", mode="before")
    @classmethod
    def _bucket_path(cls, value: Any) -> Any:
        """A path object (``BASE_DIR / "replicas"``) is taken as its text, as ``NAME`` is."""
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("db_name")
    @classmethod
    def _check_db_name(cls, value: str | None) -> str | None:
        return None if value is None else validate_db_name(value)

    @field_validator("secret_access_key")
    @classmethod
    def _check_key_pair(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if (value is None) != (info.data.get("access_key_id") is None):
            raise ValueError(
                f"set access_key_id ({env_var('access_key_id')}) and secret_access_key"
                f" ({env_var('secret_access_key')}) together, or neither for the AWS chain"
            )
        return value

    @field_validator("ship_interval")
    @classmethod
    def _check_ship_interval(cls, value: float | None, info: ValidationInfo) -> float | None:
        max_lag = info.data.get("max_lag")
        if value is not None and max_lag is not None and value > max_lag:
            raise ValueError(f"must not exceed max_lag ({max_lag}), which bounds the lag")
        return value

    @field_validator("retention")
    @classmethod
    def _check_retention(cls, value: str) -> str:
        try:
            parse_duration(value)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return value

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        # any '@' (user:password@host, even where a '/', '?' or '#' in the password hides it
        # from URL parsing), and any query or fragment (a token), could carry a secret
        if "@" in value:
            raise ValueError("must not carry credentials (user:password@host): set"
                             " access_key_id and secret_access_key instead")
        if urllib.parse.urlsplit(value).query or "?" in value or "#" in value:
            raise ValueError("must be scheme://host[:port][/path], with no query or fragment")
        return value

    def portable(self) -> dict[str, Any]:
        """Every field as JSON-ready values, secrets included: for handing these settings to
        a child process through a pipe (never through argv or the environment, never logs)."""
        values = self.model_dump(mode="json")
        for name in SECRET_FIELDS:
            secret = getattr(self, name)
            values[name] = secret.get_secret_value() if secret is not None else None
        return values

    @property
    def attempts(self) -> int:
        """How many times one store request is tried: ``max_retries + 1``."""
        return self.max_retries + 1

    @property
    def shipping_interval(self) -> float:
        """The ``ship_interval`` in force: the one set, else 1 s or ``max_lag`` if smaller."""
        return self.ship_interval if self.ship_interval is not None else min(1.0, self.max_lag)

    @property
    def request_budget(self) -> float:
        """The longest one store request may take, retries included, in seconds:
        ``timeout * (max_retries + 1)``."""
        return self.timeout * self.attempts


def env_var(field: str) -> str:
    """The environment variable that sets ``field``."""
    return f"{ENV_PREFIX}{field.upper()}"


def _without_userinfo(value: Any) -> Any:
    """``value``, with what could be the credentials of a URL masked: everything up to the
    last ``@`` (after the scheme, if any), and any query or fragment."""
    if not isinstance(value, str):
        return value
    if "@" in value:
        scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", value)  # only a real scheme is kept
        value = f"{scheme.group(0) if scheme else ''}***@{value.rsplit('@', 1)[1]}"
    return re.sub(r"[?#].*", "?***", value, flags=re.DOTALL)


def _describe(error: Mapping[str, Any]) -> str:
    loc = error.get("loc") or ("?",)
    field = str(loc[0])
    message = str(error.get("msg", "invalid"))
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if field in Settings.model_fields:
        shown = ("" if field in SECRET_FIELDS
                 else f" (got {_without_userinfo(error.get('input'))!r})")
        where = f"env {env_var(field)} / URI parameter {field}"
        return f"{field}: {message}{shown} [{where}]"
    return f"{field}: unknown setting; known settings: {', '.join(Settings.model_fields)}"


def _allowed(field: str) -> tuple[str, ...] | None:
    if field == "backend" and Settings.backend_names is not None:
        return tuple(sorted(Settings.backend_names()))
    annotation = Settings.model_fields[field].annotation
    if get_origin(annotation) is Literal:
        return tuple(str(choice) for choice in get_args(annotation))
    return None


def _problem(error: Mapping[str, Any]) -> ConfigProblem:
    field = str((error.get("loc") or ("?",))[0])
    if field not in Settings.model_fields:  # its value may be a mistyped credential
        return ConfigProblem(field, "unknown setting")
    reason = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    value = None if field in SECRET_FIELDS else _without_userinfo(error.get("input"))
    return ConfigProblem(field, reason, value, _allowed(field))


def config_error(error: ValidationError) -> ConfigError:
    """The ConfigError for pydantic's ``error``: every problem, named by env var and URI
    parameter, with the value given (never a credential) and what is allowed."""
    problems = "; ".join(_describe(err) for err in error.errors())
    return ConfigError(
        f"invalid bottomless configuration: {problems}",
        problems=[_problem(err) for err in error.errors()],
    )


def check_environment() -> None:
    """Raise ConfigError for ``LIBSQL_BOTTOMLESS_*`` variables that name no setting."""
    unknown = [
        name
        for name in os.environ
        if name.upper().startswith(ENV_PREFIX)
        and name.upper()[len(ENV_PREFIX) :].lower() not in Settings.model_fields
        and name.upper()[len(ENV_PREFIX) :] not in NON_FIELD_ENV
    ]
    if unknown:
        raise ConfigError(
            f"unknown environment variable(s) {', '.join(sorted(unknown))}; known:"
            f" {', '.join(env_var(f) for f in Settings.model_fields)}",
            problems=[ConfigProblem(name, "unknown environment variable")
                      for name in sorted(unknown)],
        )


def load_settings(**values: Any) -> Settings:
    """Build Settings from env vars plus ``values``; raise ConfigError listing every problem."""
    return Settings(**values)


def resolve(base: Settings | None, uri_parameters: Mapping[str, str] | None = None) -> Settings:
    """Combine ``base`` (or the environment) with URI parameters, which win."""
    uri = dict(uri_parameters or {})
    unknown = [k for k in uri if k not in Settings.model_fields]
    if unknown:
        raise ConfigError(
            f"unknown URI parameter(s) {', '.join(sorted(unknown))}; bottomless parameters:"
            f" {', '.join(Settings.model_fields)}",
            problems=[ConfigProblem(name, "unknown URI parameter") for name in unknown],
        )
    if base is None:
        return load_settings(**uri)
    if not uri:
        return base
    values = {name: getattr(base, name) for name in Settings.model_fields}
    values.update(uri)
    return Settings(**values)

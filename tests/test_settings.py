"""Configuration: env vars, URI parameters, precedence, and clear errors for bad values."""

from __future__ import annotations

from typing import Any

import apsw
import pytest

import bottomless
import bottomless.backends.registry  # installs the check of backend names (bottomless.Settings
from bottomless.settings import Settings, load_settings, resolve  # imports it too)

# one bad value per setting, and the words the error must contain
BAD_VALUES = {
    "backend": ("s4", ["backend", "LIBSQL_BOTTOMLESS_BACKEND", "'s3'", "'file'", "'memory'"]),
    "endpoint": ("localhost:9000", ["endpoint", "http://"]),
    "bucket": ("", ["bucket"]),
    "db_name": ("../etc", ["db_name", "LIBSQL_BOTTOMLESS_DB_NAME"]),
    "initial_replication": ("always", ["initial_replication", "'error'", "'force'", "'skip'"]),
    "verify_tls": ("maybe", ["verify_tls"]),
    "create_bucket": ("perhaps", ["create_bucket"]),
    "compression": ("lz4", ["compression", "'zstd'", "'none'"]),
    "timeout": ("-1", ["timeout", "greater than 0"]),
    "max_retries": ("many", ["max_retries"]),
    "parallelism": ("0", ["parallelism"]),
    "snapshot_part_mb": ("0", ["snapshot_part_mb"]),
    "snapshot_interval_commits": ("-5", ["snapshot_interval_commits"]),
    "snapshot_interval_mb": ("lots", ["snapshot_interval_mb"]),
    "retention": ("a week", ["retention", "7d"]),
    "durability": ("eventually", ["durability", "'sync'", "'async'"]),
    "max_lag": ("0", ["max_lag", "greater than 0"]),
    "max_spool_mb": ("0", ["max_spool_mb"]),
    "ship_interval": ("2", ["ship_interval", "max_lag (1.0)"]),
    "lease_ttl": ("-3", ["lease_ttl"]),
    "keep_snapshots": ("-1", ["keep_snapshots"]),
    "snapshot_worker": ("fork", ["snapshot_worker", "'process'", "'thread'"]),
}


def test_every_setting_has_a_bad_value_case() -> None:
    secret_fields = {"access_key_id", "secret_access_key", "session_token", "region"}
    assert set(Settings.model_fields) - secret_fields == set(BAD_VALUES)


@pytest.mark.parametrize("field", sorted(BAD_VALUES))
def test_bad_env_value_names_the_variable(field: str, monkeypatch: pytest.MonkeyPatch) -> None:
    value, words = BAD_VALUES[field]
    monkeypatch.setenv(f"LIBSQL_BOTTOMLESS_{field.upper()}", value)
    with pytest.raises(bottomless.ConfigError) as info:
        load_settings()
    for word in words:
        assert word in str(info.value)
    assert f"LIBSQL_BOTTOMLESS_{field.upper()}" in str(info.value)


@pytest.mark.parametrize("field", sorted(BAD_VALUES))
def test_bad_uri_value_fails_open(field: str, tmp_path: Any) -> None:
    value, words = BAD_VALUES[field]
    bottomless.register(Settings(backend="memory"))
    with pytest.raises(bottomless.ConfigError) as info:
        apsw.Connection(
            f"file:{tmp_path}/x.db?vfs=bottomless&{field}={value}",
            flags=apsw.SQLITE_OPEN_URI | apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE,
        )
    for word in words:
        assert word in str(info.value)
    assert f"URI parameter {field}" in str(info.value)


@pytest.mark.parametrize("field", sorted(BAD_VALUES))
def test_bad_value_in_code_raises_config_error(field: str) -> None:
    value, words = BAD_VALUES[field]
    with pytest.raises(bottomless.ConfigError) as info:
        Settings(**{field: value})
    for word in words:
        assert word in str(info.value)
    assert f"LIBSQL_BOTTOMLESS_{field.upper()}" in str(info.value)
    assert f"URI parameter {field}" in str(info.value)
    assert info.value.field == field and info.value.value == value


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(bottomless.ConfigError) as info:
        resolve(None, {"backend": "nope", "timeout": "0", "compression": "lz"})
    assert all(f in str(info.value) for f in ("backend", "timeout", "compression"))
    assert [p.field for p in info.value.problems] == ["backend", "compression", "timeout"]
    compression = info.value.problems[1]
    assert compression.value == "lz" and compression.allowed == ("zstd", "none")


def test_unknown_uri_parameter_and_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(bottomless.ConfigError, match="bukcet"):
        resolve(None, {"bukcet": "x"})
    monkeypatch.setenv("LIBSQL_BOTTOMLESS_BUKCET", "x")
    with pytest.raises(bottomless.ConfigError, match="LIBSQL_BOTTOMLESS_BUKCET"):
        load_settings()
    # also when the code builds its own Settings: the typo would otherwise go unnoticed
    with pytest.raises(bottomless.ConfigError, match="LIBSQL_BOTTOMLESS_BUKCET"):
        Settings(backend="file", bucket="given")


def test_precedence_uri_over_settings_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIBSQL_BOTTOMLESS_BUCKET", "from-env")
    monkeypatch.setenv("LIBSQL_BOTTOMLESS_ENDPOINT", "http://env:9000")
    monkeypatch.setenv("LIBSQL_BOTTOMLESS_TIMEOUT", "7")
    assert load_settings().bucket == "from-env"
    given = Settings(bucket="from-code", endpoint="http://code:9000")
    assert given.timeout == 7  # env fills what code leaves
    merged = resolve(given, {"bucket": "from-uri"})
    assert merged.bucket == "from-uri"
    assert merged.endpoint == "http://code:9000"
    assert merged.timeout == 7
    assert Settings().backend == "s3" and Settings().initial_replication == "error"
    monkeypatch.delenv("LIBSQL_BOTTOMLESS_ENDPOINT")
    assert Settings().endpoint == "http://localhost:9000"


def test_uri_parameters_reach_the_replica(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIBSQL_BOTTOMLESS_BACKEND", "file")
    monkeypatch.setenv("LIBSQL_BOTTOMLESS_BUCKET", str(tmp_path / "env-replicas"))
    bottomless.register()
    db = apsw.Connection(
        f"file:{tmp_path}/p.db?vfs=bottomless&bucket={tmp_path}/uri-replicas&db_name=named",
        flags=apsw.SQLITE_OPEN_URI | apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE,
    )
    db.execute("CREATE TABLE t(x); INSERT INTO t VALUES(1)")
    db.close()
    assert (tmp_path / "uri-replicas" / "named").is_dir()
    assert not (tmp_path / "env-replicas").exists()


def test_secrets_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cr3t-VALUE-123"
    settings = Settings(access_key_id="AKIDEXAMPLE", secret_access_key=secret)
    assert secret not in repr(settings) and secret not in str(settings)
    assert secret not in repr(settings.model_dump())
    monkeypatch.setenv("LIBSQL_BOTTOMLESS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("LIBSQL_BOTTOMLESS_TIMEOUT", "oops")
    with pytest.raises(bottomless.ConfigError) as info:
        load_settings()
    assert secret not in str(info.value)
    with pytest.raises(bottomless.ConfigError) as info:
        resolve(None, {"session_token": secret, "parallelism": "x"})
    assert secret not in str(info.value)


def test_an_endpoint_with_credentials_is_refused_without_showing_them() -> None:
    """They would reach error messages and repr; the s3 path cannot use them anyway."""
    for endpoint in (
        "http://user:p4ssw0rd@127.0.0.1:9", "ftp://user:p4ssw0rd@host",
        "user:p4ssw0rd@127.0.0.1:9",  # no scheme
        # a '/', '#' or '?' in the password ends the URL's authority before its '@'
        "http://user:p4/ssw0rd@127.0.0.1:9", "http://user:p4#ssw0rd@127.0.0.1:9",
        "http://user:p4?ssw0rd@127.0.0.1:9",
        "http://user:p4@ssw0rd@127.0.0.1:9",  # credentials run to the last '@'
        "http://127.0.0.1:9/?token=p4ssw0rd", "127.0.0.1:9#p4ssw0rd",
        "user:a://p4ssw0rd@127.0.0.1:9",  # '://' inside the password, no scheme
    ):
        with pytest.raises(bottomless.ConfigError) as info:
            Settings(endpoint=endpoint)
        assert "p4ssw0rd" not in str(info.value) and "endpoint" in str(info.value)
        # nor in the attributes (Django's settings errors are built from them)
        assert "p4ssw0rd" not in repr([info.value.value, *info.value.problems])
        assert info.value.__context__ is None  # pydantic's error quotes every input


def test_a_uri_parameter_given_twice_is_refused(tmp_path: Any) -> None:
    bottomless.register(Settings(backend="memory"))
    uri = f"file:{tmp_path / 'twice.db'}?vfs=bottomless&durability=sync&durability=async"
    with pytest.raises(bottomless.ConfigError, match="durability is given more than once"):
        apsw.Connection(uri, flags=apsw.SQLITE_OPEN_URI | apsw.SQLITE_OPEN_READWRITE
                        | apsw.SQLITE_OPEN_CREATE)


def test_a_path_object_is_a_bucket_directory(tmp_path: Any) -> None:
    """``BASE_DIR / "replicas"``, as Django settings write paths, is taken as its text."""
    assert Settings(backend="file", bucket=tmp_path / "replicas").bucket == str(
        tmp_path / "replicas")

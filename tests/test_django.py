"""The Django backend, ``"ENGINE": "bottomless.django"``.

Django is configured once in this process (``tests/django_testapp`` is its one app) and each
test points the ``default`` database at its own file and replica location. The example project
and the several-workers test run in child processes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import django
import pytest
from django.conf import settings as django_settings
from faultproxy import FaultProxy
from helpers import FailingStore, integrity, remove_db, replicator, restored, rows

import bottomless
from bottomless.backends.registry import open_store

MakeSettings = Callable[..., bottomless.Settings]
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "django"
TESTS = Path(__file__).resolve().parent
ITEMS = "django_testapp_item"


def _configure_django() -> None:
    if not django_settings.configured:
        django_settings.configure(
            DATABASES={"default": {"ENGINE": "bottomless.django", "NAME": ":memory:"}},
            INSTALLED_APPS=["django_testapp"],
            DEFAULT_AUTO_FIELD="django.db.models.AutoField",
            USE_TZ=True,
            TIME_ZONE="UTC",
        )
        django.setup()


_configure_django()

from django.core.exceptions import ImproperlyConfigured  # noqa: E402 (needs settings)
from django.core.management import call_command  # noqa: E402
from django.db import NotSupportedError, connection, transaction  # noqa: E402
from django.db.utils import ConnectionHandler, OperationalError  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django_testapp.models import Item, Shelf  # noqa: E402


def use_database(path: str, options: dict[str, Any]) -> None:
    """Point Django's default database at ``path`` with ``OPTIONS``; the next query opens it."""
    connection.close()
    connection.settings_dict["NAME"] = path
    connection.settings_dict["OPTIONS"] = options


def status() -> dict[str, Any]:
    """``PRAGMA bottomless_status`` of the default database."""
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA bottomless_status")
        text = cursor.fetchone()[0]
    result: dict[str, Any] = json.loads(text)
    return result


def names() -> list[str]:
    return list(Item.objects.values_list("name", flat=True))


class Database:
    """The file and replica settings of the database a test uses."""

    def __init__(self, path: str, settings: bottomless.Settings) -> None:
        self.path = path
        self.settings = settings

    def restored_rows(self, tmp_path: Path, sql: str = f"SELECT name FROM {ITEMS} ORDER BY id"
                      ) -> list[Any]:
        """Rows of a fresh restore of this database's replica."""
        connection.close()
        return rows(restored(tmp_path, self.settings, os.path.basename(self.path)), sql)


def open_database(path: str, settings: bottomless.Settings, **options: Any) -> Database:
    use_database(path, {"settings": settings, **options})
    call_command("migrate", verbosity=0)
    return Database(path, settings)


@pytest.fixture
def db(tmp_path: Path, make_settings: MakeSettings) -> Iterator[Database]:
    """A migrated database replicating to a fresh directory (file backend)."""
    yield open_database(str(tmp_path / "app.db"), make_settings("file"))
    connection.close()


# ---------------------------------------------------------------- the ORM


@pytest.mark.parametrize("backend", ["file", pytest.param("s3", marks=pytest.mark.s3)])
def test_orm_values_survive_losing_the_file(tmp_path: Path, make_settings: MakeSettings,
                                            backend: str) -> None:
    database = open_database(str(tmp_path / "app.db"), make_settings(backend))
    shelf = Shelf.objects.create(name="top")
    seen = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    Item.objects.create(shelf=shelf, name="lamp", data={"watts": 40, "tags": ["a", "b"]},
                        price=Decimal("19.99"), on_sale=True, added=dt.date(2026, 1, 2),
                        seen=seen)
    Item.objects.create(name="bare")
    assert status()["replicating"] is True
    connection.close()
    remove_db(database.path)
    lamp = Item.objects.select_related("shelf").get(name="lamp")  # restored at open
    assert lamp.shelf.name == "top"
    assert lamp.data == {"watts": 40, "tags": ["a", "b"]}
    assert lamp.price == Decimal("19.99") and isinstance(lamp.price, Decimal)
    assert lamp.on_sale is True and Item.objects.get(name="bare").on_sale is False
    assert lamp.added == dt.date(2026, 1, 2) and type(lamp.added) is dt.date
    assert lamp.seen == seen
    assert database.restored_rows(tmp_path) == [("lamp",), ("bare",)]


def test_nested_atomic_blocks_are_savepoints_in_one_commit(db: Database, tmp_path: Path) -> None:
    commits = status()["commits"]
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        Item.objects.create(name="outer")
        with pytest.raises(RuntimeError), transaction.atomic():
            Item.objects.create(name="rolled back")
            raise RuntimeError("undo the inner block")
        with transaction.atomic():
            Item.objects.create(name="inner")
            with transaction.atomic():
                Item.objects.create(name="innermost")
    sql = [query["sql"] for query in queries.captured_queries]
    assert sum(s.startswith("SAVEPOINT") for s in sql) == 3, sql
    assert sum(s.startswith("ROLLBACK TO SAVEPOINT") for s in sql) == 1, sql
    assert names() == ["outer", "inner", "innermost"]
    assert status()["commits"] == commits + 1  # the outer block is one replicated commit
    assert db.restored_rows(tmp_path) == [("outer",), ("inner",), ("innermost",)]


def test_bulk_create_is_one_commit(db: Database, tmp_path: Path) -> None:
    commits = status()["commits"]
    made = Item.objects.bulk_create(
        [Item(name=f"item {i}", data={"i": i}) for i in range(1500)]  # several INSERTs
    )
    assert all(item.pk is not None for item in made)
    assert [item.pk for item in made] == sorted(Item.objects.values_list("id", flat=True))
    assert status()["commits"] == commits + 1
    assert db.restored_rows(tmp_path, f"SELECT count(*), sum(id) FROM {ITEMS}") == [
        (1500, sum(item.pk for item in made))]


def test_json_field_lookups(db: Database) -> None:
    Item.objects.create(name="a", data={"color": "red", "size": 3, "tags": ["x", "y"],
                                        "dims": {"w": 10, "h": 20}})
    Item.objects.create(name="b", data={"color": "Blue", "size": 5, "tags": ["y"]})
    Item.objects.create(name="c", data={"size": None})
    Item.objects.create(name="d", data={})

    def found(**lookup: Any) -> list[str]:
        return sorted(Item.objects.filter(**lookup).values_list("name", flat=True))

    assert found(data__color="red") == ["a"]
    assert found(data__color__iexact="blue") == ["b"]
    assert found(data__size__lte=4) == ["a"]  # (a JSON null compares as the text "null")
    assert found(data__dims__w=10) == ["a"]
    assert found(data__tags__0="y") == ["b"]
    assert found(data__tags__1="y") == ["a"]
    assert found(data__has_key="color") == ["a", "b"]
    assert found(data__has_keys=["color", "dims"]) == ["a"]
    assert found(data__has_any_keys=["dims", "size"]) == ["a", "b", "c"]
    assert found(data__size__isnull=True) == ["d"]  # no such key
    assert found(data__size=None) == ["c"]  # JSON null, not a missing key
    assert found(data={}) == ["d"]
    with pytest.raises(NotSupportedError):
        found(data__contains={"color": "red"})


def test_raw_sql_takes_djangos_placeholders(db: Database) -> None:
    with connection.cursor() as cursor:
        cursor.executemany(  # a generator is read once
            f"INSERT INTO {ITEMS}(name, data, on_sale) VALUES (%s, %s, %s)",
            ((f"raw {i}", "{}", i % 2) for i in range(4)),
        )
        cursor.executemany(
            f"INSERT INTO {ITEMS}(name, data, on_sale) VALUES (%(name)s, '{{}}', %(sale)s)",
            [{"name": "named 0", "sale": 1}, {"name": "named 1", "sale": 0}],
        )
        cursor.execute(f"SELECT name FROM {ITEMS} WHERE name LIKE 'raw%%' AND on_sale = %s"
                       " ORDER BY id", [1])
        assert cursor.fetchall() == [("raw 1",), ("raw 3",)]
        cursor.execute(f"SELECT count(*) FROM {ITEMS} WHERE name LIKE %(prefix)s",
                       {"prefix": "named%"})
        assert cursor.fetchone() == (2,)
    found = Item.objects.raw(f"SELECT * FROM {ITEMS} WHERE on_sale = %s ORDER BY id", [0])
    assert [item.name for item in found] == ["raw 0", "raw 2", "named 1"]


def test_dumpdata_and_loaddata(db: Database, tmp_path: Path, make_settings: MakeSettings) -> None:
    shelf = Shelf.objects.create(name="left")
    Item.objects.create(shelf=shelf, name="one", data={"n": [1, {"deep": True}]},
                        price=Decimal("0.10"), added=dt.date(2026, 3, 4))
    Item.objects.create(name="two", seen=dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.UTC))
    fixture = tmp_path / "dump.json"
    call_command("dumpdata", "django_testapp", output=str(fixture), verbosity=0)
    dumped = json.loads(fixture.read_text())
    assert [entry["model"] for entry in dumped] == [
        "django_testapp.shelf", "django_testapp.item", "django_testapp.item"]
    before = list(Item.objects.values())
    copy = open_database(str(tmp_path / "copy.db"), make_settings("file"))
    assert Item.objects.count() == 0
    call_command("loaddata", str(fixture), verbosity=0)
    assert list(Item.objects.values()) == before
    assert copy.restored_rows(tmp_path) == [("one",), ("two",)]


# ---------------------------------------------------------------- processes and failures

_WORKER = """
import sys
sys.path.insert(0, sys.argv[1])
import django
from django.conf import settings
settings.configure(
    DATABASES={"default": {
        "ENGINE": "bottomless.django", "NAME": sys.argv[2],
        "OPTIONS": {"backend": "file", "bucket": sys.argv[3], "timeout": 60,
                    "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL"},
    }},
    INSTALLED_APPS=["django_testapp"], DEFAULT_AUTO_FIELD="django.db.models.AutoField",
)
django.setup()
from django.db import connection, transaction
from django_testapp.models import Item
for i in range(int(sys.argv[5])):
    with transaction.atomic():
        Item.objects.create(name=f"{sys.argv[4]}-{i}", data={"worker": sys.argv[4]})
connection.close()
print("done", sys.argv[4])
"""


def test_several_worker_processes_write_one_file(tmp_path: Path) -> None:
    settings = bottomless.Settings(backend="file", bucket=str(tmp_path / "replicas"))
    database = open_database(str(tmp_path / "shared.db"), settings,
                             init_command="PRAGMA journal_mode=WAL")
    connection.close()
    workers = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(TESTS), database.path,
                          settings.bucket, f"w{n}", "25"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for n in range(3)
    ]
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        assert out.startswith("done")
    expected = sorted(f"w{n}-{i}" for n in range(3) for i in range(25))
    assert sorted(names()) == expected
    copy = restored(tmp_path, settings, "shared.db")
    connection.close()
    assert integrity(copy) == "ok"
    assert sorted(r[0] for r in rows(copy, f"SELECT name FROM {ITEMS}")) == expected



@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_a_failed_upload_fails_the_atomic_block(tmp_path: Path, make_settings: MakeSettings,
                                                journal_mode: str) -> None:
    database = open_database(str(tmp_path / "app.db"), make_settings("file"),
                             init_command=f"PRAGMA journal_mode={journal_mode}")
    Item.objects.create(name="before")
    rep = replicator(database.path)
    failing = FailingStore(rep.store)
    rep.store = failing
    failing.down = True
    with pytest.raises(OperationalError) as info, transaction.atomic():
        Item.objects.create(name="lost")
        Item.objects.create(name="lost too")
    chain, error = [], info.value
    while error is not None and len(chain) < 10:
        chain.append(repr(error))
        error = error.__cause__ or error.__context__
    assert any("injected outage" in link for link in chain), chain
    failing.down = False
    assert connection.in_atomic_block is False
    assert names() == ["before"]  # the local file did not move ahead of the bucket
    Item.objects.create(name="after")  # the same connection works again
    with transaction.atomic():
        Item.objects.create(name="after too")
    assert names() == ["before", "after", "after too"]
    assert database.restored_rows(tmp_path) == [("before",), ("after",), ("after too",)]
    assert rows(database.path, f"SELECT name FROM {ITEMS} ORDER BY id") == [
        ("before",), ("after",), ("after too",)]


@pytest.mark.s3
def test_a_sync_commit_through_the_orm_is_one_put(tmp_path: Path, seaweed: Any,
                                                  s3_settings: dict[str, Any]) -> None:
    with FaultProxy(seaweed.endpoint) as proxy:
        settings = bottomless.Settings(**{**s3_settings, "endpoint": proxy.endpoint})
        open_database(str(tmp_path / "app.db"), settings)
        try:
            before = len(proxy.seen)
            for i in range(10):
                Item.objects.create(name=f"single {i}")  # autocommit: one commit each
            Item.objects.filter(name="single 0").update(data={"changed": True})
            with transaction.atomic():
                for i in range(10):
                    Item.objects.create(name=f"batched {i}")
            assert Item.objects.count() == 20
            during = proxy.seen[before:]
        finally:
            connection.close()
    assert len(during) == 12, during
    assert all(r.startswith("PUT /") and "/commits/" in r for r in during), during
    assert len(set(during)) == 12


# ---------------------------------------------------------------- OPTIONS


def _wrapper(options: dict[str, Any], name: str = "/tmp/x.db") -> Any:
    handler = ConnectionHandler({"default": {"ENGINE": "bottomless.django", "NAME": name,
                                       "OPTIONS": options}})
    return handler["default"]


def test_options_are_bottomless_settings_beside_sqlite_options(tmp_path: Path) -> None:
    params = _wrapper({"backend": "file", "bucket": str(tmp_path), "durability": "async",
                       "store_timeout": 3, "timeout": 7, "transaction_mode": "IMMEDIATE",
                       "init_command": "PRAGMA cache_size=100"}).get_connection_params()
    settings = params.pop("settings")
    assert (settings.backend, settings.bucket, settings.durability, settings.timeout) == (
        "file", str(tmp_path), "async", 3)
    assert params["timeout"] == 7  # SQLite's busy timeout, as in Django's SQLite backend
    assert not {"backend", "bucket", "durability", "store_timeout"} & set(params)
    base = bottomless.Settings(backend="memory", bucket="ns", max_lag=2)
    params = _wrapper({"settings": base, "bucket": "other"}).get_connection_params()
    assert (params["settings"].backend, params["settings"].bucket,
            params["settings"].max_lag) == ("memory", "other", 2)
    assert _wrapper({"settings": base}).get_connection_params()["settings"] is base


@pytest.mark.parametrize(("options", "named"), [
    ({"durability": "fast"}, "['OPTIONS']['durability']: Input should be 'sync' or 'async'"),
    ({"backend": "file", "bucket": ""}, "['OPTIONS']['bucket']"),
    ({"store_timeout": -1}, "['OPTIONS']['store_timeout']"),
    ({"buckett": "x"}, "unknown option(s) 'buckett'"),
    ({"settings": {"bucket": "x"}}, "['OPTIONS']['settings'] must be a bottomless.Settings"),
    ({"settings": bottomless.Settings(backend="memory"), "max_lag": 0},
     "['OPTIONS']['max_lag']"),
])
def test_bad_options_raise_config_error_naming_them(options: dict[str, Any], named: str) -> None:
    wrapper = _wrapper(options)
    with pytest.raises(bottomless.ConfigError) as info:
        wrapper.ensure_connection()
    assert named in str(info.value)
    assert "settings.DATABASES['default']" in str(info.value)


def test_bad_environment_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIBSQL_BOTTOMLESS_DURABILITY", "later")
    with pytest.raises(bottomless.ConfigError, match="LIBSQL_BOTTOMLESS_DURABILITY"):
        _wrapper({"backend": "memory"}).get_connection_params()


def test_dbshell_runs_the_replicated_shell(db: Database) -> None:
    Item.objects.create(name="from django")
    connection.close()
    args, env = connection.client.settings_to_cmd_args_env(connection.settings_dict, [])
    assert args[1:] == ["-m", "bottomless", "shell", db.path]
    assert env["LIBSQL_BOTTOMLESS_BACKEND"] == "file"
    assert env["LIBSQL_BOTTOMLESS_BUCKET"] == db.settings.bucket
    result = subprocess.run(args, env={**os.environ, **env}, capture_output=True, text=True,
                            input=f"SELECT 'rows=' || count(*) FROM {ITEMS};\n", timeout=60)
    assert "rows=1" in result.stdout, result.stdout + result.stderr
    # dbshell -- ARGS: the sqlite3 shell's options, then commands run instead of the loop
    args, env = connection.client.settings_to_cmd_args_env(
        connection.settings_dict,
        ["-header", "-separator", ";",
         f"INSERT INTO {ITEMS}(name, data, on_sale) VALUES ('from the shell', '{{}}', 0)",
         f"SELECT count(*) AS n, 7 AS seven FROM {ITEMS}"],
    )
    result = subprocess.run(args, env={**os.environ, **env}, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["n;seven", "2;7"], result.stdout + result.stderr
    assert db.restored_rows(Path(db.path).parent) == [("from django",), ("from the shell",)]


# ---------------------------------------------------------------- test databases


def _keys(settings: bottomless.Settings, db_name: str) -> list[str]:
    store = open_store(settings)
    try:
        return store.list_keys(f"{db_name}/")
    finally:
        store.close()


@pytest.mark.parametrize("given_as", [str, Path])  # the Django guide shows BASE_DIR / "..."
def test_file_test_database_replicates_and_is_destroyed_with_its_replica(
        tmp_path: Path, make_settings: MakeSettings, given_as: Callable[[Path], Any]) -> None:
    settings = make_settings("file")
    real = open_database(str(tmp_path / "app.db"), settings)
    Item.objects.create(name="real data")
    connection.close()
    real_options = connection.settings_dict["OPTIONS"]
    test_path = given_as(tmp_path / "test_app.db")
    connection.settings_dict["TEST"]["NAME"] = test_path
    try:
        for _ in range(2):  # the second test database starts empty, nothing restored
            created = connection.creation.create_test_db(verbosity=0, autoclobber=True,
                                                         serialize=False)
            assert created == test_path
            assert connection.settings_dict["OPTIONS"]["db_name"] == "test_app.db"
            assert names() == []
            Item.objects.create(name="test data")
            assert status()["db_name"] == "test_app.db"
            assert _keys(settings, "test_app.db")
            connection.creation.destroy_test_db(real.path, verbosity=0)
            assert not os.path.exists(test_path)
            assert _keys(settings, "test_app.db") == []
            assert connection.settings_dict["OPTIONS"] is real_options
            assert connection.settings_dict["NAME"] == real.path
    finally:
        connection.settings_dict["TEST"]["NAME"] = None
    assert names() == ["real data"]
    assert real.restored_rows(tmp_path) == [("real data",)]


def test_test_database_clones_have_their_own_replicas(tmp_path: Path,
                                                      make_settings: MakeSettings) -> None:
    settings = make_settings("file")
    real = open_database(str(tmp_path / "app.db"), settings)
    connection.close()
    connection.settings_dict["TEST"]["NAME"] = str(tmp_path / "test_app.db")
    try:
        connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
        Item.objects.create(name="in the template")
        connection.creation.clone_test_db(suffix="1", verbosity=0)
        clone = connection.creation.get_test_db_clone_settings("1")
        assert clone["NAME"] == str(tmp_path / "test_app_1.db")
        assert clone["OPTIONS"]["db_name"] == "test_app_1.db"
        worker = ConnectionHandler({"default": clone})["default"]
        with worker.cursor() as cursor:
            cursor.execute(f"INSERT INTO {ITEMS}(name, data, on_sale) VALUES ('clone', '{{}}', 0)")
            cursor.execute("PRAGMA bottomless_status")
            assert json.loads(cursor.fetchone()[0])["db_name"] == "test_app_1.db"
        worker.close()
        copy = restored(tmp_path, settings, "test_app_1.db")
        assert rows(copy, f"SELECT name FROM {ITEMS} ORDER BY id") == [
            ("in the template",), ("clone",)]
        connection.creation.destroy_test_db(verbosity=0, suffix="1")
        assert _keys(settings, "test_app_1.db") == []
        assert names() == ["in the template"]
        connection.creation.destroy_test_db(real.path, verbosity=0)
    finally:
        connection.settings_dict["TEST"]["NAME"] = None
    assert _keys(settings, "test_app.db") == [] and _keys(settings, "app.db")


def test_a_test_database_never_replicates_onto_the_real_one(tmp_path: Path,
                                                            make_settings: MakeSettings) -> None:
    open_database(str(tmp_path / "app.db"), make_settings("file"))
    Item.objects.create(name="precious")
    connection.close()
    (tmp_path / "tests").mkdir()
    connection.settings_dict["TEST"]["NAME"] = str(tmp_path / "tests" / "app.db")
    try:
        with pytest.raises(ImproperlyConfigured, match="give TEST\\['NAME'\\] another"):
            connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    finally:
        connection.settings_dict["TEST"]["NAME"] = None
    assert names() == ["precious"]


def test_in_memory_test_database_is_not_replicated(tmp_path: Path,
                                                   make_settings: MakeSettings) -> None:
    settings = make_settings("file")
    real = open_database(str(tmp_path / "app.db"), settings)
    connection.close()
    name = connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        assert "mode=memory" in name
        Item.objects.create(name="in memory")
        assert names() == ["in memory"]
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA bottomless_status")
            assert not cursor.fetchone()
    finally:
        connection.creation.destroy_test_db(real.path, verbosity=0)
    store_dir = Path(settings.bucket)
    assert sorted(p.name for p in store_dir.iterdir()) == ["app.db"]


# ---------------------------------------------------------------- the example project


def _manage(*args: str, env: dict[str, str], timeout: float = 120) -> str:
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=EXAMPLE, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def example_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "NOTES_DB": str(tmp_path / "notes.sqlite3"),
            "LIBSQL_BOTTOMLESS_BACKEND": "file",
            "LIBSQL_BOTTOMLESS_BUCKET": str(tmp_path / "replicas")}


_ADD_NOTES = """
from notes.models import Note, Notebook
work = Notebook.objects.create(name="work")
Note.objects.create(notebook=work, title="ship it", meta={"pinned": True, "tags": ["x"]})
Note.objects.create(notebook=work, title="later")
"""
_SHOW_NOTES = """
import json
from notes.models import Note
print(json.dumps([n.as_dict() for n in Note.objects.select_related("notebook")]))
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _get(url: str, deadline: float) -> Any:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_example_project_comes_back_from_the_bucket(example_env: dict[str, str],
                                                    tmp_path: Path) -> None:
    _manage("migrate", "--verbosity=0", env=example_env)
    _manage("shell", "-c", _ADD_NOTES, env=example_env)
    before = json.loads(_manage("shell", "-c", _SHOW_NOTES, env=example_env).splitlines()[-1])
    assert [note["title"] for note in before] == ["ship it", "later"]
    remove_db(example_env["NOTES_DB"])
    after = json.loads(_manage("shell", "-c", _SHOW_NOTES, env=example_env).splitlines()[-1])
    assert after == before

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=EXAMPLE, env=example_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        listed = _get(f"http://127.0.0.1:{port}/", time.monotonic() + 30)
        pinned = _get(f"http://127.0.0.1:{port}/?pinned=1", time.monotonic() + 5)
        replication = _get(f"http://127.0.0.1:{port}/status", time.monotonic() + 5)
    finally:
        server.terminate()
        server.communicate(timeout=30)
    assert listed["notes"] == before
    assert [note["title"] for note in pinned["notes"]] == ["ship it"]
    assert replication["replicating"] is True and replication["db_name"] == "notes.sqlite3"
    settings = bottomless.Settings(backend="file", bucket=example_env["LIBSQL_BOTTOMLESS_BUCKET"])
    copy = restored(tmp_path, settings, "notes.sqlite3")
    assert rows(copy, "SELECT title FROM notes_note ORDER BY id") == [("ship it",), ("later",)]


def test_example_project_tests_run_on_replicated_file_clones(example_env: dict[str, str],
                                                              tmp_path: Path) -> None:
    output = subprocess.run(
        [sys.executable, "manage.py", "test", "--parallel=2", "--verbosity=2", "--noinput"],
        cwd=EXAMPLE, env=example_env, capture_output=True, text=True, timeout=180,
    )
    assert output.returncode == 0, output.stdout + output.stderr
    assert "Cloning test database" in output.stderr
    assert "Ran 3 tests" in output.stderr
    replicas = tmp_path / "replicas"
    assert not replicas.exists() or list(replicas.iterdir()) == []  # test replicas dropped
    assert not (tmp_path / "test_notes.sqlite3").exists()


_SPAWN_SETTINGS = """
import multiprocessing
from notes_site.settings import *  # noqa: F403

DATABASES["default"].pop("TEST")  # Django's default: an in-memory test database
multiprocessing.set_start_method("spawn", force=True)  # macOS's and Windows's default
"""


def test_parallel_tests_on_an_in_memory_database_under_spawn(example_env: dict[str, str],
                                                              tmp_path: Path) -> None:
    """Django hands the database to spawned workers with the standard library's sqlite3,
    another SQLite; the backend does it with its own module instead."""
    (tmp_path / "spawn_settings.py").write_text(_SPAWN_SETTINGS)
    env = {**example_env, "DJANGO_SETTINGS_MODULE": "spawn_settings",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(EXAMPLE), *sys.path])}
    # two test classes, one a worker each; not the one that checks the test database replicates
    labels = ["notes.tests.NotesTests", "notes.tests.ReplicationTests.test_bad_request"]
    output = subprocess.run(
        [sys.executable, "manage.py", "test", *labels, "--parallel=2", "--verbosity=2",
         "--noinput"], cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=180,
    )
    assert output.returncode == 0, output.stdout + output.stderr
    assert "Cloning test database" in output.stderr and "Ran 2 tests" in output.stderr
    replicas = tmp_path / "replicas"
    assert not replicas.exists() or list(replicas.iterdir()) == []  # nothing replicated


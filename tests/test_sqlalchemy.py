"""The ``sqlite+bottomless`` SQLAlchemy dialect, end to end.

Core and ORM round trips (file backend, and SeaweedFS where the S3 path matters), savepoints,
column types, pooling, Alembic, pandas, restore after an ORM workload, the cost of a commit in
S3 requests, a store failure at COMMIT, and configuration errors in the URL.
"""

from __future__ import annotations

import datetime as dt
import textwrap
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from faultproxy import FaultProxy
from helpers import FailingStore, integrity, replicator, restored, rows
from sqlalchemy import exc, orm, pool
from sqlalchemy.orm import Mapped, mapped_column

import bottomless
import bottomless.dbapi
from bottomless.errors import ConfigError, StoreError
from bottomless.sqlalchemy import BottomlessDialect

MakeSettings = Callable[..., bottomless.Settings]
BACKENDS = ["file", pytest.param("s3", marks=pytest.mark.s3)]


class Base(orm.DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "account"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50), unique=True)
    balance: Mapped[Decimal] = mapped_column(sa.Numeric(12, 2))
    opened: Mapped[dt.datetime] = mapped_column(sa.DateTime)
    profile: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    entries: Mapped[list[Entry]] = orm.relationship(
        back_populates="account", cascade="all, delete-orphan"
    )


class Entry(Base):
    __tablename__ = "entry"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("account.id"))
    amount: Mapped[Decimal] = mapped_column(sa.Numeric(12, 2))
    account: Mapped[Account] = orm.relationship(back_populates="entries")


def url(path: Path, **query: str) -> sa.URL:
    """``sqlite+bottomless:////abs/path?query`` for a database file."""
    return sa.URL.create("sqlite+bottomless", database=str(path), query=query)


def file_query(settings: bottomless.Settings) -> dict[str, str]:
    return {"backend": "file", "bucket": settings.bucket}


@pytest.fixture
def make_engine() -> Iterator[Callable[..., sa.Engine]]:
    """``make_engine(url, **create_engine_kwargs)``; every engine is disposed afterwards."""
    made: list[sa.Engine] = []

    def build(target: Any, **kwargs: Any) -> sa.Engine:
        engine = sa.create_engine(target, **kwargs)
        made.append(engine)
        return engine

    yield build
    for engine in made:
        engine.dispose()


def engine_for(make_engine: Callable[..., sa.Engine], path: Path,
               settings: bottomless.Settings, **kwargs: Any) -> sa.Engine:
    """A file-backend engine configured by URL; any other backend through connect_args."""
    if settings.backend == "file":
        return make_engine(url(path, **file_query(settings)), **kwargs)
    return make_engine(url(path), connect_args={"settings": settings}, **kwargs)


def plain(path: str | Path) -> sa.Engine:
    """Stock sqlite+pysqlite on a file (for reading restored copies)."""
    return sa.create_engine(sa.URL.create("sqlite+pysqlite", database=str(path)),
                            poolclass=pool.NullPool)


def account(i: int) -> Account:
    return Account(
        name=f"acct-{i}", balance=Decimal(f"{i}.{i % 100:02d}"),
        opened=dt.datetime(2024, 1, 1, 12, 0, i % 60, 1000 * i),
        profile={"tier": i % 3, "tags": [f"t{i}", "ü✓"], "nested": {"n": None}},
    )


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("backend", BACKENDS)
def test_core_round_trip_replicates(tmp_path: Path, make_settings: MakeSettings,
                                    make_engine: Callable[..., sa.Engine], backend: str) -> None:
    settings = make_settings(backend)
    engine = engine_for(make_engine, tmp_path / "core.db", settings)
    assert isinstance(engine.dialect, BottomlessDialect)
    assert engine.dialect.dbapi is bottomless.dbapi
    metadata = sa.MetaData()
    items = sa.Table("items", metadata, sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("label", sa.String(20)), sa.Column("qty", sa.Integer))
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(items.insert(), [{"label": f"item {i}", "qty": i} for i in range(50)])
        conn.execute(items.update().where(items.c.id == 1).values(qty=1000))
        conn.execute(items.delete().where(items.c.qty > 40, items.c.qty < 1000))
    query = sa.select(items.c.label, items.c.qty).order_by(items.c.id)
    with engine.connect() as conn:
        live = conn.execute(query).all()
    assert len(live) == 41 and live[0] == ("item 0", 1000)
    engine.dispose()

    copy = restored(tmp_path, settings, "core.db")
    with plain(copy).connect() as conn:
        assert conn.execute(query).all() == live


def _orm_workload(engine: sa.Engine) -> None:
    Base.metadata.create_all(engine)
    with orm.Session(engine) as session:
        session.add_all(account(i) for i in range(1, 21))
        session.commit()
        for acct in session.scalars(sa.select(Account)):
            acct.entries.extend(Entry(amount=Decimal(k) / 4) for k in range(acct.id % 4))
        session.commit()
        victim = session.scalars(sa.select(Account).where(Account.name == "acct-7")).one()
        session.delete(victim)
        session.execute(sa.update(Account).where(Account.id > 15)
                        .values(balance=Account.balance * 2))
        session.commit()
        session.add(Account(name="late", balance=Decimal("0.10"),
                            opened=dt.datetime(1999, 12, 31), profile={}))
        session.commit()


@pytest.mark.parametrize("backend", BACKENDS)
def test_restore_equals_local_file_after_orm_workload(
        tmp_path: Path, make_settings: MakeSettings,
        make_engine: Callable[..., sa.Engine], backend: str) -> None:
    settings = make_settings(backend)
    path = tmp_path / "orm.db"
    engine = engine_for(make_engine, path, settings)
    _orm_workload(engine)
    engine.dispose()

    copy = restored(tmp_path, settings, "orm.db")
    assert integrity(copy) == "ok"
    for sql in ("SELECT * FROM account ORDER BY id", "SELECT * FROM entry ORDER BY id",
                "SELECT sql FROM sqlite_master ORDER BY name"):
        assert rows(copy, sql) == rows(str(path), sql), sql
    assert len(rows(copy, "SELECT * FROM account")) == 20
    assert len(rows(copy, "SELECT * FROM entry")) == sum(i % 4 for i in range(1, 21) if i != 7)


def test_orm_types_round_trip(tmp_path: Path, make_settings: MakeSettings,
                              make_engine: Callable[..., sa.Engine]) -> None:
    """JSON, Numeric and DateTime come back as equal Python values, live and from a restore."""
    settings = make_settings("file")
    engine = engine_for(make_engine, tmp_path / "types.db", settings)
    Base.metadata.create_all(engine)
    values = {
        "name": "types",
        "balance": Decimal("-1234567.89"),
        "opened": dt.datetime(2024, 2, 29, 23, 59, 59, 999999),
        "profile": {"list": [1, 2.5, "three", None, True], "ünï": {"ç": "✓"}, "big": 2**53},
    }
    with orm.Session(engine) as session:
        session.add(Account(**values))
        session.commit()
    query = sa.select(Account.name, Account.balance, Account.opened, Account.profile)
    with orm.Session(engine) as session:
        live = session.execute(query).one()
        by_json = session.scalars(
            sa.select(Account.name).where(Account.profile["ünï"]["ç"].as_string() == "✓")
        ).all()
    assert live._asdict() == values
    assert isinstance(live.balance, Decimal) and isinstance(live.opened, dt.datetime)
    assert by_json == ["types"]
    engine.dispose()

    with orm.Session(plain(restored(tmp_path, settings, "types.db"))) as session:
        assert session.execute(query).one()._asdict() == values


def test_async_durability_from_the_url(tmp_path: Path, make_settings: MakeSettings,
                                       make_engine: Callable[..., sa.Engine]) -> None:
    """``durability=async`` in the URL; status and wait_durable take the pooled connection."""
    settings = make_settings("file")
    path = tmp_path / "async.db"
    engine = make_engine(url(path, durability="async", **file_query(settings)))
    _orm_workload(engine)
    with engine.connect() as conn:
        dbapi_connection = conn.connection.dbapi_connection
        assert bottomless.status(dbapi_connection)["durability"] == "async"
        bottomless.wait_durable(dbapi_connection, timeout=30)
        live = conn.exec_driver_sql("SELECT * FROM account ORDER BY id").all()
    copy = restored(tmp_path, settings, "async.db")  # while the engine is still open
    assert rows(copy, "SELECT * FROM account ORDER BY id") == [tuple(r) for r in live]
    assert len(live) == 20


# ------------------------------------------------------------------ transactions


def _savepoint_recipe(engine: sa.Engine) -> None:
    """SQLAlchemy's documented pysqlite recipe: the driver stays out, SQLAlchemy emits BEGIN."""

    @sa.event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN")


def test_begin_nested_savepoints(tmp_path: Path, make_settings: MakeSettings,
                                 make_engine: Callable[..., sa.Engine]) -> None:
    settings = make_settings("file")
    engine = engine_for(make_engine, tmp_path / "nested.db", settings)
    _savepoint_recipe(engine)
    Base.metadata.create_all(engine)
    with orm.Session(engine) as session:
        session.add(account(1))
        with session.begin_nested() as inner:
            session.add(account(2))
            session.flush()
            inner.rollback()
        with session.begin_nested():
            session.add(account(3))
        with pytest.raises(exc.IntegrityError), session.begin_nested():
            session.add(Account(name="acct-1", balance=Decimal(0), opened=dt.datetime.now(),
                                profile={}))  # duplicate name: only this savepoint goes
        session.add(account(4))
        session.commit()
    expected = ["acct-1", "acct-3", "acct-4"]
    with orm.Session(engine) as session:
        assert session.scalars(sa.select(Account.name).order_by(Account.name)).all() == expected
    engine.dispose()
    copy = restored(tmp_path, settings, "nested.db")
    assert [r[0] for r in rows(copy, "SELECT name FROM account ORDER BY name")] == expected


# ------------------------------------------------------------------ pooling


def test_file_database_pool(tmp_path: Path, make_settings: MakeSettings,
                            make_engine: Callable[..., sa.Engine]) -> None:
    """A file database gets pysqlite's QueuePool; its connections may move between threads."""
    settings = make_settings("file")
    engine = engine_for(make_engine, tmp_path / "pool.db", settings, pool_size=3)
    assert isinstance(engine.pool, pool.QueuePool)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE hits(thread INTEGER, n INTEGER)")
        first = conn.connection.dbapi_connection
    assert isinstance(first, bottomless.dbapi.Connection)

    # check_same_thread is off for pooled file connections: another thread reuses this one
    seen: list[Any] = []
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for n in range(20):
                with engine.begin() as conn:
                    conn.execute(sa.text("INSERT INTO hits VALUES (:t, :n)"), {"t": t, "n": n})
                    seen.append(conn.connection.dbapi_connection)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert any(c is first for c in seen), "the first connection was not reused by a thread"
    assert len(seen) == 80
    assert engine.pool.checkedout() == 0 and engine.pool.checkedin() <= 3  # pool_size kept
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*), count(DISTINCT thread) FROM hits")).one() \
            == (80, 4)
    engine.dispose()
    copy = restored(tmp_path, settings, "pool.db")
    assert rows(copy, "SELECT count(*) FROM hits") == [(80,)]


def test_memory_database_is_plain_sqlite(tmp_path: Path, make_settings: MakeSettings,
                                         make_engine: Callable[..., sa.Engine]) -> None:
    settings = make_settings("file")
    engine = make_engine("sqlite+bottomless://", connect_args={"settings": settings})
    assert isinstance(engine.pool, pool.SingletonThreadPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t(x)")
        conn.exec_driver_sql("INSERT INTO t VALUES (42)")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT x FROM t").scalar() == 42
        assert conn.exec_driver_sql("SELECT 'abc' REGEXP 'b+'").scalar() == 1  # pysqlite's hook
    assert not Path(settings.bucket).exists(), "an in-memory database was replicated"


def test_timeout_in_the_url_is_the_busy_timeout(tmp_path: Path, make_settings: MakeSettings,
                                                make_engine: Callable[..., sa.Engine]) -> None:
    settings = make_settings("file")
    engine = make_engine(url(tmp_path / "busy.db", timeout="2.5", **file_query(settings)))
    _, kwargs = engine.dialect.create_connect_args(engine.url)
    assert kwargs["timeout"] == 2.5
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 2500


def test_attached_database_by_uri_is_replicated(tmp_path: Path, make_settings: MakeSettings,
                                                make_engine: Callable[..., sa.Engine]) -> None:
    """ATTACH by URI carries its own settings (a plain file name would use the environment's)."""
    settings = make_settings("file")
    engine = make_engine(url(tmp_path / "main.db", **file_query(settings)))
    other = f"file:{tmp_path / 'other.db'}?backend=file&bucket={settings.bucket}"

    @sa.event.listens_for(engine, "connect")
    def _attach(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute(f"ATTACH DATABASE '{other}' AS other")

    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE other.t(x)")
        conn.exec_driver_sql("INSERT INTO other.t VALUES ('attached')")
    engine.dispose()
    assert rows(restored(tmp_path, settings, "other.db"), "SELECT x FROM t") == [("attached",)]


def test_uri_true_passes_sqlite_uri_parameters(tmp_path: Path, make_settings: MakeSettings,
                                               make_engine: Callable[..., sa.Engine]) -> None:
    settings = make_settings("file")
    path = tmp_path / "ro.db"
    writer = make_engine(url(path, **file_query(settings)))
    with writer.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t(x)")
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    writer.dispose()
    reader = make_engine(sa.URL.create(
        "sqlite+bottomless", database=f"file:{path}",
        query={"uri": "true", "mode": "ro", **file_query(settings)},
    ))
    with reader.connect() as conn:
        assert conn.exec_driver_sql("SELECT x FROM t").all() == [(1,)]
        with pytest.raises(exc.OperationalError, match="readonly"):
            conn.exec_driver_sql("INSERT INTO t VALUES (2)")


# ------------------------------------------------------------------ tools


ENV_PY = """\
from alembic import context
from sqlalchemy import create_engine

config = context.config
engine = create_engine(config.get_main_option("sqlalchemy.url"))
with engine.connect() as connection:
    context.configure(connection=connection, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
"""

REVISIONS = {
    "0001_create.py": '''
        import sqlalchemy as sa
        from alembic import op

        revision = "0001"
        down_revision = None

        def upgrade():
            op.create_table(
                "note",
                sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("body", sa.Text, nullable=False),
            )
            op.bulk_insert(sa.table("note", sa.column("body")), [{"body": "kept"}])

        def downgrade():
            op.drop_table("note")
    ''',
    "0002_author.py": '''
        import sqlalchemy as sa
        from alembic import op

        revision = "0002"
        down_revision = "0001"

        def upgrade():
            with op.batch_alter_table("note") as batch:  # SQLite: copy into a new table
                batch.add_column(sa.Column("author", sa.String(40), server_default="anon"))
                batch.alter_column("body", existing_type=sa.Text, nullable=True)
                batch.create_index("ix_note_author", ["author"])

        def downgrade():
            with op.batch_alter_table("note") as batch:
                batch.drop_index("ix_note_author")
                batch.drop_column("author")
    ''',
}


def test_alembic_migration(tmp_path: Path, make_settings: MakeSettings) -> None:
    settings = make_settings("file")
    scripts = tmp_path / "migrations"
    (scripts / "versions").mkdir(parents=True)
    (scripts / "env.py").write_text(ENV_PY)
    for name, source in REVISIONS.items():
        (scripts / "versions" / name).write_text(textwrap.dedent(source))
    target = url(tmp_path / "migrated.db", **file_query(settings))
    config = Config()
    config.set_main_option("script_location", str(scripts))
    # the rendered URL percent-encodes the bucket path; "%" is special in Alembic's config
    rendered = target.render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))

    command.upgrade(config, "head")

    path = str(tmp_path / "migrated.db")
    assert rows(path, "SELECT version_num FROM alembic_version") == [("0002",)]
    assert rows(path, "SELECT id, body, author FROM note") == [(1, "kept", "anon")]
    copy = restored(tmp_path, settings, "migrated.db")
    assert rows(copy, "SELECT name FROM pragma_index_list('note')") == [("ix_note_author",)]
    assert rows(copy, "SELECT * FROM note") == rows(path, "SELECT * FROM note")

    command.downgrade(config, "0001")

    assert rows(path, "SELECT version_num FROM alembic_version") == [("0001",)]
    columns = [r[1] for r in rows(path, "PRAGMA table_info(note)")]
    assert columns == ["id", "body"]
    copy = restored(tmp_path, settings, "migrated.db")
    assert rows(copy, "SELECT * FROM note") == [(1, "kept")]


def test_pandas_to_sql_and_read_sql(tmp_path: Path, make_settings: MakeSettings,
                                    make_engine: Callable[..., sa.Engine]) -> None:
    settings = make_settings("file")
    engine = engine_for(make_engine, tmp_path / "frames.db", settings)
    frame = pd.DataFrame({
        "city": ["Oslo", "Zürich", "São Paulo", "Kraków"],
        "population": [709_037, 421_878, 11_451_999, 803_282],
        "share": [0.25, 0.125, 0.5, 0.0625],
        "counted": pd.to_datetime(["2021-01-01", "2022-06-30 12:00", "2022-08-01",
                                   "2021-12-31 23:59:59.5"], format="ISO8601"),
    })
    written = frame.to_sql("cities", engine, index=False, chunksize=2)
    assert written == len(frame)
    frame.iloc[:2].to_sql("cities", engine, index=False, if_exists="append")

    back = pd.read_sql("SELECT * FROM cities ORDER BY rowid", engine, parse_dates=["counted"])
    expected = pd.concat([frame, frame.iloc[:2]], ignore_index=True)
    pd.testing.assert_frame_equal(back, expected, check_dtype=False)
    assert pd.read_sql_table("cities", engine).shape == (6, 4)
    engine.dispose()

    copy = plain(restored(tmp_path, settings, "frames.db"))
    from_copy = pd.read_sql("SELECT * FROM cities ORDER BY rowid", copy, parse_dates=["counted"])
    pd.testing.assert_frame_equal(from_copy, back)


# ------------------------------------------------------------------ S3 request cost


@pytest.mark.s3
def test_a_sync_commit_through_sqlalchemy_is_one_put(
        tmp_path: Path, seaweed: Any, s3_settings: dict[str, Any],
        make_engine: Callable[..., sa.Engine]) -> None:
    """An ORM commit is one create-only PUT: no LIST, HEAD, GET or second PUT."""
    with FaultProxy(seaweed.endpoint, rate=0.0) as proxy:
        settings = bottomless.Settings(**{**s3_settings, "endpoint": proxy.endpoint})
        engine = make_engine(url(tmp_path / "cost.db", durability="sync"),
                             connect_args={"settings": settings})
        Base.metadata.create_all(engine)
        with orm.Session(engine) as session:
            session.add(account(0))
            session.commit()  # the connection, its replicator and the lease are in place
            before = len(proxy.seen)
            for i in range(1, 13):
                session.add(account(i))
                session.commit()
                session.scalars(sa.select(Account.id)).all()  # reads cost nothing
            during = proxy.seen[before:]
        engine.dispose()
    assert len(during) == 12, during
    assert all(r.startswith("PUT /") and "/commits/" in r for r in during), during
    assert len(set(during)) == 12


# ------------------------------------------------------------------ failures



def _chain(error: BaseException | None) -> Iterator[BaseException]:
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_store_failure_at_commit(tmp_path: Path, make_settings: MakeSettings,
                                 make_engine: Callable[..., sa.Engine], mode: str) -> None:
    """session.commit() raises OperationalError; rollback and carry on; nothing of it survives."""
    settings = make_settings("file")
    path = tmp_path / "fail.db"
    engine = engine_for(make_engine, path, settings)

    @sa.event.listens_for(engine, "connect")
    def _journal_mode(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute(f"PRAGMA journal_mode={mode}")

    Base.metadata.create_all(engine)
    with orm.Session(engine) as session:
        session.add(account(1))
        session.commit()
        store = FailingStore(replicator(str(path)).store)
        replicator(str(path)).store = store
        store.down = True
        session.add(account(2))
        session.add(Entry(account_id=1, amount=Decimal("9.99")))
        with pytest.raises(exc.OperationalError) as info:
            session.commit()
        assert isinstance(info.value.orig, bottomless.dbapi.OperationalError)
        assert isinstance(info.value.orig, StoreError)  # and says which bottomless error
        assert any("injected outage" in str(e) for e in _chain(info.value))
        session.rollback()
        store.down = False
        session.add(account(3))
        session.commit()
        assert session.scalars(sa.select(Account.name).order_by(Account.id)).all() == [
            "acct-1", "acct-3"]
        assert session.scalars(sa.select(Entry)).all() == []
    engine.dispose()

    expected = [("acct-1",), ("acct-3",)]
    assert rows(str(path), "SELECT name FROM account ORDER BY id") == expected
    assert rows(str(path), "SELECT count(*) FROM entry") == [(0,)]
    copy = restored(tmp_path, settings, "fail.db")
    assert rows(copy, "SELECT name FROM account ORDER BY id") == expected
    assert rows(copy, "SELECT count(*) FROM entry") == [(0,)]
    assert integrity(copy) == "ok"


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(("query", "named"), [
    ({"durability": "sometimes"}, ["durability", "'sometimes'", "'sync'", "'async'"]),
    ({"backend": "ftp"}, ["backend", "'ftp'", "'s3'"]),
    ({"max_lag": "soon", "parallelism": "0"}, ["max_lag", "'soon'", "parallelism"]),
    ({"bukcet": "x"}, ["bukcet", "bucket"]),
    ({"mode": "ro"}, ["mode", "uri=true"]),  # an SQLite URI parameter without uri=true
])
def test_url_settings_errors_name_the_parameter(tmp_path: Path, query: dict[str, str],
                                                named: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        sa.create_engine(url(tmp_path / "bad.db", **query))  # before any connection is made
    for word in named:
        assert word in str(info.value)
    assert not (tmp_path / "bad.db").exists()


def test_repeated_url_setting_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bucket"):
        sa.create_engine(f"sqlite+bottomless:///{tmp_path}/x.db?bucket=a&bucket=b")


def test_connect_args_settings_must_be_settings(tmp_path: Path,
                                                make_engine: Callable[..., sa.Engine]) -> None:
    engine = make_engine(url(tmp_path / "x.db"), connect_args={"settings": {"bucket": "b"}})
    with pytest.raises(ConfigError, match=r"bottomless\.Settings"):
        engine.connect()


def test_url_settings_override_connect_args(tmp_path: Path, make_settings: MakeSettings,
                                            make_engine: Callable[..., sa.Engine]) -> None:
    given = make_settings("file")  # connect_args: bucket A, compression zstd
    other = make_settings("file")  # the URL's bucket B wins, the rest of A stays
    engine = make_engine(url(tmp_path / "over.db", bucket=other.bucket, db_name="renamed"),
                         connect_args={"settings": given.model_copy(update={"lease_ttl": 0})})
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t(x)")
        conn.exec_driver_sql("INSERT INTO t VALUES ('where am I')")
    engine.dispose()
    assert not Path(given.bucket).exists()
    copy = restored(tmp_path, other, "renamed")
    assert rows(copy, "SELECT x FROM t") == [("where am I",)]
    assert not list(Path(other.bucket).glob("*/lease"))  # lease_ttl=0 came from connect_args

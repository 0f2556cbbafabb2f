"""Metrics: the figures of writers and replicas, as a dict and as Prometheus scrapes them."""

from __future__ import annotations

import logging
import math
import pathlib
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import apsw
import pytest
from helpers import FailingStore, replicator, wait_for
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import bottomless
from bottomless import metrics
from bottomless.backends.counting import CountingStore
from bottomless.backends.memory import MemoryPageStore
from bottomless.errors import ObjectNotFoundError, StoreError
from bottomless.metrics.figures import FIGURES, merge
from bottomless.replica import Replica
from bottomless.replica.live import live_replicas

MakeSettings = Callable[..., bottomless.Settings]
COMMITS = 7


@pytest.fixture
def db_name() -> str:
    """A database name no other test's writer or replica in this process uses."""
    return f"metrics-{uuid.uuid4().hex[:12]}.db"


@pytest.fixture
def writer(tmp_path: Any, make_settings: MakeSettings, db_name: str) -> Iterator[Any]:
    """A writer (memory backend) that has made COMMITS commits."""
    settings = make_settings("memory", db_name=db_name)
    db = bottomless.connect(str(tmp_path / "writer.db"), settings)
    db.execute("CREATE TABLE t(x)")
    for i in range(COMMITS - 1):
        db.execute("INSERT INTO t VALUES(?)", (i,))
    yield db
    db.close()


def scrape(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape of ``registry``, by name and labels."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
    }


def labels(db_name: str, role: str, **more: str) -> frozenset[tuple[str, str]]:
    return frozenset({"db": db_name, "role": role, **more}.items())


def test_a_writer_reports_commits_requests_bytes_and_upload_times(
    writer: Any, db_name: str
) -> None:
    figures = metrics.snapshot()["writer"][db_name]
    assert figures["commits_total"] == COMMITS
    assert figures["store_requests_total"]["put"] >= COMMITS
    assert figures["store_errors_total"] == {}
    assert figures["errors_total"] == 0
    assert figures["uploaded_objects_total"] >= COMMITS
    assert figures["uploaded_bytes_total"] > 0
    assert figures["generations_started_total"] == 1
    assert figures["writer_replicated_commit"] == COMMITS
    assert figures["writer_pending_commits"] == 0 and figures["writer_lag_seconds"] == 0
    assert figures["writer_replicating"] == 1
    status = bottomless.status(writer)
    assert figures["generation_info"] == {status["generation"]: 1}
    histogram = figures["upload_seconds"]
    assert histogram["count"] == COMMITS and histogram["buckets"][math.inf] == COMMITS
    assert 0 < histogram["sum"] < 60
    counts = list(histogram["buckets"].values())
    assert counts == sorted(counts), "buckets are cumulative"

    registry = CollectorRegistry()
    metrics.register(registry)
    samples = scrape(registry)
    mine = labels(db_name, "writer")
    assert samples["bottomless_commits_total", mine] == COMMITS
    assert samples["bottomless_store_requests_total", labels(db_name, "writer", kind="put")] \
        >= COMMITS
    assert samples["bottomless_upload_seconds_count", mine] == COMMITS
    assert samples["bottomless_upload_seconds_bucket",
                   labels(db_name, "writer", le="+Inf")] == COMMITS
    assert samples["bottomless_uploaded_bytes_total", mine] == figures["uploaded_bytes_total"]
    assert samples["bottomless_errors_total", mine] == 0
    assert samples["bottomless_writer_replicated_commit", mine] == COMMITS
    assert samples["bottomless_generation_info",
                   labels(db_name, "writer", generation=status["generation"])] == 1


def test_a_failed_commit_counts_as_an_error(
        writer: Any, db_name: str, caplog: pytest.LogCaptureFixture) -> None:
    """Each refused commit counts; an outage is one error line, not one a commit; and the
    error is cleared from ``status()`` once a commit reaches the store again."""
    rep = replicator(writer.filename)
    rep.store = failing = FailingStore(rep.store)
    failing.down = True
    caplog.set_level(logging.WARNING, logger="bottomless")
    for _ in range(3):
        with pytest.raises(apsw.IOError) as info:
            writer.execute("INSERT INTO t VALUES('lost')")
        assert "replication failed" in str(info.value) and "injected outage" in str(info.value)
        assert isinstance(info.value.__cause__, StoreError)
    assert "injected outage" in bottomless.status(writer)["last_error"]
    refused = [r for r in caplog.records if "commit refused" in r.getMessage()]
    assert len(refused) == 1 and "injected outage" in refused[0].getMessage()
    failing.down = False
    writer.execute("INSERT INTO t VALUES('kept')")
    figures = metrics.snapshot()["writer"][db_name]
    assert figures["errors_total"] == 3
    assert figures["commits_total"] == COMMITS + 1
    assert bottomless.status(writer)["last_error"] is None
    again = [r for r in caplog.records if "commits go through again" in r.getMessage()]
    assert len(again) == 1 and "after 3 refused" in again[0].getMessage()


def test_a_closed_writer_is_no_longer_reported(
    tmp_path: Any, make_settings: MakeSettings, db_name: str
) -> None:
    db = bottomless.connect(str(tmp_path / "gone.db"), make_settings("file", db_name=db_name))
    db.execute("CREATE TABLE t(x)")
    assert metrics.snapshot()["writer"][db_name]["commits_total"] == 1
    db.close()
    assert db_name not in metrics.snapshot()["writer"]


def test_a_replica_reports_its_lag_and_applied_commit(
    writer: Any, db_name: str, tmp_path: Any, make_settings: MakeSettings
) -> None:
    settings = replicator(writer.filename).settings
    with Replica(str(tmp_path / "replica.db"), settings, poll_interval=0.05) as replica:
        writer.execute("INSERT INTO t VALUES('one more')")  # applied, not restored
        replica.wait_for(bottomless.position(writer), timeout=10)
        figures = metrics.snapshot()["replica"][db_name]
        registry = CollectorRegistry()
        metrics.register(registry)
        samples = scrape(registry)
    assert figures["replica_applied_commit"] == COMMITS + 1
    assert figures["commits_total"] >= 1
    assert figures["replica_lag_seconds"] is not None and figures["replica_lag_seconds"] >= 0
    assert figures["replica_running"] == 1 and figures["errors_total"] == 0
    assert figures["store_requests_total"]["get"] >= 1
    assert figures["downloaded_bytes_total"] > 0
    assert figures["replica_restores_total"] == 1
    mine = labels(db_name, "replica")
    assert samples["bottomless_replica_applied_commit", mine] == COMMITS + 1
    assert samples["bottomless_replica_lag_seconds", mine] == figures["replica_lag_seconds"]
    assert samples["bottomless_store_requests_total", labels(db_name, "replica", kind="get")] \
        >= 1
    assert samples["bottomless_commits_total", labels(db_name, "writer")] == COMMITS + 1
    assert db_name not in metrics.snapshot()["replica"], "a stopped replica is not reported"


def test_a_replica_cut_off_from_the_store_shows_it_and_recovers(
    writer: Any, db_name: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``replica_lag_seconds`` cannot tell an outage from an idle writer; the time of the last
    poll that worked can, and the outage's error is cleared once polls work again."""
    settings = replicator(writer.filename).settings
    with Replica(str(tmp_path / "cut.db"), settings, poll_interval=0.05) as replica:
        figure = "replica_last_poll_timestamp_seconds"
        wait_for(lambda: metrics.snapshot()["replica"][db_name][figure] is not None, 10)
        feed = replica._feed
        assert feed is not None

        def unreachable(*args: Any) -> Any:
            raise StoreError("the store is unreachable (injected)")

        monkeypatch.setattr(feed, "fetch", unreachable)
        wait_for(lambda: replica.status()["last_error"] is not None, 10)
        cut_at = metrics.snapshot()["replica"][db_name][figure]
        time.sleep(0.3)
        assert metrics.snapshot()["replica"][db_name][figure] == cut_at  # it stops moving
        monkeypatch.undo()
        wait_for(lambda: replica.status()["last_error"] is None, 10)
        figures = metrics.snapshot()["replica"][db_name]
        assert figures[figure] > cut_at and figures["errors_total"] >= 1
        assert figures["replica_running"] == 1


def test_the_live_replicas_hold_replicas_weakly_and_can_be_cleared(
    writer: Any, db_name: str, tmp_path: Any
) -> None:
    settings = replicator(writer.filename).settings
    replica = Replica(str(tmp_path / "replica.db"), settings, poll_interval=0.05).start()
    try:
        assert replica in live_replicas.replicas()
        live_replicas.clear()
        assert db_name not in metrics.snapshot()["replica"]
        live_replicas.add(replica)
        assert db_name in metrics.snapshot()["replica"]
    finally:
        replica.stop()
    assert replica not in live_replicas.replicas()


def test_two_objects_of_one_database_and_role_are_merged() -> None:
    one = {"commits_total": 2, "store_requests_total": {"get": 1},
           "replica_lag_seconds": 0.5, "replica_applied_commit": 9, "generation_info": {"g": 1}}
    two = {"commits_total": 3, "store_requests_total": {"get": 2, "list": 1},
           "replica_lag_seconds": 1.5, "replica_applied_commit": None,
           "generation_info": {"g": 1}}
    assert merge(one, two) == {
        "commits_total": 5, "store_requests_total": {"get": 3, "list": 1},
        "replica_lag_seconds": 1.5, "replica_applied_commit": 9, "generation_info": {"g": 1},
    }


def test_the_counting_store_counts_by_kind_and_counts_failures() -> None:
    class Broken(MemoryPageStore):
        def list_keys(self, prefix: str) -> list[str]:
            raise StoreError("LIST failed: injected")

    store = CountingStore(Broken(f"ns-{uuid.uuid4().hex}"))
    store.put_if_absent("a", b"abc")
    assert store.get("a") == b"abc"
    with pytest.raises(ObjectNotFoundError):
        store.get("missing")
    assert store.exists("a")
    with pytest.raises(StoreError):
        store.list_keys("")
    assert store.counts() == (
        {"put": 1, "get": 1, "get_missing": 1, "head": 1, "list": 1}, 3)
    assert store.failed() == {"list": 1}


def test_the_http_endpoint_serves_metrics(writer: Any, db_name: str) -> None:
    with metrics.start_http_server(0) as server:
        assert server.port > 0 and server.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(server.url, timeout=10) as response:
            assert response.status == 200
            text = response.read().decode()
    assert f'bottomless_commits_total{{db="{db_name}",role="writer"}} {COMMITS}.0' in text
    assert "# TYPE bottomless_upload_seconds histogram" in text


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_bottomless_does_not_import_prometheus_client() -> None:
    code = (
        "import sys, bottomless, bottomless.metrics\n"
        "bottomless.metrics.snapshot()\n"
        "print('prometheus_client' in sys.modules)\n"
    )
    assert _run(code) == "False"


def test_without_prometheus_client_the_dict_works_and_prometheus_says_what_to_install(
    tmp_path: Any,
) -> None:
    code = (
        "import sys\n"
        "sys.modules['prometheus_client'] = None  # as if not installed\n"
        "import bottomless\n"
        f"db = bottomless.connect({str(tmp_path / 'w.db')!r},"
        f" bottomless.Settings(backend='file', bucket={str(tmp_path / 'b')!r}))\n"
        "db.execute('CREATE TABLE t(x)')\n"
        "print(bottomless.metrics.snapshot()['writer']['w.db']['commits_total'])\n"
        "try:\n"
        "    bottomless.metrics.register()\n"
        "except ImportError as e:\n"
        "    print(e)\n"
        "db.close()\n"
    )
    commits, error = _run(code).splitlines()
    assert commits == "1"
    assert "pip install 'bottomless[metrics]'" in error


def test_the_guide_lists_every_metric_with_its_type_and_roles() -> None:
    guide = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "guides"
             / "metrics.md").read_text()
    rows = {
        cells[0].strip("`"): (cells[1], cells[2])
        for line in guide.splitlines() if line.startswith("| `bottomless_")
        for cells in [[cell.strip() for cell in line.strip("|").split("|")]]
    }
    assert rows == {
        f"bottomless_{figure.name}": (figure.type, ", ".join(figure.roles))
        for figure in FIGURES
    }

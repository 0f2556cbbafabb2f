"""The library functions behind ``bottomless ls``, ``verify`` and ``gc``."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from typing import Any

import pytest
from helpers import replicator, restored, rows

import bottomless
from bottomless import format as fmt

MakeSettings = Callable[..., bottomless.Settings]


def _replicate(tmp_path: Any, settings: bottomless.Settings, name: str = "app.db",
               commits: int = 5) -> list[Any]:
    """Create ``name``, commit ``commits`` inserts (snapshots as the settings say), close it."""
    path = str(tmp_path / name)
    db = bottomless.connect(path, settings)
    db.execute("CREATE TABLE t(x)")
    for i in range(commits):
        db.execute("INSERT INTO t VALUES(?)", (i,))
        replicator(path).wait_snapshot()
    expected = db.execute("SELECT * FROM t ORDER BY 1").fetchall()
    db.close()
    return expected


def _keys(settings: bottomless.Settings, db_name: str = "app.db") -> set[str]:
    store = bottomless.open_store(settings)
    try:
        return set(store.list_keys(f"{db_name}/"))
    finally:
        store.close()


def test_ls_lists_databases_generations_and_commits(tmp_path: Any,
                                                    make_settings: MakeSettings) -> None:
    settings = make_settings("file", snapshot_interval_commits=2)
    _replicate(tmp_path, settings)
    _replicate(tmp_path, settings, name="other.db", commits=1)
    assert sorted(bottomless.ls(settings=settings)) == ["app.db", "other.db"]

    generations = bottomless.ls("app.db", settings)
    assert [type(g) for g in generations] == [bottomless.GenerationInfo]
    generation = generations[0]
    assert generation.complete and generation.snapshots[0] == 0
    assert generation.last_commit == 6 and generation.commits == 6  # CREATE + 5 inserts

    commits = bottomless.ls("app.db", settings, generation=generation.generation)
    assert all(isinstance(c, bottomless.CommitInfo) for c in commits)
    assert [c.seq for c in commits] == list(range(1, 7))
    assert commits[-1].time == generation.last_commit_time

    assert bottomless.ls("ghost.db", settings) == []


def test_ls_reads_the_environment_without_settings(tmp_path: Any, make_settings: MakeSettings,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings("file")
    _replicate(tmp_path, settings, commits=1)
    monkeypatch.setenv("LIBSQL_BOTTOMLESS_BACKEND", "file")
    monkeypatch.setenv("LIBSQL_BOTTOMLESS_BUCKET", settings.bucket)
    assert bottomless.ls() == ["app.db"]


def test_ls_rejects_bad_arguments(make_settings: MakeSettings) -> None:
    settings = make_settings("memory")
    with pytest.raises(bottomless.ConfigError, match="db_name") as info:
        bottomless.ls(None, settings, generation="20261125T101500123Z-1a2b3c4d")  # type: ignore[call-overload]
    assert info.value.field == "db_name"
    with pytest.raises(bottomless.ConfigError, match="db_name"):
        bottomless.ls("../etc", settings)


def test_verify_reports_a_sound_replica_and_a_target(tmp_path: Any,
                                                     make_settings: MakeSettings) -> None:
    settings = make_settings("file", snapshot_interval_commits=2)
    _replicate(tmp_path, settings)
    report = bottomless.verify("app.db", settings)
    assert isinstance(report, bottomless.VerifyReport)
    assert report.ok and report.problems == [] and report.integrity == "ok"
    assert report.seq == 6 and report.objects > 0 and report.restore_seconds is not None

    assert bottomless.verify("app.db", settings, commit=3).seq == 3
    now = dt.datetime.now(dt.UTC).isoformat()
    assert bottomless.verify("app.db", settings, timestamp=now).seq == 6
    with pytest.raises(bottomless.ConfigError, match="not both"):
        bottomless.verify("app.db", settings, commit=3, timestamp=now)
    with pytest.raises(bottomless.ConfigError, match="ISO 8601"):
        bottomless.verify("app.db", settings, timestamp="yesterday")


def test_verify_names_a_corrupted_object(tmp_path: Any, make_settings: MakeSettings) -> None:
    settings = make_settings("file")
    _replicate(tmp_path, settings)
    victim = next(k for k in _keys(settings) if "/commits/" in k and fmt.seq_from_key(k) == 4)
    path = os.path.join(settings.bucket, victim)
    os.chmod(path, 0o644)
    with open(path, "r+b") as handle:
        data = bytearray(handle.read())
        data[len(data) // 2] ^= 0x10
        handle.seek(0)
        handle.write(bytes(data))
    report = bottomless.verify("app.db", settings)
    assert not report.ok
    assert any(victim in problem for problem in report.problems), report.problems


def test_gc_dry_run_then_delete(tmp_path: Any, make_settings: MakeSettings) -> None:
    settings = make_settings("file", snapshot_interval_commits=2)
    expected = _replicate(tmp_path, settings)
    before = _keys(settings)

    plan = bottomless.gc("app.db", settings, older_than=dt.timedelta(0), dry_run=True)
    assert isinstance(plan, bottomless.GcReport) and plan.dry_run
    assert plan.deleted and set(plan.deleted) <= before
    assert _keys(settings) == before, "a dry run deleted something"

    report = bottomless.gc("app.db", settings, older_than="0s")
    assert not report.dry_run and report.deleted == plan.deleted
    assert _keys(settings) == before - set(report.deleted)
    assert rows(restored(tmp_path, settings, "app.db")) == expected


def test_gc_defaults_come_from_settings(tmp_path: Any, make_settings: MakeSettings) -> None:
    settings = make_settings("file", retention="2w")
    _replicate(tmp_path, settings, commits=1)
    report = bottomless.gc("app.db", settings, dry_run=True)
    window = dt.datetime.fromisoformat(report.window_start)
    expected = dt.datetime.now(dt.UTC) - dt.timedelta(weeks=2)
    assert abs((window - expected).total_seconds()) < 60
    assert report.deleted == []
    # more snapshots kept than there are: every point stays, reported from the oldest one
    report = bottomless.gc("app.db", settings, keep_snapshots=5, dry_run=True)
    window = dt.datetime.fromisoformat(report.window_start)
    assert abs((window - dt.datetime.now(dt.UTC)).total_seconds()) < 60


def test_gc_rejects_bad_arguments(make_settings: MakeSettings) -> None:
    settings = make_settings("memory")
    with pytest.raises(bottomless.ConfigError, match="a week") as info:
        bottomless.gc("app.db", settings, older_than="a week")
    assert info.value.value == "a week"
    with pytest.raises(bottomless.ConfigError, match="keep_snapshots") as info:
        bottomless.gc("app.db", settings, keep_snapshots=-1)
    assert info.value.field == "keep_snapshots" and info.value.value == -1

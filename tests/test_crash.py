"""Crash tests: a child committing in a loop is SIGKILLed at random moments, again and again.

After every kill the replica is restored and checked (integrity, every acknowledged commit,
no partial transaction), and the next child reopens the same local file, which must continue
without a conflict. Kill counts: the default run does 24; ``-m slow`` runs 200 more.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from crash_writer import rows_in
from helpers import integrity, rows

import bottomless
from bottomless.restore import generations

HERE = os.path.dirname(os.path.abspath(__file__))
MakeSettings = Callable[..., bottomless.Settings]


def _env(settings: bottomless.Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIBSQL_BOTTOMLESS_")}
    for name in ("backend", "bucket", "endpoint", "region", "timeout", "max_retries",
                 "durability", "max_lag"):
        value = getattr(settings, name)
        if value is not None:
            env[f"LIBSQL_BOTTOMLESS_{name.upper()}"] = str(value)
    for name in ("access_key_id", "secret_access_key"):
        secret = getattr(settings, name)
        if secret is not None:
            env[f"LIBSQL_BOTTOMLESS_{name.upper()}"] = secret.get_secret_value()
    env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _expected_rows(txn: int) -> int:
    """Rows of ``txn`` left once every later transaction up to now has run (see crash_writer)."""
    return rows_in(txn)


def check_restored(path: str, acknowledged: int, newest: int | None = None) -> int:
    """Check a restored copy; return the last transaction it holds.

    Every transaction up to ``acknowledged`` must be there, none past ``newest`` (default
    ``acknowledged + 1``: at most the commit in flight), and none partially.
    """
    assert integrity(path) == "ok"
    tables = {r[0] for r in rows(path, "SELECT name FROM sqlite_master WHERE type='table'")}
    if tables != {"t", "meta"}:
        assert acknowledged == 0, f"tables {tables} missing after {acknowledged} commits"
        return 0
    last = rows(path, "SELECT v FROM meta WHERE k='last'")
    top = last[0][0] if last else 0
    assert top >= acknowledged, f"acknowledged commit {acknowledged} lost (restored {top})"
    newest = acknowledged + 1 if newest is None else newest
    assert top <= newest, f"restored {top}, more than the {newest} commits ever attempted"
    counts = dict(rows(path, "SELECT txn, count(*) FROM t GROUP BY txn"))
    assert sorted(counts) == list(range(1, top + 1)), "a transaction is missing entirely"
    for txn, count in counts.items():
        trimmed = any(t % 17 == 0 and t - 16 == txn for t in range(txn + 1, top + 1))
        want = min(1, _expected_rows(txn)) if trimmed else _expected_rows(txn)
        assert count == want, f"transaction {txn} is partial: {count} rows, expected {want}"
    return int(top)


def crash_loop(tmp_path: Any, settings: bottomless.Settings, mode: str, kills: int,
               seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    path = str(tmp_path / "crash.db")
    env = _env(settings)
    acknowledged = 0
    acknowledged_async = 0
    tally = {"kills": 0, "restores": 0, "lost": 0}
    for round_ in range(kills):
        child = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "crash_writer.py"), path, mode],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        time.sleep(rng.uniform(0.3, 1.2) * (2.5 if settings.backend == "s3" else 1))
        killed_at = time.time()
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=60)
        assert child.returncode == -signal.SIGKILL, (
            f"round {round_}: child exited with {child.returncode} before the kill:\n"
            f"{err.decode()[-3000:]}"
        )
        lines = [line.split() for line in out.decode().splitlines() if line.startswith("done")]
        done = [(int(n), float(at)) for _, n, at in lines]
        newest = max([acknowledged + 1] + [n + 1 for n, _ in done])
        if settings.durability == "async":
            # promised: every commit acknowledged more than max_lag before the kill
            old_enough = [n for n, at in done if at <= killed_at - settings.max_lag]
            required = max([acknowledged_async, *old_enough])
        else:
            required = max([acknowledged] + [n for n, _ in done])
        if done:
            acknowledged = max(acknowledged, done[-1][0])
        tally["kills"] += 1
        target = str(tmp_path / f"restored-{round_}.db")
        bottomless.restore(target, settings, db_name="crash.db")
        tally["restores"] += 1
        restored_top = check_restored(target, required, newest)
        acknowledged_async = restored_top if settings.durability == "async" else acknowledged
        os.unlink(target)
    # a last clean run on the same local file: no conflict, and the bucket matches the file
    finish = subprocess.run(
        [sys.executable, os.path.join(HERE, "crash_writer.py"), path, mode, "3"],
        capture_output=True, env=env, timeout=120,
    )
    assert finish.returncode == 0, finish.stderr.decode()[-3000:]
    target = str(tmp_path / "final.db")
    bottomless.restore(target, settings, db_name="crash.db")
    top = check_restored(target, acknowledged + 3)
    assert rows(target, "SELECT txn, j FROM t ORDER BY 1, 2") == rows(
        path, "SELECT txn, j FROM t ORDER BY 1, 2"
    )
    store = bottomless.open_store(settings)
    tally["generations"] = len(generations(store, "crash.db"))
    store.close()
    print(f"\ncrash tally ({mode}, {settings.backend}): {tally['kills']} kills,"
          f" {tally['restores']} restores, {tally['lost']} lost, {top} commits,"
          f" {tally['generations']} generations")
    return tally


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_crash_file_backend(tmp_path: Any, make_settings: MakeSettings, mode: str) -> None:
    tally = crash_loop(tmp_path, make_settings("file"), mode, kills=12, seed=hash(mode) & 0xFFFF)
    assert tally["kills"] == 12 and tally["lost"] == 0


def test_crash_async(tmp_path: Any, make_settings: MakeSettings) -> None:
    settings = make_settings("file", durability="async", max_lag=0.5)
    tally = crash_loop(tmp_path, settings, "wal", kills=8, seed=3)
    assert tally["kills"] == 8 and tally["lost"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_crash_s3_ci_slice(tmp_path: Any, make_settings: MakeSettings, mode: str) -> None:
    tally = crash_loop(tmp_path, make_settings("s3"), mode, kills=15, seed=7)
    assert tally["kills"] == 15 and tally["lost"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["sync", "async"])
@pytest.mark.parametrize("backend_name", ["file", "s3"])
@pytest.mark.parametrize("mode", ["delete", "truncate", "persist", "wal"])
def test_crash_soak(tmp_path: Any, make_settings: MakeSettings, mode: str,
                    backend_name: str, durability: str) -> None:
    settings = make_settings(backend_name, durability=durability, max_lag=1.0)
    tally = crash_loop(tmp_path, settings, mode, kills=13, seed=11)
    assert tally["kills"] == 13 and tally["lost"] == 0

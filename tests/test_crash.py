"""Crash tests: a child committing in a loop is SIGKILLed at random moments, again and again.

After every kill the replica is restored and checked (integrity, every acknowledged commit,
no partial transaction), and the next child reopens the same local file, which must continue
without a conflict. Background snapshots run every 20 commits, so kills land in them too.
Kill counts here: the default run does 32; ``-m slow`` runs 238 more, 30 of them in the
``-m slow -k ci_slice`` slice. test_crash_points.py adds 48 and 182 more, 20 of them in the
slice. Each test prints a tally line, each module a totals line (pytest ``-s`` shows them).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from crash_writer import rows_in
from helpers import integrity, rows
from pydantic import SecretStr

import bottomless
from bottomless import format as fmt
from bottomless.backends.base import PageStore
from bottomless.ops.snapshots import snapshot_seqs
from bottomless.ops.targets import generations

HERE = os.path.dirname(os.path.abspath(__file__))
MakeSettings = Callable[..., bottomless.Settings]


#: how late an async upload may be, beyond ``max_lag``, before a crash test calls the commit
#: lost: the bound holds for an uploader that gets the CPU, which a machine running the
#: suite on two cores does not always give it (tests/test_async.py checks the bound itself)
LAG_SLACK = 0.5


def child_env(settings: bottomless.Settings, **extra: str) -> dict[str, str]:
    """Environment for a child process that opens the replica ``settings`` describe.

    Every field set explicitly on ``settings`` becomes its ``LIBSQL_BOTTOMLESS_*`` variable;
    ``extra`` adds more variables (``CRASH_*`` for crash_writer, or more settings).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIBSQL_BOTTOMLESS_")}
    for name in sorted(settings.model_fields_set):
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is not None:
            env[f"LIBSQL_BOTTOMLESS_{name.upper()}"] = str(value)
    env.update(extra)
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


def kill_marks(store: PageStore, db_name: str) -> set[str]:
    """Traces a kill leaves in the bucket: uploads that started and never finished.

    ``<generation>`` for a generation without a snapshot (its initial upload was cut short),
    ``<generation>@<seq>`` for parts of a snapshot whose manifest never arrived.
    """
    marks: set[str] = set()
    for generation in generations(store, db_name):
        seqs = set(snapshot_seqs(store, db_name, generation))
        if not seqs:
            marks.add(generation)
            continue
        for key in store.list_keys(f"{fmt.generations_prefix(db_name)}{generation}/parts/"):
            seq = int(key.rsplit("/", 1)[-1].split("-")[0])
            if seq not in seqs:
                marks.add(f"{generation}@{seq}")
    return marks


def kill_landing(lines: list[str], new_marks: set[str]) -> list[str]:
    """Where a kill landed, from the child's last lines and the traces it left in the bucket."""
    places = []
    last = lines[-1].split() if lines else []
    if last and last[0] == "checkpoint":
        places.append("checkpoint")
    if any("@" in m for m in new_marks):
        places.append("snapshot")
    if any("@" not in m for m in new_marks):
        places.append("generation")
    return places


#: where a kill can be seen to have landed, and how the tally line names it
PLACES = {"checkpoint": "checkpoints", "snapshot": "snapshot uploads",
          "generation": "generation uploads", "gc": "gc deletes"}


#: kills, restores and losses of every crash test so far, for the totals line of each module
TOTALS = {"tests": 0, "kills": 0, "restores": 0, "lost": 0}


@pytest.fixture(scope="module", autouse=True)
def crash_totals() -> Iterator[None]:
    """Print the totals of a crash test module once its tests have run."""
    before = dict(TOTALS)
    yield
    done = {k: TOTALS[k] - before[k] for k in TOTALS}
    if done["tests"]:
        print(f"\ncrash totals ({done['tests']} tests): {done['kills']} kills,"
              f" {done['restores']} restores, {done['lost']} lost")


def print_tally(label: str, tally: dict[str, int], extra: str = "") -> None:
    """The one line every crash test prints: kills, restores, and zero lost."""
    TOTALS["tests"] += 1
    for key in ("kills", "restores", "lost"):
        TOTALS[key] += tally[key]
    where = ", ".join(f"{tally[k]} in {name}" for k, name in PLACES.items() if tally.get(k))
    print(f"\ncrash tally ({label}): {tally['kills']} kills, {tally['restores']} restores,"
          f" {tally['lost']} lost{' (' + where + ')' if where else ''}{extra}")


def new_tally() -> dict[str, int]:
    """Counters of one crash test."""
    return {"kills": 0, "restores": 0, "lost": 0}


def wait_for_line(child: subprocess.Popen[bytes], prefix: str, rng: random.Random,
                  within: float) -> bytes:
    """Read the child's output until its newest line starts with ``prefix``; wait ``within``.

    The wait is random, up to ``within`` seconds. Returns what was read; the caller kills the
    child right after, so the kill lands inside (or just past) what that line announced. Output
    is read in whole chunks, so a backlog is skipped over rather than reacted to late.
    """
    assert child.stdout is not None
    seen = b""
    while True:
        chunk = os.read(child.stdout.fileno(), 1 << 16)
        seen += chunk
        newest = seen[seen.rfind(b"\n", 0, -1) + 1:]
        if not chunk or (seen.endswith(b"\n") and newest.startswith(prefix.encode())):
            break
    time.sleep(rng.uniform(0, within))
    return seen


def finish_cleanly(tmp_path: Any, settings: bottomless.Settings, path: str, mode: str,
                   env: dict[str, str], acknowledged: int, tally: dict[str, int]) -> int:
    """A last clean run of 3 commits on the same local file: it must open without a conflict,
    and afterwards the bucket must hold exactly the file's rows. Returns the last commit."""
    finish = subprocess.run(
        [sys.executable, os.path.join(HERE, "crash_writer.py"), path, mode, "3"],
        capture_output=True, env=env, timeout=120,
    )
    assert finish.returncode == 0, finish.stderr.decode()[-3000:]
    target = str(tmp_path / "final.db")
    bottomless.restore(target, settings, db_name="crash.db")
    tally["restores"] += 1
    top = check_restored(target, acknowledged + 3)
    assert rows(target, "SELECT txn, j FROM t ORDER BY 1, 2") == rows(
        path, "SELECT txn, j FROM t ORDER BY 1, 2"
    )
    return top


def crash_loop(tmp_path: Any, settings: bottomless.Settings, mode: str, kills: int,
               seed: int, *, checkpoint_every: int = 0, snapshot_every: int = 20,
               kill_at: str = "", kill_within: float = 0.0005,
               label: str = "") -> dict[str, int]:
    """Kill a committing crash_writer ``kills`` times, restoring and checking after each kill.

    ``checkpoint_every``: the writer checkpoints every N transactions (WAL mode);
    ``snapshot_every``: background snapshots every N commits, so kills land in them too;
    ``kill_at``: after the random delay, kill only once the writer's newest line starts with
    this, at most ``kill_within`` seconds later (``"checkpoint "`` aims the kills at
    checkpoints, ``"snapshot "`` at background snapshots).
    """
    rng = random.Random(seed)
    path = str(tmp_path / "crash.db")
    env = child_env(
        settings, CRASH_CHECKPOINT_EVERY=str(checkpoint_every),
        LIBSQL_BOTTOMLESS_SNAPSHOT_INTERVAL_COMMITS=str(snapshot_every),
    )
    store = bottomless.open_store(settings)
    acknowledged = 0
    acknowledged_async = 0
    restored_top = 0
    tally = new_tally()
    marks: set[str] = set()
    try:
        for round_ in range(kills):
            child = subprocess.Popen(
                [sys.executable, os.path.join(HERE, "crash_writer.py"), path, mode],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                bufsize=0,  # unbuffered: what wait_for_line reads is not kept from communicate
            )
            time.sleep(rng.uniform(0.3, 1.2) * (2.5 if settings.backend == "s3" else 1))
            seen = wait_for_line(child, kill_at, rng, kill_within) if kill_at else b""
            killed_at = time.time()
            child.send_signal(signal.SIGKILL)
            out, err = child.communicate(timeout=60)
            assert child.returncode == -signal.SIGKILL, (
                f"round {round_}: child exited with {child.returncode} before the kill:\n"
                f"{err.decode()[-3000:]}"
            )
            lines = (seen + out).decode().splitlines()
            done = [(int(n), float(at)) for _, n, at in
                    (line.split() for line in lines if line.startswith("done"))]
            # at most one commit past what this child printed or the last restore held
            newest = max([max(acknowledged, restored_top) + 1] + [n + 1 for n, _ in done])
            if settings.durability == "async":
                # promised: every commit acknowledged more than max_lag before the kill (give
                # or take LAG_SLACK: a loaded machine may keep the uploader off the CPU)
                old_enough = [n for n, at in done
                              if at <= killed_at - settings.max_lag - LAG_SLACK]
                required = max([acknowledged_async, *old_enough])
            else:
                required = max([acknowledged] + [n for n, _ in done])
            if done:
                acknowledged = max(acknowledged, done[-1][0])
            tally["kills"] += 1
            now_marks = kill_marks(store, "crash.db")
            for place in kill_landing(lines, now_marks - marks):
                tally[place] = tally.get(place, 0) + 1
            marks = now_marks
            target = str(tmp_path / f"restored-{round_}.db")
            try:
                bottomless.restore(target, settings, db_name="crash.db")
            except bottomless.ReplicaNotFoundError:
                # killed before its first open finished (a loaded machine): nothing was
                # acknowledged, so there is nothing to lose yet
                assert required == 0 and not any(line.startswith("open") for line in lines)
                tally["kills before the first open"] = tally.get("kills before the first open",
                                                                 0) + 1
                continue
            tally["restores"] += 1
            restored_top = check_restored(target, required, newest)
            acknowledged_async = restored_top if settings.durability == "async" else acknowledged
            os.unlink(target)
        top = finish_cleanly(tmp_path, settings, path, mode, env, acknowledged, tally)
        tally["generations"] = len(generations(store, "crash.db"))
    finally:
        store.close()
    print_tally(
        f"{label or mode}, {settings.backend}, {settings.durability}", tally,
        f"; {top} commits, {tally['generations']} generations",
    )
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

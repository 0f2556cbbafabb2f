"""Small helpers shared by the VFS, crash and CLI tests."""

from __future__ import annotations

import os
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import pytest

import bottomless
from bottomless.backends.base import PageStore
from bottomless.errors import StoreError


def remove_db(path: str) -> None:
    """Delete a database file and every file SQLite or bottomless keeps beside it."""
    for suffix in ("", "-wal", "-shm", "-journal", "-bottomless"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)


def rows(path: str, sql: str = "SELECT * FROM t ORDER BY 1") -> list[Any]:
    """Read a database with plain SQLite (no bottomless)."""
    db = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def integrity(path: str) -> str:
    """``PRAGMA integrity_check`` of a file, with plain SQLite."""
    result = rows(path, "PRAGMA integrity_check")
    return str(result[0][0]) if len(result) == 1 else repr(result)


def restored(tmp_path: Any, settings: bottomless.Settings, db_name: str) -> str:
    """Restore ``db_name`` into a new file and return its path."""
    target = str(tmp_path / f"restored-{os.urandom(4).hex()}.db")
    bottomless.restore(target, settings, db_name=db_name)
    return target


def replicator(path: str) -> Any:
    """The live replicator of an open bottomless database."""
    from bottomless.sqlite import vfs

    found = vfs.registration.replicator_for(os.path.abspath(path))
    assert found is not None, f"{path} is not open through bottomless"
    return found


class ForwardingStore(PageStore):
    """A PageStore that hands every call to ``inner``; tests override what they break."""

    def __init__(self, inner: PageStore) -> None:
        self.inner = inner
        self.backend = inner.backend

    @property
    def location(self) -> str:
        return self.inner.location

    def put_if_absent(self, key: str, data: bytes) -> None:
        self.inner.put_if_absent(key, data)

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        return self.inner.get_versioned(key)

    def put_if_match(self, key: str, data: bytes, version: str) -> str:
        return self.inner.put_if_match(key, data, version)

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def get_range(self, key: str, start: int, end: int) -> bytes:
        return self.inner.get_range(key, start, end)

    def list_keys(self, prefix: str) -> list[str]:
        return self.inner.list_keys(prefix)

    def list_children(self, prefix: str) -> list[str]:
        return self.inner.list_children(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)


class FailingStore(ForwardingStore):
    """A real store whose create-only writes (each commit's one PUT) fail while ``down`` is set."""

    def __init__(self, inner: PageStore) -> None:
        super().__init__(inner)
        self.down = False

    def put_if_absent(self, key: str, data: bytes) -> None:
        if self.down:
            raise StoreError(f"{self.location}: PUT {key} failed: injected outage")
        self.inner.put_if_absent(key, data)


def stop_uploader(path: str) -> None:
    """Stop the uploader of an open async database: later commits stay spooled."""
    rep = replicator(path)
    assert rep.shipper.uploader is not None
    rep.shipper.halt()


def abandon(db: Any, path: str) -> None:
    """Leave a database as a killed process would: nothing flushed or closed by bottomless (an
    async spool stays on disk); the next ``connect`` in this process opens it afresh."""
    from bottomless.sqlite import vfs

    rep = replicator(path)
    rep.shipper.halt()
    rep.close = lambda **_: None
    rep.session.end()  # its descriptor (and flock) would go with the process
    db.close()
    registered = vfs.registration.current
    assert registered is not None
    registered.databases.forget(os.path.abspath(path))


def plant_commit(
    path: str, seq: int, prev: bytes, page_size: int = 4096, db_name: str | None = None
) -> bytes:
    """Store commit ``seq`` of the current generation of the open database ``path`` with this
    writer's id, chained to ``prev``, as a process killed after its upload (or a copy of the
    database) would; return its digest."""
    from bottomless import format as fmt
    from bottomless.local.files import read_state

    rep = replicator(path)
    state = read_state(path)
    assert state is not None
    batch = fmt.PageBatch(
        fmt.KIND_COMMIT, state.generation, seq, page_size, 2, {2: bytes(page_size)},
        prev=prev, writer=state.writer_bytes,
    )
    rep.store.put_once(fmt.commit_key(db_name or rep.db_name, state.generation, seq),
                       fmt.encode_batch(batch))
    return batch.digest


def commits_are_refused_while_nothing_ships(db: apsw.Connection) -> None:
    """With the uploader held back, one-row commits into ``t`` must soon be refused for
    being too far behind (``max_lag``), not queued for ever."""
    started = time.monotonic()
    with pytest.raises(apsw.IOError) as info:
        while time.monotonic() - started < 10:
            db.execute("INSERT INTO t VALUES(1)")
    assert "behind" in str(info.value.__cause__)
    assert "spool" not in str(info.value.__cause__), "the store is behind, not the local disk"
    assert time.monotonic() - started < 5, "commits must be refused, not queued forever"



def wait_for(condition: Callable[[], bool], timeout: float, poll: float = 0.005) -> float:
    """Seconds until ``condition`` holds; fails after ``timeout``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(poll)
    return time.monotonic() - started


def junit_outcomes(xml_path: Path, name: Callable[[str, str], str]) -> dict[str, str]:
    """Test id, as ``name(classname, test name)`` makes it -> passed / failed / skipped, from
    a JUnit XML report (how the tests that run another project's suite read its results)."""
    outcomes = {}
    for case in ET.parse(xml_path).iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "failed"
        elif case.find("skipped") is not None:
            outcome = "skipped"
        else:
            outcome = "passed"
        outcomes[name(case.get("classname", ""), case.get("name", ""))] = outcome
    return outcomes


def assert_suite_parity(tmp_path: Path, runs: dict[str, subprocess.Popen[str]], baseline: str,
                        name: Callable[[str, str], str], at_least: int) -> None:
    """Wait for another project's suite run twice, as ``baseline`` and as ``"bottomless"``
    (each reporting JUnit XML to ``tmp_path/<run>/results.xml``), and assert that the baseline
    really ran (more than ``at_least`` passes) and that bottomless passes all it passes."""
    started = time.monotonic()
    logs = {run: process.communicate(timeout=600)[0] for run, process in runs.items()}
    print(f"both runs: {time.monotonic() - started:.1f} s")
    results = {}
    for run in runs:
        xml_path = tmp_path / run / "results.xml"
        assert xml_path.exists(), f"the {run} run did not report:\n{logs[run][-3000:]}"
        results[run] = junit_outcomes(xml_path, name)
        print(f"{run}: {logs[run].strip().splitlines()[-1]}")
    passed = {run: {t for t, o in results[run].items() if o == "passed"} for run in runs}
    assert len(passed[baseline]) > at_least, logs[baseline][-3000:]
    missing = sorted(passed[baseline] - passed["bottomless"])
    shown = "\n".join(f"  {t}: {results['bottomless'].get(t, 'not run')}" for t in missing)
    assert not missing, (
        f"{len(missing)} test(s) pass on {baseline} but not on bottomless:\n{shown}\n"
        f"{logs['bottomless'][-5000:]}"
    )

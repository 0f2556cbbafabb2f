"""A new generation ends the one before it with a successor object at its next position.

Replicas that poll ``commits/<N+1>`` learn of the new generation from it with no extra
request, restores and verify of the old generation stop before it, and a writer still on the
old generation finds its next position taken instead of writing into history nobody reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import apsw
import pytest
from helpers import integrity, restored, rows

import bottomless
from bottomless import format as fmt
from bottomless.ops.targets import commit_numbers, generations

MakeSettings = Callable[..., bottomless.Settings]


def two_generations(tmp_path: Any, settings: bottomless.Settings) -> tuple[Any, str, str]:
    """Writer A makes commits 1..3 of a generation; then another local file is replicated
    over it with initial_replication=force (no lease: A still runs). Returns A's open
    connection and both generation ids."""
    settings = settings.model_copy(update={"lease_ttl": 0})
    first = bottomless.connect(str(tmp_path / "a.db"), settings.model_copy(
        update={"db_name": "shared"}))
    first.execute("CREATE TABLE t(x)")
    for i in range(2):
        first.execute("INSERT INTO t VALUES(?)", (i,))
    other = apsw.Connection(str(tmp_path / "b.db"))  # a conflicting local file
    other.execute("CREATE TABLE u(y)")
    other.close()
    forced = bottomless.connect(str(tmp_path / "b.db"), settings.model_copy(
        update={"db_name": "shared", "initial_replication": "force"}))
    forced.execute("INSERT INTO u VALUES('new')")
    forced.close()
    store = bottomless.open_store(settings)
    old, new = generations(store, "shared")
    store.close()
    return first, old, new


def test_a_new_generation_ends_the_old_one_with_its_successor(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    settings = make_settings("memory")
    first, old, new = two_generations(tmp_path, settings)
    store = bottomless.open_store(settings)
    commits = commit_numbers(store, "shared", old)
    assert commits == [1, 2, 3, 4]
    key = fmt.commit_key("shared", old, 4)
    marker = fmt.decode_raw(store.get(key), key)
    last = fmt.decode_raw(store.get(fmt.commit_key("shared", old, 3)), "3")
    assert marker.head.kind == fmt.KIND_SUCCESSOR and marker.head.generation == new
    assert marker.head.prev == last.digest and marker.numbers == []
    # ls lists the commits a restore can land on, not the object that ends the generation
    assert [c.seq for c in bottomless.ls("shared", settings, generation=old)] == [1, 2, 3]
    listed = {g.generation: g for g in bottomless.ls("shared", settings)}
    assert (listed[old].commits, listed[old].last_commit) == (3, 3)
    first.close()

    copy = str(tmp_path / "old.db")
    result = bottomless.restore(copy, settings, db_name="shared", generation=old)
    assert result.seq == 3 and integrity(copy) == "ok"
    assert rows(copy) == [(0,), (1,)]
    report = bottomless.verify("shared", settings, generation=old)
    assert report.ok, report.problems
    assert rows(restored(tmp_path, settings, "shared"), "SELECT * FROM u") == [("new",)]


def test_a_writer_left_on_the_old_generation_is_refused(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    """Without a lease, the successor object is what stops the old writer: its next commit
    would otherwise land in a generation no restore reads."""
    settings = make_settings("memory")
    first, old, _ = two_generations(tmp_path, settings)
    with pytest.raises(apsw.IOError) as caught:
        first.execute("INSERT INTO t VALUES(99)")
    cause = caught.value.__cause__
    assert isinstance(cause, bottomless.ReplicaConflictError), cause
    assert "written by another writer" in str(cause) and cause.key == fmt.commit_key(
        "shared", old, 4)
    assert first.execute("SELECT count(*) FROM t WHERE x = 99").fetchall() == [(0,)]
    first.close()


def test_an_interrupted_generation_start_is_passed_over_by_the_successor(
    tmp_path: Any, make_settings: MakeSettings
) -> None:
    """A generation start that died before its snapshot was written leaves an incomplete
    generation, the newest in the bucket. The next new generation ends the last complete one
    (which holds the last state) with its successor object, not the incomplete one."""
    settings = make_settings("memory")
    db = bottomless.connect(str(tmp_path / "a.db"), settings.model_copy(
        update={"db_name": "shared"}))
    db.execute("CREATE TABLE t(x)")
    db.execute("INSERT INTO t VALUES(1)")
    db.close()
    store = bottomless.open_store(settings)
    (old,) = generations(store, "shared")
    stray = fmt.new_generation_id()
    part = fmt.PageBatch(fmt.KIND_SNAPSHOT, stray, 0, 4096, 1, {1: bytes(4096)})
    store.put_once(fmt.part_key("shared", stray, 0, 0), fmt.encode_batch(part))
    other = apsw.Connection(str(tmp_path / "b.db"))  # a conflicting local file
    other.execute("CREATE TABLE u(y)")
    other.close()
    forced = bottomless.connect(str(tmp_path / "b.db"), settings.model_copy(
        update={"db_name": "shared", "initial_replication": "force"}))
    forced.close()
    assert generations(store, "shared")[:2] == [old, stray]
    new = generations(store, "shared")[-1]
    last = commit_numbers(store, "shared", old)[-1]
    key = fmt.commit_key("shared", old, last)
    marker = fmt.decode_raw(store.get(key), key)
    assert marker.head.kind == fmt.KIND_SUCCESSOR and marker.head.generation == new
    store.close()

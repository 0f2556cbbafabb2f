"""Litestream v0.3.13 side by side with bottomless, rows 4-6: restore, bucket bytes, CLI.

Each function returns a JSON-ready dict; ``measure_litestream`` has rows 1-3.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import apsw
from common import MB, median, payloads, pragma_int, replicator_of, s3_settings
from litestream_tool import (
    BUSY_TIMEOUT_MS,
    LitestreamDb,
    LitestreamProcess,
    environment,
    prepare_writer,
    write_config,
)
from measure_litestream import insert_timed

import bottomless
from bottomless.testing.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedServer

BOTTOMLESS_CLI = os.path.join(os.path.dirname(sys.executable), "bottomless")


# ------------------------------------------------------------------ 4: restore


def _digest(path: str) -> tuple[str, str]:
    """(``PRAGMA integrity_check``, a digest of every row of the benchmark's tables)."""
    conn = apsw.Connection(path)
    try:
        integrity = str(conn.execute("PRAGMA integrity_check").fetchall()[0][0])
        digest = hashlib.blake2b()
        for table in ("blobs", "t"):
            for row_id, value in conn.execute(f"SELECT * FROM {table} ORDER BY rowid"):
                digest.update(row_id.to_bytes(8, "little"))
                digest.update(value if isinstance(value, bytes) else str(value).encode())
    finally:
        conn.close()
    return integrity, digest.hexdigest()


def _remove_db(path: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)


def build_blobs_db(path: str, size_mb: int) -> int:
    """A plain WAL database of about ``size_mb`` MiB of random 1,000-byte blobs; its bytes."""
    conn = apsw.Connection(path)
    try:
        prepare_writer(conn)
        conn.execute("CREATE TABLE blobs(id INTEGER PRIMARY KEY, data BLOB)")
        page_size = pragma_int(conn, "page_size")
        while (missing := size_mb * MB - pragma_int(conn, "page_count") * page_size) > 0:
            rows = max(100, min(8000, missing // 1030))  # about 8 MB a transaction at most
            conn.execute(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?)"
                " INSERT INTO blobs(data) SELECT randomblob(1000) FROM c", (rows,))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return pragma_int(conn, "page_count") * page_size
    finally:
        conn.close()


def restore_times(server: SeaweedServer, workdir: str, binary: str, sizes_mb: list[int],
                  rounds: int) -> dict[str, Any]:
    """Restore wall time at each size: both CLIs in fresh processes, bottomless.restore here.

    Best of ``rounds`` up to 256 MiB, one round above (the verification takes longer).
    """
    return {str(mb): _restore_one(server, workdir, binary, mb, rounds if mb <= 256 else 1)
            for mb in sizes_mb}


def _restore_one(server: SeaweedServer, workdir: str, binary: str, size_mb: int,
                 rounds: int) -> dict[str, Any]:
    source = os.path.join(workdir, f"restore-{size_mb}-source.db")
    db_bytes = build_blobs_db(source, size_mb)
    small = payloads(20, 33)  # the same few commits after the bulk, through each tool
    name = f"restore-{size_mb}.db"
    bl_path, ls_path = (os.path.join(workdir, f"restore-{size_mb}-{k}.db") for k in ("bl", "ls"))
    shutil.copyfile(source, bl_path)
    shutil.copyfile(source, ls_path)
    os.unlink(source)
    settings = s3_settings(server, server.new_bucket(), db_name=name)
    t0 = time.perf_counter()
    conn = bottomless.connect(bl_path, settings)
    try:
        conn.setbusytimeout(BUSY_TIMEOUT_MS)
        replicator_of(bl_path).wait_snapshot()
        replicate_bl = time.perf_counter() - t0
        insert_timed(conn, small)
    finally:
        conn.close()
    t0 = time.perf_counter()
    ls = LitestreamDb(binary, ls_path, server.endpoint, server.new_bucket())
    try:
        replicate_ls = time.perf_counter() - t0
        insert_timed(ls.conn, small)
        ls.settle()
    finally:
        ls.close()
    expected = _digest(bl_path)
    if _digest(ls_path) != expected:
        raise RuntimeError("the two tools' source databases differ")
    env = {k: v for k, v in environment().items() if not k.startswith("LIBSQL_BOTTOMLESS_")}
    env.update(LIBSQL_BOTTOMLESS_ACCESS_KEY_ID=ACCESS_KEY,
               LIBSQL_BOTTOMLESS_SECRET_ACCESS_KEY=SECRET_KEY,
               LIBSQL_BOTTOMLESS_REGION="us-east-1")
    out = os.path.join(workdir, f"restore-{size_mb}-out.db")
    ways: dict[str, Callable[[], None]] = {
        "bottomless_cli": lambda: _run([BOTTOMLESS_CLI, "restore", name, "-o", out,
                                        "--backend", "s3", "--bucket", settings.bucket,
                                        "--endpoint", server.endpoint], env),
        "bottomless_api": lambda: bottomless.restore(out, settings, db_name=name),
        "litestream_cli": lambda: _run([binary, "restore", "-config", ls.config, "-o", out,
                                        ls_path], environment()),
    }
    times: dict[str, list[float]] = {k: [] for k in ways}
    checks: dict[str, list[str]] = {k: [] for k in ways}
    for i in range(rounds):
        for way in (list(ways) if i % 2 == 0 else list(reversed(ways))):
            t0 = time.perf_counter()
            ways[way]()
            times[way].append(time.perf_counter() - t0)
            integrity, digest = _digest(out)
            checks[way].append("ok" if (integrity, digest) == expected
                               else f"MISMATCH (integrity_check: {integrity})")
            _remove_db(out)
    floor = _download_floor(server, settings.bucket, name + "/", settings.parallelism, out)
    for bucket in (settings.bucket, ls.bucket):
        server.drop_bucket(bucket)
    _remove_db(bl_path)
    _remove_db(ls_path)
    return {
        "size_mb": size_mb, "db_bytes": db_bytes, "rounds": rounds,
        "initial_replication_s": {"bottomless": replicate_bl, "litestream": replicate_ls},
        **{f"{way}_s": min(t) for way, t in times.items()},
        "runs_s": times, "verified": {way: all(c == "ok" for c in v) for way, v in checks.items()},
        "checks": checks, "floor": floor,
    }


def _run(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False,
                          timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} {command[1]} failed ({done.returncode}):"
                           f" {(done.stderr or done.stdout)[-2000:]}")


def _download_floor(server: SeaweedServer, bucket: str, prefix: str, parallelism: int,
                    scratch: str) -> dict[str, Any]:
    """Download every object under ``prefix`` with a pool of GETs, write them to one file in
    turn and fsync it: what any restore of those objects must at least do (the floor row of
    ``run.py``'s restore measurement; bottomless's objects are parts of 16 MiB at most)."""
    client = server.client()
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])
        if not o["Key"].endswith("/lease")]
    fd = os.open(scratch, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        t0 = time.perf_counter()
        offset = 0
        with ThreadPoolExecutor(max_workers=parallelism) as pool:
            for data in pool.map(
                    lambda k: client.get_object(Bucket=bucket, Key=k)["Body"].read(), keys):
                os.pwrite(fd, data, offset)
                offset += len(data)
        os.fsync(fd)
        seconds = time.perf_counter() - t0
    finally:
        os.close(fd)
        os.unlink(scratch)
    return {"objects": len(keys), "bytes": offset, "seconds": seconds}


# ------------------------------------------------------------------ 5: bucket bytes


def _bucket_bytes(server: SeaweedServer, bucket: str) -> tuple[int, int]:
    client = server.client()
    sizes = [o["Size"] for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket) for o in page.get("Contents", [])]
    return sum(sizes), len(sizes)


def _update(conn: apsw.Connection, updates: int, rows: int) -> float:
    rng = random.Random(8)
    t0 = time.perf_counter()
    for _ in range(updates):
        conn.execute("UPDATE items SET v = ? WHERE id = ?",
                     (rng.randbytes(200), rng.randint(1, rows)))
    return time.perf_counter() - t0


def bucket_after_retention(server: SeaweedServer, workdir: str, binary: str, updates: int,
                           rows: int) -> dict[str, Any]:
    """Bucket bytes ÷ db size after ``updates`` one-row UPDATEs, before and after retention.

    bottomless (sync, default snapshot intervals: one object per commit, a snapshot every
    1,000) then ``bottomless.gc(older_than="1s")``; Litestream (defaults) then restarted with
    ``retention: 1s`` until its retention pass (a new snapshot, older files deleted) is done.
    """
    source = os.path.join(workdir, "updates-source.db")
    conn = apsw.Connection(source)
    prepare_writer(conn)
    conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, v BLOB)")
    conn.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?)"
                 " INSERT INTO items(v) SELECT randomblob(200) FROM c", (rows,))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    result: dict[str, Any] = {"updates": updates, "rows": rows}

    bl_path = os.path.join(workdir, "updates-bl.db")
    shutil.copyfile(source, bl_path)
    settings = s3_settings(server, server.new_bucket())
    conn = bottomless.connect(bl_path, settings)
    try:
        conn.setbusytimeout(BUSY_TIMEOUT_MS)
        seconds = _update(conn, updates, rows)
    finally:
        conn.close()
    before = _bucket_bytes(server, settings.bucket)
    time.sleep(1.5)
    bottomless.gc(os.path.basename(bl_path), settings, older_than="1s")
    after = _bucket_bytes(server, settings.bucket)
    result["bottomless"] = _bytes_result(os.path.getsize(bl_path), before, after, seconds)
    server.drop_bucket(settings.bucket)
    _remove_db(bl_path)

    ls_path = os.path.join(workdir, "updates-ls.db")
    shutil.copyfile(source, ls_path)
    ls = LitestreamDb(binary, ls_path, server.endpoint, server.new_bucket())
    try:
        seconds = _update(ls.conn, updates, rows)
        ls.settle()
        ls.process.stop()
        before = _bucket_bytes(server, ls.bucket)
        config = write_config(ls_path + ".retention.yml", ls_path, bucket=ls.bucket,
                              endpoint=server.endpoint, replica_path=ls.replica_path,
                              access_key=ACCESS_KEY, secret_key=SECRET_KEY, sync_interval="1s",
                              retention="1s", retention_check_interval="1s")
        with LitestreamProcess(binary, config, ls_path + ".retention.log") as retainer:
            retainer.wait_for('msg="snapshot written"', timeout=60)
            _wait_retained(server, ls.bucket, timeout=30)
    finally:
        ls.close()
    after = _bucket_bytes(server, ls.bucket)
    result["litestream"] = _bytes_result(os.path.getsize(ls_path), before, after, seconds)
    server.drop_bucket(ls.bucket)
    _remove_db(ls_path)
    _remove_db(source)
    return result


def _wait_retained(server: SeaweedServer, bucket: str, timeout: float) -> None:
    """Wait until no snapshot or WAL segment of a lower index than the newest snapshot's is
    left (Litestream's retention pass is done)."""
    client = server.client()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket) for o in page.get("Contents", [])]
        snapshots = [int(k.rsplit("/", 1)[1][:8], 16) for k in keys if "/snapshots/" in k]
        wal = [int(k.rsplit("/", 1)[1][:8], 16) for k in keys if "/wal/" in k]
        generations = {k.split("/generations/")[1].split("/")[0] for k in keys}
        if snapshots and len(generations) == 1 and min(snapshots + wal) >= max(snapshots):
            return
        time.sleep(0.2)


def _bytes_result(db_bytes: int, before: tuple[int, int], after: tuple[int, int],
                  update_s: float) -> dict[str, Any]:
    return {"db_bytes": db_bytes, "bucket_bytes_before": before[0], "objects_before": before[1],
            "bucket_bytes_after": after[0], "objects_after": after[1],
            "ratio_before": before[0] / db_bytes, "ratio_after": after[0] / db_bytes,
            "update_s": update_s}


# ------------------------------------------------------------------ 6: CLI start-up


def cli_startup(binary: str, repeats: int) -> dict[str, Any]:
    """Wall time of ``bottomless --help`` and ``litestream --help`` in fresh processes, in turns."""
    commands = {"bottomless": [BOTTOMLESS_CLI, "--help"], "litestream": [binary, "--help"]}
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(repeats):
        for key, command in commands.items():
            t0 = time.perf_counter()
            subprocess.run(command, capture_output=True, check=False, timeout=60)
            times[key].append(time.perf_counter() - t0)
    return {key: {"best_s": min(t), "median_s": median(t), "runs_s": t}
            for key, t in times.items()}

"""Measurements 4-6: restore against a raw download, reads, bucket bytes after gc.

Each function sets up its own databases and returns plain JSON-ready dicts. Nothing here
asserts on timings: these are measurements, the caller prints and compares them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import apsw
import botocore.config
import botocore.session
import s3fs
from common import (
    MB,
    dir_bytes,
    file_settings,
    median,
    payloads,
    pragma_int,
    prepare,
    s3_settings,
    timed_commits,
)

import bottomless
from bottomless.backends.registry import open_store
from bottomless.ops.retention import collect_garbage
from bottomless.ops.targets import resolve_target
from bottomless.testing.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedServer

HERE = os.path.dirname(os.path.abspath(__file__))


def build_restore_db(server: SeaweedServer, workdir: str, size_mb: int) -> dict[str, Any]:
    """Write a ``size_mb`` database of random blobs through bottomless on SeaweedFS."""
    path = os.path.join(workdir, "restore-src.db")
    settings = s3_settings(server, server.new_bucket(), db_name="big.db")
    txn_rows = 8000  # about 8 MB per transaction
    started = time.perf_counter()
    conn = bottomless.connect(path, settings)
    try:
        prepare(conn)
        conn.execute("CREATE TABLE blobs(id INTEGER PRIMARY KEY, data BLOB)")
        page_size = pragma_int(conn, "page_size")
        while pragma_int(conn, "page_count") * page_size < size_mb * MB:
            conn.execute(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?)"
                " INSERT INTO blobs(data) SELECT randomblob(1000) FROM c", (txn_rows,),
            )
        timed_commits(conn, payloads(20, 6))  # a few small commits after the bulk load
        db_bytes = pragma_int(conn, "page_count") * page_size
    finally:
        conn.close()  # waits for a background snapshot in progress
    return {"path": path, "settings": settings, "db_bytes": db_bytes,
            "build_s": time.perf_counter() - started}


def _child(mode: str, settings: bottomless.Settings, **extra: Any) -> dict[str, Any]:
    """Run restore_child.py in a fresh interpreter; return what it printed."""
    values = settings.model_dump(mode="json")
    for secret in ("access_key_id", "secret_access_key"):
        value = getattr(settings, secret)
        values[secret] = value.get_secret_value() if value is not None else None
    job = {"mode": mode, "settings": values, **extra}
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIBSQL_BOTTOMLESS_")}
    done = subprocess.run(
        [sys.executable, os.path.join(HERE, "restore_child.py")], input=json.dumps(job),
        capture_output=True, text=True, env=env, check=False, timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"restore child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def raw_download(
    server: SeaweedServer, bucket: str, keys: list[str], parallelism: int, scratch: str
) -> dict[str, Any]:
    """Download ``keys`` four ways, nothing checked or written; the fastest is the baseline.

    With s3fs: ``cat_file`` in a thread pool (s3fs then sends a HEAD before each whole-object
    GET), one ``get_object`` per key in a thread pool (no HEAD), and ``fs.cat`` on the whole
    list (s3fs's own async batching). With a plain botocore client: one ``get_object`` per key
    in a thread pool, each thread reading its own body (what bottomless's S3 backend does).
    """
    fs = s3fs.S3FileSystem(
        endpoint_url=server.endpoint, key=ACCESS_KEY, secret=SECRET_KEY,
        client_kwargs={"region_name": "us-east-1"}, skip_instance_cache=True,
        use_listings_cache=False,
    )
    client: Any = botocore.session.get_session().create_client(
        "s3", endpoint_url=server.endpoint, aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
        config=botocore.config.Config(max_pool_connections=max(10, parallelism + 2)),
    )
    paths = [f"{bucket}/{k}" for k in keys]

    def get_object(path: str) -> bytes:
        return fs.cat_file(path, max_concurrency=1)  # type: ignore[no-any-return]

    def botocore_get(path: str) -> bytes:
        key = path.split("/", 1)[1]
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]

    timings: dict[str, float] = {}
    try:
        fs.cat_file(paths[0])  # open the session and a connection
        botocore_get(paths[0])
        for name, fetch in (("thread_pool_s", fs.cat_file), ("get_object_pool_s", get_object),
                            ("botocore_pool_s", botocore_get)):
            t0 = time.perf_counter()
            with ThreadPoolExecutor(max_workers=parallelism) as pool:
                total = sum(len(b) for b in pool.map(fetch, paths))
            timings[name] = time.perf_counter() - t0
        t0 = time.perf_counter()
        batch = fs.cat(paths, batch_size=parallelism)
        timings["fs_cat_s"] = time.perf_counter() - t0
        assert sum(len(b) for b in batch.values()) == total
        del batch
        fastest = botocore_get if timings["botocore_pool_s"] < timings["get_object_pool_s"] \
            else get_object
        written = download_and_write(fastest, paths, scratch, parallelism)
    finally:
        s3fs.S3FileSystem.close_session(fs.loop, fs.s3)
        client.close()
    return {"bytes": total, "objects": len(paths), **timings, "best_s": min(timings.values()),
            "download_and_write_s": written}


def download_and_write(
    fetch: Callable[[str], bytes], paths: list[str], scratch: str, parallelism: int
) -> float:
    """Seconds to download ``paths`` and write them one after another to a file, fsynced.

    Not a baseline for the target (a restore must write the file, a download need not), but it
    shows how much of a restore's time the local disk takes.
    """
    fd = os.open(scratch, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        t0 = time.perf_counter()
        offset = 0
        with ThreadPoolExecutor(max_workers=parallelism) as pool:
            for data in pool.map(fetch, paths):
                os.pwrite(fd, data, offset)
                offset += len(data)
        os.fsync(fd)
        return time.perf_counter() - t0
    finally:
        os.close(fd)
        os.unlink(scratch)


def restore_benchmark(
    server: SeaweedServer, workdir: str, size_mb: int, rounds: int
) -> dict[str, Any]:
    """Restore a ``size_mb`` database, against a raw parallel download of the same objects."""
    built = build_restore_db(server, workdir, size_mb)
    settings: bottomless.Settings = built["settings"]
    store = open_store(settings)
    try:
        target = resolve_target(store, "big.db")
    finally:
        store.close()
    snapshot = target.snapshot
    keys = [str(p["key"]) for p in snapshot.parts]
    keys += [
        f"big.db/generations/{target.generation}/commits/{seq:016d}"
        for seq in range(snapshot.seq + 1, target.seq + 1)
    ]
    idle = _child("idle", settings)
    raws, restores = [], []
    for i in range(rounds):
        raws.append(raw_download(server, settings.bucket, keys, settings.parallelism,
                                 os.path.join(workdir, "raw-download.bin")))
        out = os.path.join(workdir, f"restored-{i}.db")
        restores.append(_child("restore", settings, path=out, db_name="big.db"))
        os.unlink(out)
    best_restore = min(restores, key=lambda r: r["restore_s"])
    best_raw = min(raws, key=lambda r: r["best_s"])
    return {
        "db_bytes": built["db_bytes"], "build_s": built["build_s"],
        "objects": len(keys), "snapshot_seq": snapshot.seq, "target_seq": target.seq,
        "object_bytes": best_raw["bytes"],
        "restore_s": best_restore["restore_s"], "restore_bytes_read": best_restore["bytes_read"],
        "client_setup_s": best_restore["client_setup_s"],
        "restore_runs_s": [r["restore_s"] for r in restores],
        "raw_thread_pool_s": min(r["thread_pool_s"] for r in raws),
        "raw_get_object_pool_s": min(r["get_object_pool_s"] for r in raws),
        "raw_fs_cat_s": min(r["fs_cat_s"] for r in raws),
        "raw_botocore_pool_s": min(r["botocore_pool_s"] for r in raws),
        "raw_download_and_write_s": min(r["download_and_write_s"] for r in raws),
        "raw_s": best_raw["best_s"],
        "restore_mb_s": best_raw["bytes"] / MB / best_restore["restore_s"],
        "raw_mb_s": best_raw["bytes"] / MB / best_raw["best_s"],
        "restore_peak_rss_mb": max(r["maxrss_children_kb"] for r in restores) / 1024,
        "idle_child_rss_mb": idle["maxrss_self_kb"] / 1024,
        "parallelism": settings.parallelism,
    }


# ------------------------------------------------------------------ 5: reads


def read_benchmark(workdir: str, rows: int, lookups: int, rounds: int) -> dict[str, Any]:
    """Point lookups and range scans at the default cache size: bottomless vs plain apsw."""
    path = os.path.join(workdir, "reads.db")
    conn = apsw.Connection(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, v BLOB)")
    conn.execute(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?)"
        " INSERT INTO items(v) SELECT randomblob(100) FROM c", (rows,),
    )
    conn.close()
    db_bytes = os.path.getsize(path)
    settings = file_settings(os.path.join(workdir, "replicas-reads"))
    bottomless.connect(path, settings).close()  # initial upload, outside the timings

    rng = random.Random(7)
    ids = [rng.randint(1, rows) for _ in range(lookups)]
    span = rows // 5
    ranges = [(start, start + span) for start in (rng.randint(1, rows - span) for _ in range(5))]

    def workload(conn: apsw.Connection) -> float:
        cursor = conn.cursor()
        t0 = time.perf_counter()
        for i in ids:
            cursor.execute("SELECT v FROM items WHERE id = ?", (i,)).fetchall()
        for low, high in ranges:
            cursor.execute(
                "SELECT count(*), sum(length(v)) FROM items WHERE id BETWEEN ? AND ?",
                (low, high),
            ).fetchall()
        return time.perf_counter() - t0

    timings: dict[str, list[float]] = {"plain": [], "bottomless": []}
    for _ in range(rounds):
        for name in ("plain", "bottomless"):
            conn = (apsw.Connection(path) if name == "plain"
                    else bottomless.connect(path, settings))
            try:
                cache = pragma_int(conn, "cache_size")
                timings[name].append(workload(conn))
            finally:
                conn.close()
    plain, replicated = median(timings["plain"]), median(timings["bottomless"])
    return {"db_bytes": db_bytes, "rows": rows, "lookups": lookups, "range_scans": len(ranges),
            "cache_size": cache, "rounds": rounds, "plain_s": plain, "bottomless_s": replicated,
            "plain_runs_s": timings["plain"], "bottomless_runs_s": timings["bottomless"],
            "ratio": replicated / plain}


# ------------------------------------------------------------------ 6: bucket bytes


def bucket_bytes(workdir: str, updates: int, rows: int) -> dict[str, Any]:
    """Bucket size / database size after many one-row UPDATEs, before and after gc."""
    path = os.path.join(workdir, "updates.db")
    replicas = os.path.join(workdir, "replicas-updates")
    settings = file_settings(replicas)
    conn = bottomless.connect(path, settings)
    rng = random.Random(8)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, v BLOB)")
        conn.execute(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?)"
            " INSERT INTO items(v) SELECT randomblob(200) FROM c", (rows,),
        )
        t0 = time.perf_counter()
        for _ in range(updates):
            conn.execute("UPDATE items SET v = ? WHERE id = ?",
                         (rng.randbytes(200), rng.randint(1, rows)))
        update_s = time.perf_counter() - t0
    finally:
        conn.close()  # checkpoints the WAL and waits for the last snapshot
    db_bytes = os.path.getsize(path)
    before = dir_bytes(replicas)
    files_before = sum(len(f) for _, _, f in os.walk(replicas))
    time.sleep(1.5)
    store = open_store(settings)
    try:
        report = collect_garbage(store, "updates.db", older_than=dt.timedelta(seconds=1))
    finally:
        store.close()
    after = dir_bytes(replicas)
    return {
        "updates": updates, "rows": rows, "db_bytes": db_bytes, "updates_per_s": updates / update_s,
        "bucket_bytes_before_gc": before, "objects_before_gc": files_before,
        "bucket_bytes_after_gc": after,
        "objects_after_gc": sum(len(f) for _, _, f in os.walk(replicas)),
        "gc_deleted": len(report.deleted),
        "ratio_before_gc": before / db_bytes, "ratio_after_gc": after / db_bytes,
    }

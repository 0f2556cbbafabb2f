"""Run every bottomless benchmark on this machine and print absolute figures and ratios.

    python benchmarks/run.py              # full run (2-3 minutes on 2 cores, + Litestream)
    python benchmarks/run.py --quick      # small sizes, a smoke run under a minute (+ Litestream)
    python benchmarks/run.py --no-litestream   # without section 7, bottomless vs Litestream
    python benchmarks/run.py --no-replica      # without section 8, read replicas and failover
    python benchmarks/run.py --no-stall        # without section 9, commits during a snapshot

One process: it starts its own SeaweedFS on loopback (random ports, temporary directory),
measures, prints a table with the targets, writes benchmarks/results.json, and stops the
server. These are measurements, not tests: nothing fails when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
for _name in [n for n in os.environ if n.startswith("LIBSQL_BOTTOMLESS_")]:
    del os.environ[_name]  # the benchmarks configure bottomless explicitly

import common  # noqa: E402
import litestream  # noqa: E402
import measure_commits  # noqa: E402
import measure_data  # noqa: E402
import replica  # noqa: E402
import snapshot_stall  # noqa: E402

from bottomless.testing.seaweed import start_seaweed  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

#: sizes of the full run (2-3 minutes on 2 cores) and of --quick (under a minute)
FULL = {"commits": 300, "rounds": 7, "snapshot_every": 1000, "put_repeats": 300,
        "restore_rounds": 2, "read_rows": 200_000, "lookups": 20_000, "read_rounds": 5,
        "updates": 10_000, "update_rows": 10_000}
QUICK = {"commits": 50, "rounds": 2, "snapshot_every": 100, "put_repeats": 50,
         "restore_rounds": 1, "read_rows": 50_000, "lookups": 5_000, "read_rounds": 2,
         "updates": 1_000, "update_rows": 2_000}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: a smoke run in under a minute")
    parser.add_argument("--restore-mb", type=int, default=None,
                        help="size of the restored database in MiB (default 256; 16 with --quick)")
    parser.add_argument("--commits", type=int, default=None,
                        help="commits per commit-rate case (default 300; 50 with --quick)")
    parser.add_argument("--wait-for-idle", type=float, default=0, metavar="SECONDS",
                        help="first wait up to SECONDS for the 1-minute load average to drop"
                        " below half the core count (other work skews every figure)")
    parser.add_argument("--output", default=os.path.join(HERE, "results.json"),
                        help="where to write the JSON results (default benchmarks/results.json)")
    parser.add_argument("--markdown", action="store_true",
                        help="print the tables as Markdown (for docs/benchmarks.md)")
    parser.add_argument("--from-json", metavar="PATH",
                        help="measure nothing: print the report of an earlier results file")
    parser.add_argument("--workdir", default=None,
                        help="directory for the databases (default: a temporary directory on"
                        " the same disk as the system temp dir); it is emptied afterwards")
    parser.add_argument("--no-stall", action="store_true",
                        help="leave out section 9, sync commits during a background snapshot")
    litestream.add_arguments(parser)
    replica.add_arguments(parser)
    return parser.parse_args(argv)


# ------------------------------------------------------------------ targets


def _status(ok: bool | None) -> str:
    return "SKIPPED" if ok is None else ("MET" if ok else "NOT MET")


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Compare results with the project's targets (a failed section counts as SKIPPED)."""
    targets: list[dict[str, Any]] = []

    def add(name: str, goal: str, check: Any) -> None:
        try:
            value, ok, note = check()
        except (KeyError, TypeError, ZeroDivisionError) as e:
            value, ok, note = None, None, f"not measured ({type(e).__name__}: {e})"
        targets.append({"target": name, "goal": goal, "value": value, "status": _status(ok),
                        "note": note})

    c = results.get("commits", {})

    def versus_s3vfs() -> tuple[float | None, bool | None, str]:
        if "skipped" in c["s3vfs"]:
            return None, None, c["s3vfs"]["skipped"]
        ratio = c["sync_s3"]["commits_per_s"] / c["s3vfs"]["commits_per_s"]
        return ratio, ratio >= 25, ""

    def latency() -> tuple[float, bool, str]:
        lat = results["latency"]
        ratio = lat["ratio_median"]
        strict = lat.get("strict_ratio_median")
        note = "" if strict is None else f"{strict:.2f}x of a botocore PUT + local commit"
        return ratio, ratio <= 1.3, note

    def asynchronous() -> tuple[float | None, bool | None, str]:
        a = c["async_s3"]
        if "skipped" in a:
            return None, None, a["skipped"]
        ratio = a["commits_per_s"] / c["plain"]["commits_per_s"]
        lag = a.get("lag_p99_ms")
        if lag is None:
            return ratio, None, a.get("lag_note", "lag not measured")
        return ratio, ratio >= 0.8 and lag <= 1000, f"lag p99 {lag:.1f} ms"

    def restore() -> tuple[float, bool, str]:
        r = results["restore"]
        ratio = r["restore_mb_s"] / r["raw_mb_s"]
        return ratio, ratio >= 0.7, ""

    def reads() -> tuple[float, bool, str]:
        ratio = results["reads"]["ratio"]
        return ratio, ratio <= 1.1, ""

    def bucket() -> tuple[float, bool, str]:
        ratio = results["bucket"]["ratio_after_gc"]
        return ratio, ratio <= 1.5, ""

    add("sync on SeaweedFS vs sqlite-s3vfs (commits/s)", ">= 25x", versus_s3vfs)
    add("sync commit latency (median) vs raw PUT + local commit", "<= 1.3x", latency)
    add("async on SeaweedFS vs plain apsw (commits/s), lag p99 <= 1 s", ">= 0.8x", asynchronous)
    add("restore throughput vs raw parallel download", ">= 0.7x", restore)
    add("read-heavy query time vs plain apsw", "<= 1.1x", reads)
    add("bucket bytes / db size after updates + gc", "<= 1.5x", bucket)
    add("sync commit p99 during a background snapshot vs raw PUT p99", "<= 2x",
        lambda: snapshot_stall.target(results["stall"]))
    return targets


# ------------------------------------------------------------------ printing


def _fmt(value: Any, spec: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


#: "text" for the terminal, "markdown" for docs/benchmarks.md (--markdown)
STYLE = {"table": "text"}


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    if STYLE["table"] == "markdown":
        out = [f"**{title}**", "", "| " + " | ".join(header) + " |",
               "|" + "|".join("---" for _ in header) + "|"]
        out += ["| " + " | ".join(str(x).replace("|", "/") for x in row) + " |" for row in rows]
        return "\n".join(out)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [title, line.format(*header), line.format(*["-" * w for w in widths])]
    out += [line.format(*row) for row in rows]
    return "\n".join(out)


def render(results: dict[str, Any]) -> str:
    """The human-readable report; a section that failed shows its error instead."""
    parts = []
    for title, key, section in SECTIONS:
        if "error" in results.get(key, {}):
            parts.append(f"{title}: NOT MEASURED, {results[key]['error']}")
            continue
        try:
            parts.append(section(results))
        except (KeyError, TypeError, ZeroDivisionError) as e:
            parts.append(f"{title}: cannot show ({type(e).__name__}: {e})")
    parts.append(_table("Targets", ["target", "goal", "measured", "status"], [
        [t["target"], t["goal"], "-" if t["value"] is None else f"{t['value']:.2f}x",
         t["status"] + (f" ({t['note'][:70]})" if t["note"] else "")]
        for t in results["targets"]]))
    loads = [step["load_1min"] for step in results.get("steps", [])]
    if loads:
        parts.append(f"1-minute load average during the run: {min(loads):.2f} to {max(loads):.2f}"
                     f" on {results['machine']['cores']} cores"
                     + ("  (other work was running: figures are noisy)"
                        if max(loads) > 0.75 * (results['machine']['cores'] or 1) else ""))
    return "\n\n".join(parts)


def _commits_section(results: dict[str, Any]) -> str:
    c = results["commits"]
    plain = c["plain"]["commits_per_s"]
    rows = []
    for key in ("plain", "sync_file", "sync_s3", "s3vfs", "async_file", "async_s3"):
        case = c.get(key)
        if case is None:
            continue
        if "skipped" in case:
            rows.append([case["case"], "-", "-", "-", "-", case["skipped"][:60]])
            continue
        rows.append([
            case["case"], _fmt(case["commits_per_s"]), f"{case['commits_per_s'] / plain:.3f}x",
            _fmt(case["latency_median_ms"], ".2f"), _fmt(case["latency_p99_ms"], ".2f"),
            f"journal_mode={case['journal_mode']}"
            + (f", {case['commits_per_s_with_drain']:.0f}/s counting the upload drain"
               if "commits_per_s_with_drain" in case else "")
            + (f", lag p99 {case['lag_p99_ms']:.1f} ms" if "lag_p99_ms" in case else ""),
        ])
    parts = [_table(
        f"1. Commits/s, one-row transactions ({c['plain']['commits']} commits per round; median"
        f" of {c['plain']['rounds']} interleaved round(s); sqlite-s3vfs 1 round)",
        ["case", "commits/s", "vs plain", "median ms", "p99 ms", "notes"], rows)]
    if "commits_per_s" in c["s3vfs"]:
        parts.append(f"   bottomless sync SeaweedFS / sqlite-s3vfs: "
                     f"{c['sync_s3']['commits_per_s'] / c['s3vfs']['commits_per_s']:.1f}x")
    return "\n\n".join(parts)


def _latency_section(results: dict[str, Any]) -> str:
    lat = results["latency"]
    return (_table("2. Sync commit latency on SeaweedFS vs the floor",
                        ["quantity", "ms"], [
        ["bottomless sync commit, median", _fmt(lat["sync_median_ms"], ".2f")],
        ["bottomless sync commit, p99", _fmt(lat["sync_p99_ms"], ".2f")],
        [f"raw s3fs PUT of {lat['object_bytes']:.0f} B, median", _fmt(lat["put_median_ms"], ".2f")],
        ["same PUT with If-None-Match: *, median", _fmt(lat["conditional_put_median_ms"], ".2f")],
        ["plain apsw local commit, median", _fmt(lat["local_median_ms"], ".2f")],
        ["floor = PUT + local commit", _fmt(lat["floor_ms"], ".2f")],
        ["ratio median / floor", f"{lat['ratio_median']:.2f}x"],
        ["ratio p99 / floor", f"{lat['ratio_p99']:.2f}x"],
        *_strict_floor_rows(lat),
    ]))


def _strict_floor_rows(lat: dict[str, Any]) -> list[list[str]]:
    """The floor with a plain botocore PUT (what bottomless sends commits with); results files
    from before it was measured have none."""
    if "strict_floor_ms" not in lat:
        return []
    return [
        ["raw botocore PUT (calling thread), median", _fmt(lat["botocore_put_median_ms"], ".2f")],
        ["same with If-None-Match: *, median",
         _fmt(lat["botocore_conditional_put_median_ms"], ".2f")],
        ["strict floor = botocore PUT + local commit", _fmt(lat["strict_floor_ms"], ".2f")],
        ["ratio median / strict floor", f"{lat['strict_ratio_median']:.2f}x"],
    ]


def _requests_section(results: dict[str, Any]) -> str:
    c = results.get("commits", {"s3vfs": {}})
    req = results["requests"]
    ops = sorted(set(req["commit_path"]["per_commit"]) | set(req["amortized"]["per_commit"])
                 | set(c["s3vfs"].get("requests_per_commit", {})))
    return (_table(
        "3. S3 requests per commit (botocore before-call events)",
        ["operation", f"bottomless commit path ({req['commit_path']['commits']} commits)",
         f"bottomless amortized ({req['amortized']['commits']} commits,"
         f" {req['amortized']['snapshots_taken']} snapshot)", "sqlite-s3vfs"],
        [[op, _fmt(req["commit_path"]["per_commit"].get(op, 0.0), ".3f"),
          _fmt(req["amortized"]["per_commit"].get(op, 0.0), ".3f"),
          _fmt(c["s3vfs"].get("requests_per_commit", {}).get(op, 0.0), ".2f")] for op in ops]
        + [["total", _fmt(sum(req["commit_path"]["per_commit"].values()), ".3f"),
            _fmt(sum(req["amortized"]["per_commit"].values()), ".3f"),
            _fmt(sum(c["s3vfs"].get("requests_per_commit", {}).values()), ".2f")]]))


def _restore_section(results: dict[str, Any]) -> str:
    r = results["restore"]
    return (_table(
        f"4. Restore of a {r['db_bytes'] / common.MB:.0f} MiB database from SeaweedFS"
        f" ({r['objects']} objects, {r['object_bytes'] / common.MB:.0f} MiB)",
        ["quantity", "value"], [
            ["bottomless.restore()", f"{r['restore_s']:.2f} s = {r['restore_mb_s']:.0f} MiB/s"],
            ["(before it, first S3 client of the process)", f"{r['client_setup_s']:.2f} s"],
            ["raw s3fs download, cat_file pool", f"{r['raw_thread_pool_s']:.2f} s"],
            ["raw s3fs download, get_object pool (no HEAD)",
             f"{r['raw_get_object_pool_s']:.2f} s"],
            ["raw s3fs download, fs.cat", f"{r['raw_fs_cat_s']:.2f} s"],
            *([["raw botocore download, get_object pool", f"{r['raw_botocore_pool_s']:.2f} s"]]
              if "raw_botocore_pool_s" in r else []),
            ["raw (best)", f"{r['raw_s']:.2f} s = {r['raw_mb_s']:.0f} MiB/s"],
            ["ratio restore / raw throughput", f"{r['restore_mb_s'] / r['raw_mb_s']:.2f}x"],
            ["(for scale: fastest get_object pool + write + fsync)",
             f"{r['raw_download_and_write_s']:.2f} s"],
            ["restore peak RSS (child)", f"{r['restore_peak_rss_mb']:.0f} MiB"],
            ["idle child RSS (imports + store)", f"{r['idle_child_rss_mb']:.0f} MiB"],
        ]))


def _reads_section(results: dict[str, Any]) -> str:
    rd = results["reads"]
    return (_table(
        f"5. Read-heavy query ({rd['lookups']} point lookups + {rd['range_scans']} range scans"
        f" of 20%, {rd['db_bytes'] / common.MB:.0f} MiB db, cache_size {rd['cache_size']})",
        ["connection", "seconds (median)"], [
            ["plain apsw", f"{rd['plain_s']:.3f}"],
            ["bottomless", f"{rd['bottomless_s']:.3f}"],
            ["ratio", f"{rd['ratio']:.3f}x"]]))


def _bucket_section(results: dict[str, Any]) -> str:
    b = results["bucket"]
    return (_table(
        f"6. Bucket bytes / db size after {b['updates']} one-row UPDATEs (file backend)",
        ["when", "bucket bytes", "objects", "ratio to db"], [
            ["db file", str(b["db_bytes"]), "-", "1.00x"],
            ["before gc", str(b["bucket_bytes_before_gc"]), str(b["objects_before_gc"]),
             f"{b['ratio_before_gc']:.2f}x"],
            ["after gc --older-than 1s", str(b["bucket_bytes_after_gc"]),
             str(b["objects_after_gc"]), f"{b['ratio_after_gc']:.2f}x"]]))


def _litestream_section(results: dict[str, Any]) -> str:
    found = results.get("litestream", {"skipped": "not measured in this results file"})
    return litestream.render(found, _table)


def _replica_section(results: dict[str, Any]) -> str:
    found = results.get("replica", {"skipped": "not measured in this results file"})
    return replica.render(found, _table)


def _stall_section(results: dict[str, Any]) -> str:
    found = results.get("stall", {"skipped": "not measured in this results file"})
    if "workers" not in found:
        return f"9. Sync commits during a background snapshot: {found}"
    return _table(
        f"9. Sync commits during a background snapshot (after a {found['bulk_mb']} MiB"
        f" transaction; {found['rounds']} rounds per worker, taking turns)",
        snapshot_stall.HEADER, snapshot_stall.rows(found))


SECTIONS = [
    ("1. Commits/s", "commits", _commits_section),
    ("2. Sync commit latency", "latency", _latency_section),
    ("3. S3 requests per commit", "requests", _requests_section),
    ("4. Restore", "restore", _restore_section),
    ("5. Read-heavy query", "reads", _reads_section),
    ("6. Bucket bytes", "bucket", _bucket_section),
    ("7. bottomless vs Litestream", "litestream", _litestream_section),
    ("8. Read replicas and failover", "replica", _replica_section),
    ("9. Sync commits during a snapshot", "stall", _stall_section),
]


# ------------------------------------------------------------------ main


def wait_for_idle(limit: float) -> None:
    """Sleep until the 1-minute load average is below half the cores, or ``limit`` passes."""
    threshold = 0.5 * (os.cpu_count() or 1)
    deadline = time.monotonic() + limit
    while os.getloadavg()[0] >= threshold and time.monotonic() < deadline:
        print(f"waiting for load {os.getloadavg()[0]:.2f} < {threshold:.1f}", file=sys.stderr,
              flush=True)
        time.sleep(10)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.markdown:
        STYLE["table"] = "markdown"
    if args.from_json:
        with open(args.from_json, encoding="utf-8") as handle:
            print(render(json.load(handle)))
        return 0
    sizes = dict(QUICK if args.quick else FULL)
    if args.commits:
        sizes["commits"] = args.commits
    restore_mb = args.restore_mb or (16 if args.quick else 256)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    workdir = args.workdir or tempfile.mkdtemp(prefix="bottomless-bench-")
    os.makedirs(workdir, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, Any] = {"quick": args.quick, "restore_mb": restore_mb, "sizes": sizes,
                               "machine": common.machine()}

    results["steps"] = []

    def step(label: str) -> None:
        load = os.getloadavg()[0]
        results["steps"].append({"step": label, "at_s": time.perf_counter() - started,
                                 "load_1min": load})
        print(f"[{time.perf_counter() - started:6.1f}s] {label} (load {load:.2f})",
              file=sys.stderr, flush=True)

    def section(key: str, label: str, run: Any) -> None:
        common.measure_into(results, key, label, run, step)

    def latency() -> dict[str, Any]:
        commits = results["commits"]
        sync = commits["sync_s3"]
        put = measure_commits.put_floor(server, int(sync["commit_object_bytes_median"]),
                                sizes["put_repeats"])
        local = commits["plain"]["latency_median_ms"]
        floor = put["put_median_ms"] + local
        strict_floor = put["botocore_put_median_ms"] + local
        return {
            "sync_median_ms": sync["latency_median_ms"], "sync_p99_ms": sync["latency_p99_ms"],
            "object_bytes": put["bytes"], "put_median_ms": put["put_median_ms"],
            "put_p99_ms": put["put_p99_ms"],
            "conditional_put_median_ms": put["conditional_put_median_ms"],
            "botocore_put_median_ms": put["botocore_put_median_ms"],
            "botocore_conditional_put_median_ms": put["botocore_conditional_put_median_ms"],
            "local_median_ms": local, "floor_ms": floor,
            "ratio_median": sync["latency_median_ms"] / floor,
            "ratio_p99": sync["latency_p99_ms"] / floor,
            "strict_floor_ms": strict_floor,
            "strict_ratio_median": sync["latency_median_ms"] / strict_floor,
        }

    if args.wait_for_idle:
        wait_for_idle(args.wait_for_idle)
    step("starting SeaweedFS")
    server = start_seaweed()
    try:
        section("commits", "1. commit rates",
                lambda: measure_commits.commit_throughput(
                    server, workdir, sizes["commits"], sizes["rounds"]))
        section("latency", "2. raw PUT floor", latency)
        section("requests", "3. requests per commit", lambda: measure_commits.requests_per_commit(
            server, workdir, sizes["commits"], sizes["snapshot_every"]))
        section("restore", f"4. restore of {restore_mb} MiB (building it first)",
                lambda: measure_data.restore_benchmark(
                    server, workdir, restore_mb, sizes["restore_rounds"]))
        section("reads", "5. read-heavy query", lambda: measure_data.read_benchmark(
            workdir, sizes["read_rows"], sizes["lookups"], sizes["read_rounds"]))
        section("bucket", f"6. bucket bytes after {sizes['updates']} updates",
                lambda: measure_data.bucket_bytes(workdir, sizes["updates"], sizes["update_rows"]))
        if args.no_litestream:
            results["litestream"] = {"skipped": "left out (--no-litestream)"}
        else:
            section("litestream", "7. bottomless vs Litestream", lambda: litestream.compare(
                server, workdir, litestream.sizes_from(args), step))
        if args.no_replica:
            results["replica"] = {"skipped": "left out (--no-replica)"}
        else:
            section("replica", "8. read replicas and failover", lambda: replica.measure(
                server, workdir, replica.sizes_from(args), step))
        if args.no_stall:
            results["stall"] = {"skipped": "left out (--no-stall)"}
        else:
            section("stall", "9. sync commits during a background snapshot",
                    lambda: snapshot_stall.measure(
                        server, workdir,
                        snapshot_stall.QUICK if args.quick else snapshot_stall.FULL, step))
    finally:
        step("stopping SeaweedFS")
        server.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    results["targets"] = evaluate(results)
    results["total_s"] = time.perf_counter() - started
    first = next(st["at_s"] for st in results["steps"] if st["step"] == "starting SeaweedFS")
    results["measure_s"] = results["total_s"] - first
    print(render(results))
    print(f"\n{results['measure_s']:.0f} s measuring ({results['total_s']:.0f} s in all);"
          f" results in {args.output}")
    common.save_results(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

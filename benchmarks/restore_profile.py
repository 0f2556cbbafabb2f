"""Restore of one large database against its floor, repeatably, optionally under a profiler.

    python benchmarks/restore_profile.py [--mb 1024] [--rounds 3] [--parallelism N]
                                         [--profile pyinstrument|py-spy] [--workdir DIR]

Starts its own SeaweedFS, builds a ``--mb`` MiB database of random blobs as row 7.4 of
docs/benchmarks.md does (a plain file, replicated by ``bottomless.connect`` as one snapshot,
then a few small commits), once. Then, ``--rounds`` times, in this process: the floor (a pool of
GETs of the same objects, written to one file in turn and fsynced, the floor row of 7.4) and
``bottomless.restore()``, each restored file checked against the source's rows. Prints every
time, the best of each and ``floor / restore`` (the throughput ratio; the target is >= 0.7),
with the load average, which must be low for the figures to mean anything.

``--profile`` profiles one extra restore after the timed ones: pyinstrument sees only the
calling thread (where restore waits), so use ``py-spy`` (``pip install py-spy``), which samples
every thread, native frames included, and prints the top frames by own time.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
for _name in [n for n in os.environ if n.startswith("LIBSQL_BOTTOMLESS_")]:
    del os.environ[_name]

import measure_litestream_data as data  # noqa: E402
from common import MB, median, payloads, replicator_of, s3_settings  # noqa: E402
from litestream_tool import prepare_writer  # noqa: E402
from measure_litestream import insert_timed  # noqa: E402

import bottomless  # noqa: E402
from bottomless.testing.seaweed import SeaweedServer, start_seaweed  # noqa: E402

NAME = "profile.db"


def build(server: SeaweedServer, workdir: str, size_mb: int, **overrides: Any) -> dict[str, Any]:
    """Replicate a ``size_mb`` database to a fresh bucket; its settings and row digest."""
    path = os.path.join(workdir, "source.db")
    db_bytes = data.build_blobs_db(path, size_mb)
    settings = s3_settings(server, server.new_bucket(), db_name=NAME, **overrides)
    started = time.perf_counter()
    conn = bottomless.connect(path, settings)
    try:
        prepare_writer(conn)
        replicator_of(path).wait_snapshot()
        insert_timed(conn, payloads(20, 33))
    finally:
        conn.close()
    built = {"settings": settings, "db_bytes": db_bytes, "digest": data._digest(path),
             "replicate_s": time.perf_counter() - started}
    data._remove_db(path)
    return built


def timed_restore(settings: bottomless.Settings, out: str) -> tuple[float, float]:
    """Wall and CPU seconds (this process's, every thread) of one ``bottomless.restore()``
    into ``out``: on a loaded machine the CPU seconds say more than the wall time."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    bottomless.restore(out, settings, db_name=NAME)
    return time.perf_counter() - t0, time.process_time() - cpu0


def measure(server: SeaweedServer, built: dict[str, Any], workdir: str,
            rounds: int) -> dict[str, Any]:
    """``rounds`` of floor then restore (the first restore of the process warmed up apart)."""
    settings: bottomless.Settings = built["settings"]
    out = os.path.join(workdir, "restored.db")
    timed_restore(settings, out)  # botocore's service model, page cache of the server
    data._remove_db(out)
    floors: list[float] = []
    restores: list[float] = []
    cpus: list[float] = []
    loads: list[float] = []
    for _ in range(rounds):
        loads.append(os.getloadavg()[0])
        floor = data._download_floor(server, settings.bucket, NAME + "/",
                                     settings.parallelism, out)
        floors.append(floor["seconds"])
        wall, cpu = timed_restore(settings, out)
        restores.append(wall)
        cpus.append(cpu)
        if data._digest(out) != built["digest"]:
            raise RuntimeError("the restored database differs from its source")
        data._remove_db(out)
    return {"floor_s": floors, "restore_s": restores, "restore_cpu_s": cpus,
            "load": loads,
            "objects": floor["objects"], "object_bytes": floor["bytes"]}


def profile_py_spy(settings: bottomless.Settings, workdir: str, top: int = 25) -> None:
    """One restore sampled by py-spy (all threads, native frames); print the hottest frames."""
    out = os.path.join(workdir, "restored.db")
    raw = os.path.join(tempfile.gettempdir(), "restore-profile-py-spy.txt")  # kept
    spy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or "py-spy"
    sampler = subprocess.Popen(
        [spy, "record", "--pid", str(os.getpid()), "--native", "--threads", "--rate", "100",
         "--format", "raw", "--output", raw],  # --native cannot be --nonblocking
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)  # py-spy attaches
    seconds, _ = timed_restore(settings, out)
    sampler.send_signal(2)
    sampler.wait(timeout=60)
    data._remove_db(out)
    print(f"profiled restore: {seconds:.2f} s; py-spy samples in {raw}")
    print_top_frames(raw, top)


def print_top_frames(raw: str, top: int) -> None:
    """From py-spy's raw output (``frame;frame;... count`` per line), the samples of the
    download threads by their innermost named frame (bare addresses skipped) and by their
    innermost Python frame."""
    native: collections.Counter[str] = collections.Counter()
    python: collections.Counter[str] = collections.Counter()
    total = 0
    with open(raw, encoding="utf-8") as handle:
        for line in handle:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            if "MainThread" in frames[0]:
                continue
            total += int(count)
            leaf = next((f for f in reversed(frames) if not f.startswith("0x")), frames[-1])
            native[leaf] += int(count)
            python[next((f for f in reversed(frames) if ".py:" in f), leaf)] += int(count)
    for title, counter in (("innermost frame", native), ("innermost Python frame", python)):
        print(f"download threads, {total} samples, by {title}:")
        for frame, count in counter.most_common(top):
            print(f"  {100 * count / max(total, 1):5.1f}%  {frame[:140]}")


def profile_pyinstrument(settings: bottomless.Settings, workdir: str) -> None:
    """One restore under pyinstrument (the calling thread only)."""
    from pyinstrument import Profiler

    out = os.path.join(workdir, "restored.db")
    profiler = Profiler(interval=0.001)
    with profiler:
        timed_restore(settings, out)
    data._remove_db(out)
    print(profiler.output_text(unicode=True, show_all=False))


def report(size_mb: int, result: dict[str, Any]) -> None:
    """Every run, the best of each, the ratio floor / restore and the load average."""
    floor, restore = min(result["floor_s"]), min(result["restore_s"])
    mib = result["object_bytes"] / MB
    print(f"{size_mb} MiB database, {result['objects']} objects ({mib:.0f} MiB),"
          f" load {' '.join(f'{x:.2f}' for x in result['load'])} on {os.cpu_count()} cores")
    print(f"  floor   runs {' '.join(f'{x:.2f}' for x in result['floor_s'])} s;"
          f" best {floor:.2f} s = {mib / floor:.0f} MiB/s")
    print(f"  restore runs {' '.join(f'{x:.2f}' for x in result['restore_s'])} s;"
          f" best {restore:.2f} s = {mib / restore:.0f} MiB/s,"
          f" median {median(result['restore_s']):.2f} s; CPU"
          f" {' '.join(f'{x:.2f}' for x in result['restore_cpu_s'])} s")
    print(f"  ratio floor/restore {floor / restore:.2f}x (best), "
          f"{median(result['floor_s']) / median(result['restore_s']):.2f}x (medians);"
          " target >= 0.70x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=1024, help="database size in MiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parallelism", type=int, default=None,
                        help="Settings.parallelism (default: the setting's default)")
    parser.add_argument("--profile", choices=("pyinstrument", "py-spy"), default=None)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="bottomless-restore-profile-")
    os.makedirs(workdir, exist_ok=True)
    overrides = {} if args.parallelism is None else {"parallelism": args.parallelism}
    profilers: dict[str, Callable[[bottomless.Settings, str], None]] = {
        "pyinstrument": profile_pyinstrument, "py-spy": profile_py_spy}
    server = start_seaweed()
    try:
        t0 = time.perf_counter()
        built = build(server, workdir, args.mb, **overrides)
        print(f"built and replicated in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        report(args.mb, measure(server, built, workdir, args.rounds))
        if args.profile:
            profilers[args.profile](built["settings"], workdir)
    finally:
        server.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

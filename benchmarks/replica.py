"""Read replicas and failover on SeaweedFS: replica lag, promotion time, idle requests.

    python benchmarks/replica.py            # this part alone, its own SeaweedFS (~3 minutes)
    python benchmarks/replica.py --quick    # a smoke run (about a minute)

``benchmarks/run.py`` runs the same measurements as its section 8 (``--no-replica`` leaves
them out). Run alone, this script starts its own SeaweedFS, prints its tables and writes
``benchmarks/results-replica.json``. The writers are child processes
(``benchmarks/replica_writer.py``); the replicas follow in this process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
for _name in [n for n in os.environ if n.startswith("LIBSQL_BOTTOMLESS_")]:
    del os.environ[_name]  # the benchmarks configure bottomless explicitly

import common  # noqa: E402
from s3proxy import S3Proxy, count_by_operation  # noqa: E402

import bottomless  # noqa: E402
from bottomless import format as fmt  # noqa: E402
from bottomless.testing.seaweed import SeaweedServer, start_seaweed  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WRITER = os.path.join(HERE, "replica_writer.py")

#: AWS S3 Standard list prices, dollars per request (the replica sends GETs and LISTs only)
GET_PRICE = 0.0004 / 1000
LIST_PRICE = 0.005 / 1000
HOURS_PER_MONTH = 730

#: sizes of the full part (under ~3 minutes on 2 cores) and of --quick (about a minute)
FULL = {"rate": 100.0, "lag_s": 20.0, "wait_for_s": 10.0, "poll_intervals": [0.1, 1.0],
        "gets": 300, "lease_ttl": 5.0, "promotions": 3, "follow_s": 2.0, "idle_s": 60.0}
QUICK = {"rate": 100.0, "lag_s": 5.0, "wait_for_s": 4.0, "poll_intervals": [0.1, 1.0],
         "gets": 100, "lease_ttl": 5.0, "promotions": 1, "follow_s": 2.0, "idle_s": 10.0}
#: commits in the first second of a lag run are left out (the replica has just started)
SKIP_S = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the replica part (shared by run.py)."""
    parser.add_argument("--no-replica", action="store_true",
                        help="leave out the read replica and failover measurements")
    parser.add_argument("--replica-idle-seconds", type=float, default=None, metavar="S",
                        help="how long the idle replicas' requests are counted"
                        " (default 60; 10 with --quick)")


def sizes_from(args: argparse.Namespace) -> dict[str, Any]:
    """The replica part's sizes for these options."""
    sizes = dict(QUICK if args.quick else FULL)
    if args.replica_idle_seconds:
        sizes["idle_s"] = args.replica_idle_seconds
    return sizes


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _settings(server: SeaweedServer, bucket: str, db_name: str,
              **overrides: Any) -> bottomless.Settings:
    return common.s3_settings(server, bucket, db_name=db_name, **overrides)


def _ms(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(common.percentile(values, 0.5) * 1000, 2),
            "p99_ms": round(common.percentile(values, 0.99) * 1000, 2),
            "max_ms": round(max(values) * 1000, 2), "samples": len(values)}


# ------------------------------------------------------------------ the writer child


class Writer:
    """A paced sync writer in a child process (replica_writer.py) and what it printed."""

    def __init__(self, server: SeaweedServer, workdir: str, bucket: str, db_name: str, *,
                 rate: float, seconds: float = 0.0, lease_ttl: float = 30.0,
                 endpoint: str | None = None) -> None:
        self.path = os.path.join(workdir, f"{db_name}-writer.db")
        self._log_path = os.path.join(workdir, f"{db_name}-writer.log")
        self._log = open(self._log_path, "wb")  # noqa: SIM115 - closed when the child ends
        self.process = subprocess.Popen(
            [sys.executable, WRITER, self.path, "--endpoint", endpoint or server.endpoint,
             "--bucket", bucket, "--db-name", db_name, "--lease-ttl", str(lease_ttl),
             "--rate", str(rate), "--seconds", str(seconds)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True)
        #: (seq, unix time COMMIT returned, bookmark) of every commit, in order
        self.commits: list[tuple[int, float, str]] = []
        self.bookmarks: queue.Queue[tuple[int, float, str] | None] = queue.Queue()
        self.generation: str | None = None
        self.opened = threading.Event()
        self.ended = threading.Event()
        self._reader = threading.Thread(target=self._read, name="writer-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("open"):
                self.generation = line.split()[1]
                self.opened.set()
            elif line.startswith("end"):
                break
            else:
                seq, at, bookmark = line.split()
                commit = (int(seq), float(at), bookmark)
                self.commits.append(commit)
                self.bookmarks.put(commit)
        self.ended.set()
        self.opened.set()
        self.bookmarks.put(None)

    def wait_open(self, timeout: float = 60.0) -> None:
        """Wait for the child to have created its database (raise with its stderr if not)."""
        self.opened.wait(timeout)
        if self.process.poll() is not None or not self.opened.is_set() or self.ended.is_set():
            raise RuntimeError(f"the writer child did not start: {self.stderr()[-2000:]}")

    def go(self) -> None:
        """Start committing."""
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def stderr(self) -> str:
        """What the child wrote to stderr so far."""
        with open(self._log_path, "rb") as handle:
            return handle.read().decode(errors="replace")

    def kill(self) -> None:
        """SIGKILL the child and reap it."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self._reader.join(10)
        self._log.close()

    def finish(self, timeout: float = 60.0) -> None:
        """Wait for the child to end on its own."""
        self.process.wait(timeout)
        self._reader.join(10)
        self._log.close()


# ------------------------------------------------------------------ 8.1 one GET


def get_latency(server: SeaweedServer, bucket: str, db_name: str, key: str,
                count: int) -> dict[str, Any]:
    """GET of an existing small object (a commit object) and of a missing one, each timed
    through ``bottomless.open_store(settings)``, the replica's own kind of store."""
    load = _load()
    store = bottomless.open_store(_settings(server, bucket, db_name))
    try:
        size = len(store.get(key))
        missing = key + "-missing"
        found: list[float] = []
        absent: list[float] = []
        for _ in range(5):  # warm the connection pool
            store.get(key)
        for _ in range(count):  # in turns, so that load changes hit both alike
            t0 = time.perf_counter()
            store.get(key)
            t1 = time.perf_counter()
            with contextlib.suppress(bottomless.ObjectNotFoundError):
                store.get(missing)
            t2 = time.perf_counter()
            found.append(t1 - t0)
            absent.append(t2 - t1)
    finally:
        store.close()
    return {"object_bytes": size, "found": _ms(found), "missing": _ms(absent),
            "load_before": load, "load_after": _load()}


# ------------------------------------------------------------------ 8.2 replica lag


class _Observer:
    """Watches a replica's ``status()`` every millisecond and notes, for each change of
    ``seq``, the ``last_applied_time`` the follower recorded for it. Several applies within
    one millisecond are credited to the last of them (lag over-stated by at most that).

    It also notes how long each apply took: from the end of the poll that fetched the commits
    (``last_poll_time``: the GETs are done, the objects decoded) to ``last_applied_time``
    (the commits checked, written to the WAL and the wal-index, both files synced)."""

    def __init__(self, replica: bottomless.Replica) -> None:
        self.replica = replica
        self.applies: list[tuple[int, float]] = []
        self.apply_seconds: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replica-observer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = None
        while not self._stop.is_set():
            status = self.replica.status()
            seq = status["seq"]
            if seq != last and status["last_applied_time"] is not None:
                applied = status["last_applied_time"]
                self.applies.append((seq, applied))
                polled = status["last_poll_time"]
                if polled is not None and polled <= applied:  # else a later poll ended
                    self.apply_seconds.append(applied - polled)
                last = seq
            time.sleep(0.001)

    def seq(self) -> int | None:
        return self.applies[-1][0] if self.applies else None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class _Waiter:
    """Calls ``replica.wait_for(bookmark)`` for each commit, in order, from a thread, and
    notes when each returned."""

    def __init__(self, replica: bottomless.Replica, writer: Writer) -> None:
        self.replica = replica
        self.writer = writer
        self.returned: dict[int, float] = {}
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="replica-waiter", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while (item := self.writer.bookmarks.get()) is not None:
                seq, _at, bookmark = item
                self.replica.wait_for(bookmark, timeout=30)
                self.returned[seq] = time.time()
        except BaseException as e:  # noqa: BLE001 - reported with the results
            self.error = e

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def lag_run(server: SeaweedServer, workdir: str, bucket: str, *, poll_interval: float,
            seconds: float, rate: float, method: str) -> dict[str, Any]:
    """A writer child commits at ``rate`` for ``seconds`` while a replica follows; the lag of
    each commit from its COMMIT returning (in the child) to the replica having applied it.

    ``method`` ``"status"``: an observer thread reads ``replica.status()`` every millisecond
    and takes the follower's own ``last_applied_time`` of each new ``seq``; the follower is
    left alone. ``"wait_for"``: a thread calls ``replica.wait_for(bookmark)`` per commit;
    each call that has to wait wakes the follower from its pause, so this measures
    read-your-writes latency, not the lag of an undisturbed replica.
    """
    load = _load()
    db_name = f"lag-{method}-{str(poll_interval).replace('.', '_')}"
    writer = Writer(server, workdir, bucket, db_name, rate=rate, seconds=seconds)
    replica: bottomless.Replica | None = None
    observer: _Observer | None = None
    waiter: _Waiter | None = None
    try:
        writer.wait_open()
        replica = bottomless.Replica(os.path.join(workdir, f"{db_name}-replica.db"),
                                     _settings(server, bucket, db_name),
                                     poll_interval=poll_interval)
        replica.start()
        before = dict(replica.status()["requests"])
        if method == "status":
            observer = _Observer(replica)
        else:
            waiter = _Waiter(replica, writer)
        writer.go()
        writer.finish(timeout=seconds + 60)
        last = writer.commits[-1][0]
        deadline = time.monotonic() + poll_interval + 30
        if observer is not None:  # no wait_for here: it would wake the follower
            while (observer.seq() or 0) < last and time.monotonic() < deadline:
                time.sleep(0.01)
        if waiter is not None:
            waiter.join(poll_interval + 30)
            if waiter.error is not None:
                raise waiter.error
        after = dict(replica.status()["requests"])
    finally:
        if observer is not None:
            observer.stop()
        if writer.process.poll() is None:
            writer.kill()
        if replica is not None:
            replica.stop()
    commits = writer.commits
    first_time = commits[0][1]
    applied: dict[int, float] = {}
    if observer is not None:
        for seq, at in observer.applies:  # a batch of commits applied together
            for s in range(max(applied, default=commits[0][0] - 1) + 1, seq + 1):
                applied[s] = at
    else:
        assert waiter is not None
        applied = waiter.returned
    lags = [applied[seq] - at for seq, at, _ in commits
            if at - first_time >= SKIP_S and seq in applied]
    span = commits[-1][1] - first_time
    requests = {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(after) | set(before))}
    return {
        "method": method, "poll_interval": poll_interval, "target_rate": rate,
        "db_name": db_name, "generation": writer.generation,
        "commits": len(commits), "rate": round((len(commits) - 1) / span, 1) if span else None,
        "measured_commits": len(lags), "missing": sum(1 for s, _, _ in commits if s not in applied),
        "lag": _ms(lags) | {"min_ms": round(min(lags) * 1000, 2)},
        "replica_requests": requests,
        "applies": len(observer.applies) if observer is not None else None,
        "apply": _ms(observer.apply_seconds) if observer and observer.apply_seconds else None,
        "load_before": load, "load_after": _load(),
    }


# ------------------------------------------------------------------ 8.3 promotion


def promotion_round(server: SeaweedServer, workdir: str, bucket: str, n: int, *,
                    lease_ttl: float, follow_s: float, phase: float) -> dict[str, Any]:
    """A writer child (sync, ``lease_ttl``) commits 50 times a second while a replica
    (``poll_interval`` 1 s) follows; SIGKILL the child, promote the replica, commit once
    through ``bottomless.connect`` on the promoted file.

    The writer renews its lease every ``lease_ttl / 3`` s, so how long promotion waits
    depends on when the kill falls: it falls ``phase`` of a renewal period after a renewal
    (0: just after one, the longest wait). The writer's requests go through a recording
    proxy, which shows when each renewal (a PUT of the lease object) completed."""
    load = _load()
    db_name = f"failover-{n}"
    settings = _settings(server, bucket, db_name, lease_ttl=lease_ttl)
    replica = bottomless.Replica(os.path.join(workdir, f"{db_name}-replica.db"), settings,
                                 poll_interval=1.0)
    lease = fmt.lease_key(db_name)
    with S3Proxy(server.endpoint) as proxy:
        writer = Writer(server, workdir, bucket, db_name, rate=50.0, lease_ttl=lease_ttl,
                        endpoint=proxy.endpoint)
        try:
            try:
                writer.wait_open()
                replica.start()
                writer.go()
                time.sleep(follow_s)
                since = time.perf_counter()
                deadline = since + lease_ttl + 5
                renewals: list[float] = []
                while not renewals and time.perf_counter() < deadline:
                    time.sleep(0.005)
                    renewals = [r.finished for r in proxy.requests(bucket, since)
                                if r.method == "PUT" and r.key == lease and r.status == 200]
                if not renewals:
                    raise RuntimeError(f"no renewal of {lease} seen in {lease_ttl + 5} s")
                time.sleep(max(0.0, renewals[0] + phase * lease_ttl / 3 - time.perf_counter()))
            finally:
                killed = time.monotonic()
                after_renewal = time.perf_counter() - renewals[0] if renewals else None
                writer.kill()
            promise = writer.commits[-1][0] if writer.commits else 0
            started = time.monotonic()
            promotion = replica.promote(timeout=lease_ttl + 30)
            promoted = time.monotonic()
        except BaseException:
            replica.stop()
            raise
    db = bottomless.connect(replica.path, settings)
    try:
        db.execute("INSERT INTO t(v) VALUES ('after failover')")
        committed = time.monotonic()
        first = bottomless.status(db)["last_replicated_commit"]
    finally:
        db.close()
    return {
        "killed_after_renewal_s": None if after_renewal is None else round(after_renewal, 3),
        "kill_to_promoted_s": round(promoted - killed, 3),
        "promote_to_first_commit_s": round(committed - started, 3),
        "kill_to_first_commit_s": round(committed - killed, 3),
        "promote_s": round(promoted - started, 3),
        "connect_and_commit_s": round(committed - promoted, 3),
        "lease_wait_s": promotion.lease_wait_seconds,
        "acknowledged_seq": promise, "promoted_seq": promotion.seq, "first_new_seq": first,
        "nothing_lost": promotion.seq >= promise and first == promotion.seq + 1,
        "load_before": load, "load_after": _load(),
    }


# ------------------------------------------------------------------ 8.4 idle requests


def idle_requests(server: SeaweedServer, workdir: str, poll_intervals: list[float],
                  seconds: float) -> dict[str, Any]:
    """Replicas (one per poll interval, each in a bucket of its own) follow a database nobody
    writes, through a counting proxy, for ``seconds``: requests by kind, per hour, priced."""
    load = _load()
    buckets = {p: server.new_bucket() for p in poll_intervals}
    for p, bucket in buckets.items():  # one small database, then the writer is gone
        db = bottomless.connect(os.path.join(workdir, f"idle-{p}.db"),
                                _settings(server, bucket, "idle"))
        db.execute("CREATE TABLE t(v)")
        db.execute("INSERT INTO t VALUES ('idle')")
        db.close()
    found: dict[str, Any] = {"seconds": seconds, "generation_check_interval": 30.0}
    with S3Proxy(server.endpoint) as proxy:
        replicas = {p: bottomless.Replica(os.path.join(workdir, f"idle-{p}-replica.db"),
                                          _settings(server, b, "idle", endpoint=proxy.endpoint),
                                          poll_interval=p)
                    for p, b in buckets.items()}
        try:
            for replica in replicas.values():
                replica.start()
            time.sleep(1.5)  # past the restore and the first idle look for generations
            since = time.perf_counter()
            before = {p: dict(r.status()["requests"]) for p, r in replicas.items()}
            time.sleep(seconds)
            until = time.perf_counter()
            after = {p: dict(r.status()["requests"]) for p, r in replicas.items()}
        finally:
            for replica in replicas.values():
                replica.stop()
        for p, bucket in buckets.items():
            counted = {k: after[p].get(k, 0) - before[p].get(k, 0)
                       for k in sorted(set(after[p]) | set(before[p]))}
            http = count_by_operation(proxy.requests(bucket, since, until))
            http = {k: v for k, v in http.items() if v}
            per_hour = {k: v * 3600 / seconds for k, v in http.items()}
            dollars = (per_hour.get("GET", 0) + per_hour.get("HEAD", 0)) * GET_PRICE \
                + per_hour.get("LIST", 0) * LIST_PRICE
            polls = counted.get("get_missing", 0) + counted.get("get", 0)
            found[str(p)] = {
                "poll_interval": p, "status_requests": counted, "http_requests": http,
                "http_per_hour": {k: round(v) for k, v in per_hour.items()},
                "dollars_per_hour": dollars, "dollars_per_month": dollars * HOURS_PER_MONTH,
                "polls": polls, "http_gets_per_poll": round(http.get("GET", 0) / polls, 3)
                if polls else None,
                "gets_per_hour_if_one_per_poll": round(3600 / p),
            }
    found["load_before"], found["load_after"] = load, _load()
    return found


# ------------------------------------------------------------------ all of it


def measure(server: SeaweedServer, workdir: str, sizes: dict[str, Any],
            step: Callable[[str], None] = lambda label: None) -> dict[str, Any]:
    """Every replica measurement on ``server``; a part that fails records its error."""
    results: dict[str, Any] = {"sizes": sizes}
    bucket = server.new_bucket()

    def part(key: str, label: str, run: Callable[[], Any]) -> None:
        common.measure_into(results, key, label, run, step)

    def lag_runs() -> dict[str, Any]:
        runs = {f"status_{p}": lag_run(server, workdir, bucket, poll_interval=p,
                                       seconds=sizes["lag_s"], rate=sizes["rate"],
                                       method="status") for p in sizes["poll_intervals"]}
        slowest = max(sizes["poll_intervals"])
        runs[f"wait_for_{slowest}"] = lag_run(
            server, workdir, bucket, poll_interval=slowest, seconds=sizes["wait_for_s"],
            rate=sizes["rate"], method="wait_for")
        return runs

    def get() -> dict[str, Any]:
        run = next(iter(results["lag"].values()))  # a commit object of the first lag run
        key = fmt.commit_key(run["db_name"], run["generation"], 10)
        return get_latency(server, bucket, run["db_name"], key, sizes["gets"])

    part("lag", f"8.1 replica lag at {sizes['rate']:.0f} commits/s, poll"
         f" {', '.join(map(str, sizes['poll_intervals']))} s ({sizes['lag_s']:.0f} s each)",
         lag_runs)
    part("get", "8.2 one GET", get)
    part("promotion", f"8.3 promotion, lease_ttl {sizes['lease_ttl']} s,"
         f" {sizes['promotions']} round(s)",
         lambda: [promotion_round(server, workdir, bucket, n, lease_ttl=sizes["lease_ttl"],
                                  follow_s=sizes["follow_s"], phase=n / sizes["promotions"])
                  for n in range(sizes["promotions"])])
    part("idle", f"8.4 idle requests ({sizes['idle_s']:.0f} s)",
         lambda: idle_requests(server, workdir, sizes["poll_intervals"], sizes["idle_s"]))
    results["targets"] = targets(results)
    return results


# ------------------------------------------------------------------ targets


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The replica targets: lag p99 <= poll + 2 GETs (p99), promotion <= lease TTL + 1 s,
    idle: one GET per poll. ``status``: MET, NOT MET or SKIPPED (not measured)."""
    found: list[dict[str, Any]] = []

    def add(name: str, goal: str, check: Callable[[], tuple[str, bool]]) -> None:
        try:
            value, ok = check()
            status = "MET" if ok else "NOT MET"
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            value, status = f"not measured ({type(e).__name__}: {e})", "SKIPPED"
        found.append({"target": name, "goal": goal, "value": value, "status": status})

    get_p99 = results.get("get", {}).get("found", {}).get("p99_ms")
    for p in results.get("sizes", {}).get("poll_intervals", []):
        def lag(p: float = p) -> tuple[str, bool]:
            run = results["lag"][f"status_{p}"]
            measured = run["lag"]["p99_ms"]
            limit = p * 1000 + 2 * get_p99
            apply = f"; apply p99 {run['apply']['p99_ms']:.1f} ms" if run.get("apply") else ""
            return (f"{measured:.1f} ms (limit {limit:.1f} ms{apply}; {run['rate']:.0f}"
                    " commits/s)", measured <= limit)
        add(f"replica lag p99, poll {p} s, {results['sizes']['rate']:.0f} commits/s",
            "<= poll + 2 x GET p99", lag)

    def promotion() -> tuple[str, bool]:
        rounds = results["promotion"]
        ttl = results["sizes"]["lease_ttl"]
        worst = max(r["kill_to_first_commit_s"] for r in rounds)
        return (f"{worst:.2f} s worst of {len(rounds)} (limit {ttl + 1:.1f} s)",
                worst <= ttl + 1 and all(r["nothing_lost"] for r in rounds))
    add("failover: SIGKILL -> promoted -> first commit", "<= lease TTL + 1 s", promotion)

    for p in results.get("sizes", {}).get("poll_intervals", []):
        def idle(p: float = p) -> tuple[str, bool]:
            r = results["idle"][str(p)]
            gets = r["http_requests"].get("GET", 0)
            allowed = results["idle"]["seconds"] / p + 1  # one poll may straddle the edge
            return (f"{r['http_gets_per_poll']:.2f} GET per poll, {gets} GETs in"
                    f" {results['idle']['seconds']:.0f} s (at most {allowed:.0f})",
                    r["http_gets_per_poll"] <= 1.0 and gets <= allowed)
        add(f"idle replica, poll {p} s", "one GET per poll", idle)
    return found


# ------------------------------------------------------------------ printing

Table = Callable[[str, list[str], list[list[str]]], str]


def _load_text(part: dict[str, Any]) -> str:
    a, b = part.get("load_before"), part.get("load_after")
    return "-" if not a or not b else f"{a[0]:.2f} -> {b[0]:.2f}"


def render(results: dict[str, Any], table: Table) -> str:
    """The replica tables: the figures with the load during each, then the targets."""
    if "skipped" in results:
        return f"8. Read replicas and failover: {results['skipped']}"
    if "error" in results:
        return f"8. Read replicas and failover: NOT MEASURED, {results['error']}"
    parts = []
    rows: list[list[str]] = []
    get = results.get("get", {})
    if "found" in get:
        rows.append([f"one GET of a {get['object_bytes']} B object (p50 / p99)",
                     f"{get['found']['p50_ms']:.2f} / {get['found']['p99_ms']:.2f} ms",
                     _load_text(get)])
        rows.append(["one GET of a missing key, a 404 (p50 / p99)",
                     f"{get['missing']['p50_ms']:.2f} / {get['missing']['p99_ms']:.2f} ms",
                     _load_text(get)])
    elif "error" in get:
        rows.append(["one GET", f"NOT MEASURED, {get['error'][:60]}", "-"])
    lag = results.get("lag", {})
    if "error" in lag:
        rows.append(["replica lag", f"NOT MEASURED, {lag['error'][:60]}", "-"])
    for run in (v for v in lag.values() if isinstance(v, dict) and "lag" in v):
        how = ("status() every 1 ms" if run["method"] == "status"
               else "wait_for() per commit (wakes the follower)")
        req = run["replica_requests"]
        rows.append([
            f"lag, poll {run['poll_interval']} s, {run['rate']:.0f} commits/s, {how}"
            f" (p50 / p99 / max of {run['measured_commits']})",
            f"{run['lag']['p50_ms']:.1f} / {run['lag']['p99_ms']:.1f} /"
            f" {run['lag']['max_ms']:.1f} ms; {req.get('get', 0)} GET found,"
            f" {req.get('get_missing', 0)} 404, {req.get('list', 0)} LIST",
            _load_text(run)])
        if run.get("apply"):
            rows.append([f"  its applies: poll end -> applied (p50 / p99 of"
                         f" {run['apply']['samples']})",
                         f"{run['apply']['p50_ms']:.1f} / {run['apply']['p99_ms']:.1f} ms",
                         _load_text(run)])
    promotion = results.get("promotion")
    if isinstance(promotion, dict) and "error" in promotion:
        rows.append(["promotion", f"NOT MEASURED, {promotion['error'][:60]}", "-"])
    elif promotion:
        def spread(key: str) -> str:
            values = sorted(r[key] for r in promotion)
            return (f"{common.median(values):.2f} s (median of {len(values)}, max"
                    f" {values[-1]:.2f})" if len(values) > 1 else f"{values[0]:.2f} s")
        ttl = results["sizes"]["lease_ttl"]
        loads = f"{promotion[0]['load_before'][0]:.2f} -> {promotion[-1]['load_after'][0]:.2f}"
        rows += [
            [f"writer SIGKILLed this long after its last lease renewal (lease_ttl {ttl} s,"
             f" renewed every {ttl / 3:.2f} s)", spread("killed_after_renewal_s"), loads],
            ["SIGKILL -> promote() returned",
             spread("kill_to_promoted_s"), loads],
            ["  of which waiting for the lease", spread("lease_wait_s"), loads],
            ["  of which connect() + the first commit after promote() returned",
             spread("connect_and_commit_s"), loads],
            ["promote() start -> first commit through connect() done",
             spread("promote_to_first_commit_s"), loads],
            ["SIGKILL -> first commit done", spread("kill_to_first_commit_s"), loads],
            ["every acknowledged commit kept, next commit = promoted + 1",
             "yes" if all(r["nothing_lost"] for r in promotion) else "NO", loads],
        ]
    idle = results.get("idle", {})
    if "error" in idle:
        rows.append(["idle requests", f"NOT MEASURED, {idle['error'][:60]}", "-"])
    for r in (v for v in idle.values() if isinstance(v, dict) and "http_per_hour" in v):
        per_hour = ", ".join(f"{n:,} {k}" for k, n in r["http_per_hour"].items())
        rows.append([f"idle, poll {r['poll_interval']} s: requests per hour"
                     f" ({idle['seconds']:.0f} s counted at a proxy)",
                     f"{per_hour}; ${r['dollars_per_hour']:.4f}/hour ="
                     f" ${r['dollars_per_month']:.2f}/month", _load_text(idle)])
    parts.append(table("8. Read replicas and failover (SeaweedFS on loopback; load = 1-minute"
                       " load average before -> after)", ["measure", "value", "load"], rows))
    parts.append(table("8. Replica targets", ["target", "goal", "measured", "status"],
                       [[t["target"], t["goal"], t["value"], t["status"]]
                        for t in results.get("targets", [])]))
    return "\n\n".join(parts)


def _text_table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [title, line.format(*header), line.format(*["-" * w for w in widths])]
    out += [line.format(*row) for row in rows]
    return "\n".join(out)


def _markdown_table(title: str, header: list[str], rows: list[list[str]]) -> str:
    out = [f"**{title}**", "", "| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(x).replace("|", "/") for x in row) + " |" for row in rows]
    return "\n".join(out)


# ------------------------------------------------------------------ alone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (about a minute)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--from-json", metavar="PATH",
                        help="measure nothing: print the report of an earlier results file")
    parser.add_argument("--output", default=os.path.join(HERE, "results-replica.json"))
    parser.add_argument("--workdir", default=None)
    add_arguments(parser)
    args = parser.parse_args(argv)
    table = _markdown_table if args.markdown else _text_table
    if args.from_json:
        with open(args.from_json, encoding="utf-8") as handle:
            print(render(json.load(handle), table))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    workdir = args.workdir or tempfile.mkdtemp(prefix="bottomless-bench-replica-")
    os.makedirs(workdir, exist_ok=True)
    started = time.perf_counter()

    def step(label: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {label} (load"
              f" {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)

    server = start_seaweed()
    try:
        results = measure(server, workdir, sizes_from(args), step)
    finally:
        server.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    results["machine"] = common.machine()
    results["seconds"] = round(time.perf_counter() - started, 1)
    print(render(results, table))
    print(f"\n{results['seconds']:.0f} s; results in {args.output}")
    common.save_results(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The figures of every writer and replica of this process, as plain Python values.

:data:`FIGURES` is the catalogue: each figure's name, Prometheus type, help and the roles that
have it. :func:`snapshot` reads the live objects (the databases open through the bottomless
VFS, and :data:`~bottomless.replica.live.live_replicas`) and needs no Prometheus client; the
Prometheus collector (:mod:`bottomless.metrics.prometheus`) only translates its result.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from bottomless.backends.counting import CountingStore
from bottomless.engine.replicator import Replicator
from bottomless.errors import BottomlessError
from bottomless.replica.live import Followed, live_replicas
from bottomless.sqlite.vfs import registration

logger = logging.getLogger(__name__)

#: the two roles, the value of the ``role`` label
WRITER = "writer"
REPLICA = "replica"

Role = Literal["writer", "replica"]
Snapshot = dict[str, dict[str, dict[str, Any]]]


def _lowest(a: Any, b: Any) -> Any:
    return a if b is None else b if a is None else min(a, b)


def _highest(a: Any, b: Any) -> Any:
    return a if b is None else b if a is None else max(a, b)


@dataclass(frozen=True)
class Figure:
    """One figure: ``name`` is its key in a :func:`snapshot` and, after ``bottomless_``, its
    Prometheus name. A figure with a ``label`` is a dict whose keys are that label's values.
    ``merge`` combines the figures of two objects of one database and role (two replicas of one
    database in one process): counters add up, gauges keep the worse value."""

    name: str
    type: Literal["counter", "gauge", "histogram"]
    help: str
    roles: tuple[Role, ...]
    label: str | None = None
    merge: Callable[[Any, Any], Any] = operator.add


_BOTH: tuple[Role, ...] = ("writer", "replica")

#: every figure, in the order the Prometheus endpoint shows them
FIGURES: tuple[Figure, ...] = (
    Figure("commits_total", "counter",
           "Commits replicated to the store (writer) or applied to the file (replica).", _BOTH),
    Figure("store_requests_total", "counter",
           "Requests to the object store, by kind (put, get, get_missing, get_range, head,"
           " list, delete).", _BOTH, label="kind"),
    Figure("store_errors_total", "counter",
           "Requests to the object store that failed, by kind.", _BOTH, label="kind"),
    Figure("downloaded_bytes_total", "counter", "Bytes read from the object store.", _BOTH),
    Figure("errors_total", "counter",
           "Errors: failed commits, uploads and snapshots (writer), failed rounds of the"
           " follower (replica).", _BOTH),
    Figure("generation_info", "gauge",
           "1, labelled with the generation written (writer) or followed (replica).", _BOTH,
           label="generation", merge=_highest),
    Figure("uploaded_objects_total", "counter",
           "Objects written to the store: commits, snapshot parts, manifests.", ("writer",)),
    Figure("uploaded_bytes_total", "counter", "Bytes written to the store.", ("writer",)),
    Figure("upload_seconds", "histogram", "Time to upload one commit object.", ("writer",)),
    Figure("generations_started_total", "counter", "Generations started.", ("writer",)),
    Figure("writer_replicated_commit", "gauge",
           "The newest commit in the store (numbered within its generation).", ("writer",),
           merge=_lowest),
    Figure("writer_pending_commits", "gauge",
           "Commits spooled and not yet in the store (async durability).", ("writer",)),
    Figure("writer_replicating", "gauge",
           "1 while the writer replicates its commits; 0 when it does not: opened with"
           " initial_replication=skip, or fenced (another writer took its lease).", ("writer",),
           merge=_lowest),
    Figure("writer_lag_seconds", "gauge",
           "Age of the oldest commit not yet in the store (0 in sync durability).",
           ("writer",), merge=_highest),
    Figure("replica_applied_commit", "gauge",
           "The commit the replica's file holds (numbered within its generation).",
           ("replica",), merge=_lowest),
    Figure("replica_lag_seconds", "gauge",
           "From the creation of the last applied commit to its apply.", ("replica",),
           merge=_highest),
    Figure("replica_last_poll_timestamp_seconds", "gauge",
           "When the follower last heard from the store (Unix time): a poll that worked,"
           " whether or not it found a new commit.", ("replica",), merge=_lowest),
    Figure("replica_restores_total", "counter",
           "Restores of the replica's file (the first one, new generations, gc).",
           ("replica",)),
    Figure("replica_running", "gauge", "1 while the follower runs, 0 once it stopped on an"
           " error.", ("replica",), merge=_lowest),
)


def writer_figures(replicator: Replicator) -> dict[str, Any]:
    """The figures of one writer's database."""
    stats = replicator.stats.figures()
    status = replicator.status()
    store = replicator.counted_store
    requests, downloaded = store.counts()
    generation = status["generation"]
    return {
        "commits_total": stats["commits"],
        "store_requests_total": requests,
        "store_errors_total": store.failed(),
        "downloaded_bytes_total": downloaded,
        "errors_total": stats["errors"],
        "generation_info": {generation: 1} if generation else {},
        "uploaded_objects_total": stats["objects_written"],
        "uploaded_bytes_total": stats["bytes_written"],
        "upload_seconds": stats["upload_seconds"],
        "generations_started_total": stats["generations_started"],
        "writer_replicated_commit": status["last_replicated_commit"],
        "writer_pending_commits": status["pending_commits"],
        "writer_lag_seconds": status["lag_seconds"],
        "writer_replicating": int(status["replicating"]),
    }


def replica_figures(replica: Followed) -> dict[str, Any]:
    """The figures of one replica."""
    status = replica.status()
    store = replica.store
    generation = status["generation"]
    return {
        "commits_total": status["commits_applied"],
        "store_requests_total": dict(status["requests"]),
        "store_errors_total": store.failed() if isinstance(store, CountingStore) else {},
        "downloaded_bytes_total": status["bytes_downloaded"],
        "errors_total": status["errors"],
        "generation_info": {generation: 1} if generation else {},
        "replica_applied_commit": status["seq"],
        "replica_lag_seconds": status["lag_seconds"],
        "replica_last_poll_timestamp_seconds": status["last_poll_time"],
        "replica_restores_total": status["restores"],
        "replica_running": int(status["running"]),
    }


def snapshot() -> Snapshot:
    """The figures of every database this process writes or follows, now.

    Returns ``{"writer": {db_name: figures}, "replica": {db_name: figures}}``; ``figures``
    maps each name in ``FIGURES`` that the role has to its value: a number, ``None``
    (not known yet), a dict by label value (``store_requests_total``, by kind), or for
    ``upload_seconds`` a dict of ``count``, ``sum`` and cumulative ``buckets`` (upper bound,
    ``math.inf`` last, to count). Writers are the databases open through the bottomless VFS;
    replicas those started and not stopped. Needs no Prometheus client; never raises for an
    object that closes while it is read (that object is left out).
    """
    result: Snapshot = {WRITER: {}, REPLICA: {}}
    vfs = registration.current
    for replicator in vfs.databases.replicators() if vfs is not None else []:
        _add(result[WRITER], replicator.db_name, partial(writer_figures, replicator))
    for replica in live_replicas.replicas():
        _add(result[REPLICA], replica.db_name, partial(replica_figures, replica))
    return result


def _add(into: dict[str, dict[str, Any]], db_name: str,
         read: Callable[[], dict[str, Any]]) -> None:
    try:
        figures = read()
    except (OSError, BottomlessError) as e:  # it closed while read: report the others
        logger.debug("%s: metrics left out: %s", db_name, e)
        return
    known = into.get(db_name)
    into[db_name] = figures if known is None else merge(known, figures)


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The figures of two objects of one database and role, as one."""
    merged = dict(a)
    for figure in FIGURES:
        if figure.name not in a or figure.name not in b:
            continue
        one, two = a[figure.name], b[figure.name]
        if figure.label is not None:
            merged[figure.name] = {
                key: figure.merge(one[key], two[key]) if key in one and key in two
                else one.get(key, two.get(key))
                for key in sorted({*one, *two})
            }
        elif figure.type == "histogram":
            merged[figure.name] = {
                "count": one["count"] + two["count"], "sum": one["sum"] + two["sum"],
                "buckets": {le: n + two["buckets"][le] for le, n in one["buckets"].items()},
            }
        elif one is not None and two is not None:
            merged[figure.name] = figure.merge(one, two)
        else:
            merged[figure.name] = one if two is None else two
    return merged

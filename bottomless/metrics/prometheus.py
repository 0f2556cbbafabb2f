"""The Prometheus side of :mod:`bottomless.metrics`: a collector that turns a
:func:`~bottomless.metrics.figures.snapshot` into metric families at each scrape, and an HTTP
endpoint serving them.

``prometheus_client`` is imported only when one of these is used, never at import, so the
package works without it; a missing client raises an ImportError saying what to install.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from bottomless.metrics.figures import FIGURES, Figure, Snapshot, snapshot

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

#: what to install when prometheus_client is missing
INSTALL_HINT = "pip install 'bottomless[metrics]'"
#: the prefix of every metric's name
PREFIX = "bottomless_"


def _client() -> Any:
    """The prometheus_client package, or an ImportError that says how to get it."""
    try:
        import prometheus_client
    except ImportError as e:
        raise ImportError(
            f"bottomless's Prometheus metrics need prometheus-client: {INSTALL_HINT}",
            name="prometheus_client",
        ) from e
    return prometheus_client


class BottomlessCollector:
    """A Prometheus collector of every writer and replica of this process.

    It holds nothing: each scrape reads the live objects (:func:`bottomless.metrics.snapshot`).
    Every sample is labelled ``db`` (the database name) and ``role`` (``writer`` or
    ``replica``); the metric names are listed in :data:`~bottomless.metrics.figures.FIGURES`.
    """

    def collect(self) -> Iterator[Metric]:
        """The metric families, with their samples now."""
        yield from families(snapshot())

    def describe(self) -> Iterator[Metric]:
        """The metric families without samples (for the registry's duplicate check)."""
        yield from families(None)


def families(figures: Snapshot | None) -> Iterator[Metric]:
    """One Prometheus metric family per figure, holding ``figures`` (none if ``None``)."""
    _client()
    for figure in FIGURES:
        labels = ["db", "role", *([figure.label] if figure.label else [])]
        family = _family(figure, labels)
        for role in figure.roles:
            for db_name, values in sorted((figures or {}).get(role, {}).items()):
                _add(family, figure, [db_name, role], values.get(figure.name))
        yield family


def _family(figure: Figure, labels: list[str]) -> Metric:
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    name = PREFIX + figure.name
    if figure.type == "counter":
        return CounterMetricFamily(name, figure.help, labels=labels)
    if figure.type == "gauge":
        return GaugeMetricFamily(name, figure.help, labels=labels)
    return HistogramMetricFamily(name, figure.help, labels=labels)


def _add(family: Any, figure: Figure, labels: list[str], value: Any) -> None:
    if value is None:
        return  # not known yet (nothing applied, not open)
    if figure.label is not None:
        for key, count in sorted(value.items()):
            family.add_metric([*labels, str(key)], count)
    elif figure.type == "histogram":
        buckets = [("+Inf" if math.isinf(le) else repr(float(le)), count)
                   for le, count in value["buckets"].items()]
        family.add_metric(labels, buckets, sum_value=value["sum"])
    else:
        family.add_metric(labels, value)


def register(registry: CollectorRegistry | None = None) -> BottomlessCollector:
    """Add a ``BottomlessCollector`` to ``registry`` (default: prometheus_client's global
    ``REGISTRY``) and return it, for ``registry.unregister``.

    Raises ImportError if prometheus-client is not installed, ValueError (from
    prometheus_client) if the registry has bottomless's metrics already.
    """
    client = _client()
    collector = BottomlessCollector()
    (registry if registry is not None else client.REGISTRY).register(collector)
    return collector


class MetricsServer:
    """A running ``/metrics`` endpoint (see ``start_http_server``); stop it with ``close()``
    or by leaving its ``with`` block."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, address: str) -> None:
        self._server = server
        self._thread = thread
        self.address = address
        self.port: int = server.server_port
        """The port it listens on (the one chosen, when 0 was asked for)."""

    @property
    def url(self) -> str:
        """The URL of the metrics page."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


def start_http_server(
    port: int, addr: str = "127.0.0.1", *, registry: CollectorRegistry | None = None
) -> MetricsServer:
    """Serve Prometheus metrics at ``http://addr:port/metrics`` from a daemon thread.

    ``registry`` is what to serve; by default a registry of its own holding only bottomless's
    collector (to serve your application's metrics too, ``register`` bottomless's collector
    into your registry and serve that). ``addr`` defaults to the loopback interface: pass
    ``"0.0.0.0"`` to let other machines scrape it. ``port=0`` picks a free port (see
    ``MetricsServer.port``). Raises ImportError if prometheus-client is not installed, OSError
    if the port is taken.
    """
    client = _client()
    if registry is None:
        registry = client.CollectorRegistry(auto_describe=True)
        register(registry)
    server, thread = client.start_http_server(port, addr=addr, registry=registry)
    return MetricsServer(server, thread, addr)

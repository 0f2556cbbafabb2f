"""Metrics of this process's writers and replicas: as a plain dict, or for Prometheus.

:func:`snapshot` returns the figures (commits, bytes, store requests by kind, errors, upload
latency, replica lag and position) as Python values and needs nothing but bottomless.
:func:`register` adds a collector that reads the same figures at each scrape to a
``prometheus_client`` registry, and :func:`start_http_server` serves them at ``/metrics``;
both need the ``metrics`` extra (``pip install 'bottomless[metrics]'``). Importing this
package never imports ``prometheus_client``, and nothing is registered until you ask.

Which objects: every database open through the bottomless VFS (role ``writer``) and every
:class:`~bottomless.replica.Replica` started and not stopped (role ``replica``; they are held by
:data:`bottomless.replica.live.live_replicas`).
"""

from __future__ import annotations

from bottomless.metrics.figures import FIGURES, Figure, snapshot
from bottomless.metrics.prometheus import (
    BottomlessCollector,
    MetricsServer,
    register,
    start_http_server,
)

__all__ = [
    "FIGURES",
    "BottomlessCollector",
    "Figure",
    "MetricsServer",
    "register",
    "snapshot",
    "start_http_server",
]

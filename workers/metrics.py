"""The metrics endpoint of `cxr worker` and `cxr dicom-listen` (`--metrics-port`), and the queue depths collector
(the broker is a shell's business): services.governance.metrics defines what is measured."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from services.config import Settings
from workers.queues import BROKER_QUEUES, queue_depths


class QueueCollector(Collector):
    """Messages waiting per queue and unacknowledged, read from Redis at scrape (nothing when it is down)."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url

    def collect(self) -> Iterator[Any]:
        depths = queue_depths(self.redis_url)
        up = GaugeMetricFamily(
            "cxr_broker_up", "1 when Redis answered the scrape.", value=0 if "error" in depths else 1
        )
        yield up
        if "error" in depths:
            return
        waiting = GaugeMetricFamily("cxr_queue_messages", "Messages waiting per queue.", labels=["queue"])
        for q in BROKER_QUEUES:
            waiting.add_metric([q], depths[q])
        yield waiting
        yield GaugeMetricFamily(
            "cxr_queue_unacked", "Messages delivered and not acknowledged.", value=depths["unacked"]
        )


def use_multiprocess_dir() -> str:
    """Point prometheus-client's multiprocess mode at a fresh folder (before any child process starts), so that
    what celery's children record is exposed by the parent."""
    folder = tempfile.mkdtemp(prefix="cxr-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def serve_metrics(settings: Settings, port: int, *, multiprocess: bool = False) -> Any:
    """Serve /metrics on CXR_METRICS_BIND:`port` in a daemon thread: the process's own metrics (or its children's,
    with `multiprocess`), the ledger's and the queues'."""
    from prometheus_client import REGISTRY, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    from services.governance.metrics import LedgerCollector

    registry = CollectorRegistry() if multiprocess else REGISTRY
    if multiprocess:
        MultiProcessCollector(registry)
    registry.register(LedgerCollector(settings.ledger_path))
    if settings.redis_url:
        registry.register(QueueCollector(settings.redis_url))
    server, _thread = start_http_server(port, addr=settings.metrics_bind, registry=registry)
    return server

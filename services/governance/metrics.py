"""Prometheus metrics for the operators (prometheus-client, the standard exposition).

- `cxr serve`: `/metrics` on the API itself (services.api.metrics_routes): requests by route and status, latency
  histograms, the model's load time.
- `cxr worker` and `cxr dicom-listen`: `--metrics-port PORT`, bound to CXR_METRICS_BIND (loopback by default):
  C-STOREs by status, embed and index batch latency, ledger items by state, dead letters, the oldest queued item's
  age, and queue depths (the shell adds that collector: it knows the broker).

No metric carries patient data: labels are route templates, statuses, states and queue names, never an id, a path
or a UID. `cxr worker` runs its tasks in celery child processes, so it uses prometheus-client's multiprocess mode
(PROMETHEUS_MULTIPROC_DIR, set before the children start); `cxr status` needs none of this.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

API_REQUESTS = Counter(
    "cxr_api_requests", "API requests answered, by route template, method and status.", ["route", "method", "status"]
)
API_LATENCY = Histogram(
    "cxr_api_request_seconds", "Time to the answer's first byte, by route template.", ["route"], buckets=LATENCY_BUCKETS
)
MODEL_LOAD = Gauge("cxr_model_load_seconds", "How long the API took to load the model and open the store.")
API_HEAP_TRIMS = Counter(
    "cxr_api_heap_trims", "Times the API gave freed memory back to the OS after large decodes (malloc_trim)."
)
CSTORES = Counter("cxr_dicom_cstore", "C-STORE requests answered by the receiver, by DICOM status.", ["status"])
EMBED_SECONDS = Histogram(
    "cxr_embed_batch_seconds", "Decode and encode time of one queued batch.", buckets=LATENCY_BUCKETS
)
INDEX_SECONDS = Histogram(
    "cxr_index_batch_seconds", "Upsert time of one batch by the index writer.", buckets=LATENCY_BUCKETS
)


class LedgerCollector(Collector):
    """Ledger items by state, dead letters (failed for good) and the oldest queued item's age, read at scrape."""

    def __init__(self, ledger_path: Path) -> None:
        self.ledger_path = ledger_path

    def collect(self) -> Iterator[Any]:
        from services.pipeline.ledger import STATES, Ledger

        ledger = Ledger(self.ledger_path)
        try:
            counts = ledger.counts()
            oldest = ledger.oldest_queued_at()
        finally:
            ledger.close()
        items = GaugeMetricFamily("cxr_ledger_items", "Ledger items by state.", labels=["state"])
        for state in STATES:
            items.add_metric([state], counts.get(state, 0))
        yield items
        dead = counts.get("failed", 0)
        yield GaugeMetricFamily("cxr_dead_letters", "Items failed for good (`cxr failures`).", value=dead)
        age = 0.0 if oldest is None else max(0.0, time.time() - oldest)
        yield GaugeMetricFamily("cxr_oldest_queued_seconds", "Age of the oldest item waiting in the queue.", value=age)

"""`cxr worker --metrics-port`: what its celery children measure (embed and index batch times) is exposed by the
parent (prometheus-client's multiprocess mode), with the ledger's states and the queues' depths. Real Redis, a
real worker, real files."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

from services.pipeline.sources import build_items
from services.pipeline.submission import submit
from tests.services import free_port
from tests.workers.conftest import WorkerProcess, queue_env, real_images, settings_of, wait_ledger
from workers.dispatch import make_publish


def _sample(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else -1.0


def test_worker_metrics_cover_its_children_the_ledger_and_the_queues(
    tmp_path: Path, cxr_public: Path, tiny_checkpoint: Path, redis_db_url: str, workers: list
) -> None:
    env = queue_env(tmp_path / "data", redis_db_url, tiny_checkpoint)
    settings = settings_of(env)
    items, _ = build_items(real_images(cxr_public, 5))
    assert submit(settings, items, publish=make_publish(settings)).recorded == 5
    port = free_port()
    workers.append(WorkerProcess(env, tmp_path / "worker.log", "--metrics-port", str(port)))
    wait_ledger(settings, lambda n: n["indexed"] == 5, timeout=120, what="the files")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:  # noqa: S310 - loopback
        text = r.read().decode()
    assert _sample(text, "cxr_embed_batch_seconds_count") >= 1  # recorded in the embed child
    assert _sample(text, "cxr_index_batch_seconds_count") >= 1  # recorded in the index child
    assert _sample(text, 'cxr_ledger_items{state="indexed"}') == 5
    assert _sample(text, "cxr_dead_letters") == 0 and _sample(text, "cxr_broker_up") == 1
    assert _sample(text, 'cxr_queue_messages{queue="embed"}') >= 0

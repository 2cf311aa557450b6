"""Two `cxr worker`s on one data directory: one index writer, the other stands by; a SIGKILLed worker's batch is
indexed by the survivor in seconds (heartbeats), not after CXR_REQUEUE_AFTER_S.

Scaled-down settings: heartbeat 0.5 s (a worker silent for 6 beats, 3 s, is dead), visibility timeout 6 s,
requeue_after_s 600 (kept out of the way, so only the heartbeat and Redis's restore can bring the batch back).
The production defaults are 5 s (dead after 30 s) and 300 s.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from services.pipeline.ledger import Ledger
from services.pipeline.sources import build_items
from services.pipeline.submission import submit
from tests.services import wait_for
from tests.workers.conftest import WorkerProcess, queue_env, real_images, settings_of, wait_ledger


def _index_writers(log: Path) -> int:
    return log.read_text(errors="replace").count("stands by")


@pytest.mark.slow
def test_second_worker_stands_by_then_takes_over_a_killed_worker_s_batch(
    tmp_path: Path, cxr_public: Path, tiny_checkpoint: Path, redis_db_url: str, workers: list
) -> None:
    env = queue_env(tmp_path / "data", redis_db_url, tiny_checkpoint, worker_heartbeat_s=0.5, requeue_after_s=600)
    settings = settings_of(env)
    first = WorkerProcess(env, tmp_path / "first.log")
    workers.append(first)
    wait_for(lambda: (tmp_path / "data" / "qdrant.writer.lock").exists(), timeout=60, what="the first writer")
    second = WorkerProcess(env, tmp_path / "second.log")
    workers.append(second)
    wait_for(lambda: "stands by" in second.log.read_text(errors="replace"), timeout=60, what="the stand-by message")
    assert "stands by" not in first.log.read_text(errors="replace")

    paths = real_images(cxr_public, 120)
    assert submit(settings, build_items(paths)[0], publish=None).recorded == 120
    wait_ledger(settings, lambda c: c["processing"] + c["indexed"] >= 24, timeout=120, what="work under way")
    first.kill()  # the index writer's whole worker, mid-run
    t0 = time.monotonic()
    at_kill = Ledger(settings.ledger_path).counts()
    assert at_kill["indexed"] < 120, "the run finished before the kill; nothing was tested"
    counts = wait_ledger(settings, lambda c: c["indexed"] == 120, timeout=120, what="the survivor indexing all")
    took = time.monotonic() - t0
    log = second.log.read_text(errors="replace")
    assert "is the index writer now" in log, second.tail()
    assert counts["failed"] == 0
    print(
        f"\ntwo workers, one store: first SIGKILLed at {at_kill}; all 120 indexed by the second {took:.1f} s later"
        f" (heartbeat 0.5 s, visibility timeout 6 s, requeue_after_s 600)"
    )
    assert took < 60

"""Redis killed while a worker is mid-task: the worker must consume again once Redis is back (issue 13).

Celery's consumer can come back from a broker outage without a live consumer on the queue (celery #8091, #9054,
#10302): items then sit 'queued' for good while the process looks alive. workers.watchdog notices (no consumer
connection, or no progress while the ledger has old work) and exits the celery child; `cxr worker` restarts it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from PIL import Image

from services.pipeline.ledger import Ledger
from services.pipeline.sources import build_items
from services.pipeline.submission import submit
from tests.services import RedisServer
from tests.workers.conftest import WorkerProcess, queue_env, real_images, settings_of, wait_ledger

TRIALS = int(os.environ.get("OUTAGE_TRIALS", "3"))
OUTAGE_S = float(os.environ.get("OUTAGE_S", "8"))
RECOVERY_BOUND_S = 90.0  # from Redis's return to every item indexed
SIDE = 2048  # px: decoding and resizing 16 films this size takes seconds, so the outage lands inside a task


def _large_films(cxr_public: Path, folder: Path, n: int) -> list[Path]:
    """`n` real X-rays upscaled to SIDE px PNGs. The tiny model embeds a batch of small JPEGs in ~0.03 s, faster
    than the test can see it run (an earlier version waited for a task that had already finished)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, src in enumerate(real_images(cxr_public, n)):
        with Image.open(src) as im:
            path = folder / f"film{i:03d}.png"
            im.convert("L").resize((SIDE, SIDE)).save(path, compress_level=1)
        out.append(path)
    return out


@pytest.mark.slow
def test_redis_killed_mid_task_then_every_item_is_indexed(
    tmp_path: Path, cxr_public: Path, tiny_checkpoint: Path, workers: list
) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    try:
        env = queue_env(
            tmp_path / "data",
            redis.url,
            tiny_checkpoint,
            queue_batch_size=16,  # tasks of a few seconds: the outage lands inside one
            watchdog_stall_s=15,
        )
        settings = settings_of(env)
        worker = WorkerProcess(env, tmp_path / "worker.log", "--loglevel", "INFO")
        workers.append(worker)
        pool = _large_films(cxr_public, tmp_path / "films", 40 * TRIALS)
        healed: list[float] = []
        for trial in range(TRIALS):
            paths = pool[trial * 40 : (trial + 1) * 40]
            done_before = Ledger(settings.ledger_path).counts()["indexed"]
            assert submit(settings, build_items(paths)[0], publish=None).recorded == 40
            try:
                wait_ledger(settings, lambda c: c["processing"] > 0, timeout=60, what=f"trial {trial}: a task running")
            except TimeoutError:
                worker.dump_stacks()
                raise AssertionError(
                    f"trial {trial}: no task started in 60 s; ledger {Ledger(settings.ledger_path).counts()};"
                    f" worker log:\n{worker.tail(120)}"
                ) from None
            redis.stop()  # mid-task
            time.sleep(OUTAGE_S)
            redis.start()
            t0 = time.monotonic()
            want = done_before + 40
            try:
                wait_ledger(settings, lambda c, w=want: c["indexed"] >= w, timeout=RECOVERY_BOUND_S, what="recovery")
            except TimeoutError:
                counts = Ledger(settings.ledger_path).counts()
                raise AssertionError(
                    f"trial {trial}: not all indexed {RECOVERY_BOUND_S:.0f} s after Redis returned; ledger {counts};"
                    f" earlier trials healed in {healed}; worker log:\n{worker.tail(60)}"
                ) from None
            healed.append(round(time.monotonic() - t0, 1))
        restarts = worker.log.read_text(errors="replace").count("restarting it in")
        print(
            f"\nRedis down {OUTAGE_S:.0f} s mid-task, {TRIALS} trial(s): all indexed after it returned in {healed} s;"
            f" celery children restarted {restarts} time(s)"
        )
    finally:
        redis.stop()

"""The same files queued for two collections land in both (a ledger item per collection), through real workers."""

from __future__ import annotations

from pathlib import Path

from services.index import QdrantEdgeStore
from services.pipeline.sources import build_items
from services.pipeline.submission import submit
from tests.workers.conftest import WorkerProcess, queue_env, real_images, settings_of, wait_ledger
from workers.dispatch import make_publish


def test_files_queued_for_a_second_collection_land_there_too(
    tmp_path: Path, cxr_public: Path, tiny_checkpoint: Path, redis_db_url: str, workers: list
) -> None:
    env = queue_env(tmp_path / "data", redis_db_url, tiny_checkpoint)
    settings = settings_of(env)
    items, _ = build_items(real_images(cxr_public, 6))
    publish = make_publish(settings)
    assert submit(settings, items, publish=publish, collection="cxr").recorded == 6
    workers.append(WorkerProcess(env, tmp_path / "worker.log"))
    wait_ledger(settings, lambda c: c["indexed"] == 6, timeout=120, what="the first collection")
    second = submit(settings, items, publish=publish, collection="second")
    assert (second.recorded, second.already) == (6, 0)  # indexed in 'cxr' is not "already here" for 'second'
    assert submit(settings, items, publish=publish, collection="second").already == 6  # idempotent within it
    counts = wait_ledger(settings, lambda c: c["indexed"] == 12, timeout=120, what="the second collection")
    assert counts["failed"] == 0
    workers[0].stop()
    with QdrantEdgeStore(settings.store_path) as store:
        first_ids = {p.id for p in store.scroll("cxr")}
        second_ids = {p.id for p in store.scroll("second")}
    assert len(first_ids) == 6 and second_ids == first_ids  # the same points (ids), in each collection once

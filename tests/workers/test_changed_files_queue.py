"""The queue path agrees with `cxr index`: a file rewritten in place and submitted again is indexed again, and its
new point replaces the old one; an unchanged file submitted again is "already" there. Real Redis, a real
`cxr worker`, real files and the real embedded store."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from services.index import QdrantEdgeStore
from services.pipeline.sources import build_items
from services.pipeline.submission import submit
from tests.pipeline.test_changed_files import export, rewrite_pixels
from tests.workers.conftest import WorkerProcess, queue_env, settings_of, wait_ledger
from workers.dispatch import make_publish


def test_a_file_changed_in_place_replaces_its_point_through_the_queue(
    tmp_path: Path, cxr_public: Path, dicom_dir: Path, tiny_checkpoint: Path, redis_db_url: str, workers: list
) -> None:
    env = queue_env(tmp_path / "data", redis_db_url, tiny_checkpoint)
    settings = settings_of(env)
    folder, c = export(tmp_path, cxr_public, dicom_dir)
    a = folder / "film.jpg"
    a_sha = hashlib.sha256(a.read_bytes()).hexdigest()
    publish = make_publish(settings)
    assert submit(settings, build_items([folder])[0], publish=publish).recorded == 3
    workers.append(WorkerProcess(env, tmp_path / "worker.log"))
    wait_ledger(settings, lambda n: n["indexed"] == 3, timeout=120, what="the first pass")
    with QdrantEdgeStore(settings.store_path) as store:
        before = {p.payload["source_ref"]: p for p in store.scroll(settings.collection)}

    assert submit(settings, build_items([folder])[0], publish=publish).already == 3  # unchanged: nothing to do
    shutil.copy(c, folder / "film.jpg")
    rewrite_pixels(folder / "chest.dcm")
    again = submit(settings, build_items([folder])[0], publish=publish)
    assert (again.recorded, again.already) == (2, 1)
    wait_ledger(settings, lambda n: n["indexed"] == 3, timeout=120, what="the changed files")
    workers[0].stop()
    with QdrantEdgeStore(settings.store_path) as store:
        after = list(store.scroll(settings.collection))
    refs = [p.payload["source_ref"] for p in after]
    assert sorted(refs) == sorted(before)  # one point per file, no second point for a changed one
    by_ref = {p.payload["source_ref"]: p for p in after}
    shas = {p.payload["content_sha256"] for p in after}
    assert hashlib.sha256(c.read_bytes()).hexdigest() in shas
    assert a_sha not in shas
    changed = {ref for ref in by_ref if by_ref[ref].payload != before[ref].payload}
    assert len(changed) == 2

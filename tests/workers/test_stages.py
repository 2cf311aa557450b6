"""The shared ingest stages on the real store and encoder: a NaN vector fails only its own file (inline and in the
index writer), and --update rewrites payloads, and vectors where the content changed (inline and queued)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import numpy as np
import pydicom
import pytest

from services.config import Settings
from services.imaging import decode_image, to_model_input
from services.index import PointRecord
from services.pipeline import IngestItem, IngestOptions, Ingestor, Runtime
from services.pipeline.batch_jobs import PointBatch, QueuedPoint, embed_keys, write_points
from services.pipeline.ledger import Ledger, file_key
from services.pipeline.sources import build_items
from services.pipeline.stages import upsert_stage
from tests.workers.conftest import real_images


@pytest.fixture()
def runtime(data_dir: Path, tiny_checkpoint: Path):
    with Runtime(Settings(), model_path=tiny_checkpoint) as rt:
        yield rt


def _files(cxr_public: Path, folder: Path, n: int, start: int = 300) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for p in real_images(cxr_public, start + n)[start:]:
        out.append(folder / p.name)
        shutil.copy(p, out[-1])
    return out


class NaNForOne:
    """The real encoder, except that one crafted input comes out as NaN (what a corrupt image can do)."""

    def __init__(self, encoder, poison: np.ndarray) -> None:  # noqa: ANN001
        self.inner, self.poison = encoder, poison
        self.dim, self.image_size, self.model_id = encoder.dim, encoder.image_size, encoder.model_id

    def encode(self, images: np.ndarray) -> np.ndarray:
        out = self.inner.encode(images)
        for i, img in enumerate(images):
            # The pipeline decodes at model size, which matches the full decode's input to ~1e-5, not bit for bit.
            if np.allclose(img, self.poison, atol=1e-3):
                out[i] = np.nan
        return out


def test_one_nan_vector_fails_only_its_file_inline(runtime: Runtime, cxr_public: Path, tmp_path: Path) -> None:
    files = _files(cxr_public, tmp_path / "batch", 8)
    poison = to_model_input(decode_image(files[3]).pixels, runtime.encoder.image_size)
    encoder = NaNForOne(runtime.encoder, poison)
    opts = IngestOptions(collection="nan", batch_size=8, decode_workers=1)
    report = Ingestor(encoder, runtime.store, opts, salt=runtime.settings.salt).run(build_items(files)[0])
    assert report.indexed == 7
    assert [(f.path, f.stage) for f in report.failed] == [(str(files[3]), "upsert")]
    assert "NaN" in report.failed[0].reason
    assert runtime.store.count("nan") == 7


def test_upsert_stage_refuses_only_the_bad_points(runtime: Runtime) -> None:
    store = runtime.store
    store.create_collection("pts", 4)
    vectors = [v for v in np.eye(4, dtype=np.float32)] * 2
    vectors[2] = np.full(4, np.nan, np.float32)  # refused before the store is called
    vectors[5] = np.ones(3, np.float32)  # the store refuses the whole batch: halved until only this one fails
    records = [(i, PointRecord(str(uuid.uuid4()), v, {"label": "x"})) for i, v in enumerate(vectors)]
    landed, refused = upsert_stage(store, "pts", records)
    assert sorted(landed) == [0, 1, 3, 4, 6, 7]
    assert sorted(t for t, _ in refused) == [2, 5]
    reasons = dict(refused)
    assert "NaN" in reasons[2] and "4-d" in reasons[5]
    assert store.count("pts") == 6


def test_index_writer_fails_only_the_nan_point(runtime: Runtime, tmp_path: Path) -> None:
    ledger = Ledger(runtime.settings.ledger_path)
    points = []
    for i in range(4):
        key = f"file:/x/{i}.png"
        ledger.record(key, f"/x/{i}.png", origin="file", collection="w")
        vector = np.full(4, np.nan if i == 1 else 0.5, dtype=np.float32) + np.eye(4, dtype=np.float32)[i]
        points.append(
            {"key": key, "id": str(uuid.uuid4()), "vector": vector.tolist(), "payload": {"label": "x"}, "update": False}
        )
    message = {"collection": "w", "dim": 4, "model_id": None, "points": points}  # plain `vector` lists, as sent
    out = write_points(runtime.store, ledger, PointBatch.from_json(message))
    assert (out.indexed, out.refused) == (3, 1)
    failed = ledger.get("file:/x/1.png")
    assert failed.state == "failed" and failed.stage == "upsert" and "NaN" in failed.reason
    assert [ledger.get(f"file:/x/{i}.png").state for i in (0, 2, 3)] == ["indexed"] * 3


def _payloads(store, name: str) -> dict[str, dict]:  # noqa: ANN001
    return {p.id: p for p in store.scroll(name, with_vectors=True)}


def test_update_rewrites_payloads_and_keeps_vectors_of_unchanged_files(
    runtime: Runtime, cxr_public: Path, tmp_path: Path
) -> None:
    files = _files(cxr_public, tmp_path / "a", 3)

    def run(label: str, update: bool):  # noqa: ANN202
        opts = IngestOptions(collection="u", batch_size=8, decode_workers=1, update=update)
        items = [IngestItem(f, label) for f in files]
        return Ingestor(runtime.encoder, runtime.store, opts, salt=runtime.settings.salt).run(items)

    assert run("a", False).indexed == 3
    before = _payloads(runtime.store, "u")
    again = run("b", False)  # without --update: existing points are left alone
    assert (again.indexed, again.skipped) == (0, 3)
    assert {p.payload["label"] for p in _payloads(runtime.store, "u").values()} == {"a"}
    updated = run("b", True)
    assert (updated.indexed, updated.skipped) == (3, 0)
    after = _payloads(runtime.store, "u")
    assert set(after) == set(before) and {p.payload["label"] for p in after.values()} == {"b"}
    for pid, p in after.items():  # same bytes: the stored vector is kept, not recomputed
        assert np.array_equal(p.vector, before[pid].vector)


def test_update_of_a_corrected_dicom_instance_rewrites_its_vector(
    runtime: Runtime, dicom_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "study" / "chest.dcm"
    path.parent.mkdir()
    shutil.copy(dicom_dir / "RG1_UNCR.dcm", path)
    opts = IngestOptions(collection="d", batch_size=8, decode_workers=1, update=True)
    ingest = Ingestor(runtime.encoder, runtime.store, opts, salt=runtime.settings.salt)
    assert ingest.run([IngestItem(path, "normal")]).indexed == 1
    (old,) = _payloads(runtime.store, "d").values()
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.copy()
    pixels[: pixels.shape[0] // 2] = pixels.max()  # a corrected instance: same SOP Instance UID, other pixels
    ds.PixelData = pixels.tobytes()
    ds.save_as(path)
    assert ingest.run([IngestItem(path, "normal")]).indexed == 1
    points = _payloads(runtime.store, "d")
    assert list(points) == [old.id]  # one point per SOP Instance UID
    new = points[old.id]
    assert new.payload["content_sha256"] != old.payload["content_sha256"]
    assert not np.allclose(new.vector, old.vector)


def test_queued_update_rewrites_the_payload(runtime: Runtime, cxr_public: Path, tmp_path: Path) -> None:
    settings = runtime.settings
    ledger = Ledger(settings.ledger_path)
    (path,) = _files(cxr_public, tmp_path / "q", 1)
    opts = IngestOptions(collection="cxr", decode_workers=1)

    def run_queue(label: str, update: bool) -> None:
        ledger.record(
            file_key(path, settings.salt), path, origin="file", collection="cxr", extra={"label": label}, update=update
        )
        out = embed_keys(
            ledger,
            runtime.encoder,
            [file_key(path, settings.salt)],
            opts=opts,
            salt=settings.salt,
            max_attempts=3,
            collection="cxr",
        )
        for batch in out.batches:
            write_points(runtime.store, ledger, PointBatch.from_json(batch.to_json()))

    run_queue("old", False)
    run_queue("new", False)  # already indexed, not in update mode: nothing to do
    assert [p.payload["label"] for p in runtime.store.scroll("cxr")] == ["old"]
    run_queue("new", True)
    assert [p.payload["label"] for p in runtime.store.scroll("cxr")] == ["new"]
    assert (
        ledger.get(file_key(path, settings.salt)).state == "indexed"
        and not ledger.get(file_key(path, settings.salt)).update
    )


def test_the_writer_refreshes_the_index_once_enough_points_are_unindexed(data_dir: Path) -> None:
    from services.index import open_store
    from services.pipeline.batch_jobs import refresh_if_due

    settings = Settings(index_threshold_points=100)
    ledger = Ledger(settings.ledger_path)
    vectors = np.random.default_rng(0).normal(size=(150, 16)).astype(np.float32)
    with open_store(settings) as store:
        for start in (0, 60):  # two writer batches: 60 points (below the threshold), then 90 more
            points = []
            for i, v in enumerate(vectors[start : start + (60 if start == 0 else 90)], start):
                ledger.record(f"file:/x/{i}", f"/x/{i}", origin="file", collection="r")
                points.append(QueuedPoint(f"file:/x/{i}", str(uuid.uuid4()), v, {}))
            write_points(store, ledger, PointBatch("r", 16, None, points))
            refreshed = refresh_if_due(store, "r", settings.index_threshold_points)
            assert refreshed == (start == 60)
        assert store.count("r") == 150 and store.unindexed_count("r") == 0
        assert not refresh_if_due(store, "r", None)

"""The calibration is kept while a collection grows a little (no recalibration after every ingested batch) and
remade once it has grown past DRIFT, on a real embedded store."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np

from services.index import PointRecord, QdrantEdgeStore
from services.pipeline.similarity_band import DRIFT, calibrate


def _points(rng: np.random.Generator, n: int, start: int) -> list[PointRecord]:
    vectors = rng.standard_normal((n, 16)).astype(np.float32)
    return [
        PointRecord(str(uuid.uuid4()), vectors[i], {"label": "x", "patient_hash": f"p{(start + i) // 2}"})
        for i in range(n)
    ]


def test_calibration_survives_small_growth_and_is_remade_after_drift(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    with QdrantEdgeStore(tmp_path / "store") as store:
        store.create_collection("c", 16)
        store.upsert("c", _points(rng, 200, 0))
        first = calibrate(store, "c", model_id="drift-test")
        assert first is not None and first.n == 200
        small = int(DRIFT * 200)  # within the drift: the same calibration
        store.upsert("c", _points(rng, small, 200))
        assert calibrate(store, "c", model_id="drift-test") is first
        store.upsert("c", _points(rng, 10, 200 + small))  # past it: made again, from the grown collection
        again = calibrate(store, "c", model_id="drift-test")
        assert again is not first and again.n == 200 + small + 10

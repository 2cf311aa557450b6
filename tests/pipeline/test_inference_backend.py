"""The default inference back end (OpenVINO, fp32) through the real pipeline: it indexes and searches, caches its
converted and compiled model per checkpoint, and ranks exactly as the eager encoder does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.config import Settings
from services.manifest import read_manifest
from services.pipeline import IngestOptions, Ingestor, QueryOptions, Runtime, build_items, search_file


def test_the_default_backend_is_openvino_and_ranks_like_eager(
    data_dir: Path, tiny_checkpoint: Path, public_sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CXR_INFERENCE_BACKEND", raising=False)  # the suite pins eager; this test runs the default
    assert Settings().inference_backend == "openvino"
    rows = read_manifest(public_sample / "manifest.csv")
    items, _ = build_items([], manifest=rows)
    hits = {}
    for backend in ("openvino", "eager-fp32"):
        monkeypatch.setenv("CXR_INFERENCE_BACKEND", backend)
        settings = Settings()
        with Runtime(settings, model_path=tiny_checkpoint) as rt:
            assert rt.encoder.backend == backend
            report = Ingestor(rt.encoder, rt.store, IngestOptions(collection=backend), salt=settings.salt).run(items)
            assert report.indexed == len(items) and not report.failed
            result = search_file(
                rows[0].path, encoder=rt.encoder, store=rt.store, opts=QueryOptions(collection=backend, k=10),
                salt=settings.salt,
            )  # fmt: skip
            hits[backend] = result.hits
    cached = list((data_dir / "cache" / "openvino").glob("*-openvino-*/ir/encoder.xml"))
    assert len(cached) == 1  # converted once for this checkpoint, reused by the next process
    assert [h.id for h in hits["openvino"]] == [h.id for h in hits["eager-fp32"]]
    np.testing.assert_allclose([h.score for h in hits["openvino"]], [h.score for h in hits["eager-fp32"]], atol=1e-4)

"""BatchEncoder: batching that does not change vectors, input checks, bf16 agreement, checkpoint ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from services.embedding import BatchEncoder, CxrEncoder, bf16_supported, checkpoint_id, save_checkpoint
from services.errors import ModelError

SIZE = 32


def _images(n: int, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(0).random((n, size, size), dtype=np.float32)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_ragged_batches_match_one_by_one(tiny_encoder: CxrEncoder) -> None:
    images = _images(7)
    batched = BatchEncoder(tiny_encoder, batch_size=3, bf16=False).encode(images)
    single = BatchEncoder(tiny_encoder, batch_size=1, bf16=False)
    one_by_one = np.concatenate([single.encode(images[i : i + 1]) for i in range(len(images))])
    assert batched.shape == (7, 192) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-6)
    with torch.no_grad():
        direct = tiny_encoder(torch.from_numpy(images).unsqueeze(1)).numpy()
    np.testing.assert_allclose(batched, direct, atol=1e-5)


def test_empty_input_gives_an_empty_matrix(tiny_encoder: CxrEncoder) -> None:
    out = BatchEncoder(tiny_encoder, bf16=False).encode(np.zeros((0, SIZE, SIZE), np.float32))
    assert out.shape == (0, 192) and out.dtype == np.float32


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (_images(2, 16), r"takes \(N, 32, 32\) images"),
        (_images(2, 64), r"takes \(N, 32, 32\) images"),
        (_images(2)[:, None], r"takes \(N, 32, 32\) images"),
        ((_images(2) * 255).astype(np.uint8), "float images"),
        (_images(2) * 255, r"expected \[0, 1\]"),
        (np.full((1, SIZE, SIZE), np.nan, np.float32), r"expected \[0, 1\]"),
    ],
    ids=["smaller", "larger", "channel-axis", "uint8", "unscaled", "nan"],
)
def test_encode_rejects_unprepared_images(tiny_encoder: CxrEncoder, images: np.ndarray, message: str) -> None:
    with pytest.raises(ModelError, match=message) as info:
        BatchEncoder(tiny_encoder, bf16=False).encode(images)
    assert "Resize images to 32x32" in info.value.hint


def test_bf16_default_follows_the_hardware(tiny_encoder: CxrEncoder) -> None:
    assert BatchEncoder(tiny_encoder).bf16 is bf16_supported()
    assert BatchEncoder(tiny_encoder, bf16=False).bf16 is False


@pytest.mark.skipif(not bf16_supported(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
def test_bf16_agrees_with_fp32(tiny_encoder: CxrEncoder) -> None:
    images = _images(8)
    fp32 = BatchEncoder(tiny_encoder, bf16=False).encode(images)
    bf16 = BatchEncoder(tiny_encoder, bf16=True).encode(images)
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-6)
    assert _cosines(fp32, bf16).min() > 0.99


def test_from_checkpoint_carries_the_checkpoint_id(tmp_path: Path, tiny_encoder: CxrEncoder) -> None:
    folder = save_checkpoint(tiny_encoder, tmp_path / "ck")
    encoder = BatchEncoder.from_checkpoint(folder, batch_size=4, bf16=False)
    assert (encoder.model_id, encoder.dim, encoder.image_size) == (checkpoint_id(folder), 192, SIZE)
    assert BatchEncoder(tiny_encoder).model_id is None
    np.testing.assert_allclose(
        encoder.encode(_images(3)), BatchEncoder(tiny_encoder, bf16=False).encode(_images(3)), atol=1e-6
    )


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "openvino-bf16"])
def test_other_backends_agree_with_eager_fp32(tiny_encoder, backend: str, tmp_path) -> None:
    images = _images(5)
    want = BatchEncoder(tiny_encoder, bf16=False).encode(images)
    enc = BatchEncoder(tiny_encoder, batch_size=2, backend=backend, cache=tmp_path / backend)
    got = enc.encode(images)
    assert got.shape == want.shape and np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert float((got * want).sum(1).min()) > 0.999
    if backend.startswith("openvino"):  # converted once, then read back from the cache by the next process
        assert (tmp_path / backend / "ir" / "encoder.xml").is_file() and enc.runner_source == "converted"
        again = BatchEncoder(tiny_encoder, backend=backend, cache=tmp_path / backend)
        np.testing.assert_array_equal(again.encode(images), got)
        assert again.runner_source == "compiled-cache"


def test_unknown_backend_is_refused(tiny_encoder) -> None:
    with pytest.raises(ModelError, match="unknown inference back end"):
        BatchEncoder(tiny_encoder, backend="tensorrt")

"""Checkpoints: exact round trips, atomic saves, a stable id, and ModelError for anything broken."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from services.embedding import CxrEncoder, checkpoint_id, create_encoder, load_checkpoint, save_checkpoint
from services.errors import ModelError


def test_round_trip_gives_identical_outputs(tmp_path: Path, tiny_encoder: CxrEncoder, images: torch.Tensor) -> None:
    folder = save_checkpoint(tiny_encoder, tmp_path / "ck", recipe={"loss": "supcon", "steps": 10})
    loaded = load_checkpoint(folder)
    assert not loaded.training
    assert loaded.config.recipe == {"loss": "supcon", "steps": 10}
    assert loaded.config.to_dict() | {"recipe": {}} == tiny_encoder.config.to_dict()
    with torch.no_grad():
        assert torch.equal(loaded(images), tiny_encoder(images))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no staging folder left behind
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]


def test_saving_over_an_existing_checkpoint_keeps_other_files(tmp_path: Path, tiny_encoder: CxrEncoder) -> None:
    folder = save_checkpoint(tiny_encoder, tmp_path / "ck")
    (folder / "metrics.json").write_text("{}")
    other = create_encoder("vit-tiny", image_size=32, seed=5)
    save_checkpoint(other, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "metrics.json", "model.safetensors"]
    assert torch.equal(load_checkpoint(folder).head.weight, other.head.weight)


def test_checkpoint_id_is_stable_and_follows_the_weights(tmp_path: Path, tiny_encoder: CxrEncoder) -> None:
    folder = save_checkpoint(tiny_encoder, tmp_path / "default")
    first = checkpoint_id(folder)
    assert first.startswith("default-") and len(first) == len("default-") + 12
    assert checkpoint_id(folder / "config.json") == first
    save_checkpoint(load_checkpoint(folder), tmp_path / "default")
    assert checkpoint_id(folder) == first
    with torch.no_grad():
        tiny_encoder.head.weight[0, 0] += 1.0
    save_checkpoint(tiny_encoder, folder)
    assert checkpoint_id(folder) != first


def test_checkpoint_id_hashes_when_config_lacks_the_hash(tmp_path: Path, tiny_encoder: CxrEncoder) -> None:
    folder = save_checkpoint(tiny_encoder, tmp_path / "ck")
    recorded = checkpoint_id(folder)
    doc = json.loads((folder / "config.json").read_text())
    del doc["weights_sha256"]
    (folder / "config.json").write_text(json.dumps(doc))
    assert checkpoint_id(folder) == recorded


def _break_truncate(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def _break_flip_byte(folder: Path) -> None:
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))


def _edit_config(**changes: object) -> object:
    def edit(folder: Path) -> None:
        doc = json.loads((folder / "config.json").read_text())
        for key, value in changes.items():
            if key.startswith("encoder."):
                doc["encoder"][key.removeprefix("encoder.")] = value
            else:
                doc[key] = value
        (folder / "config.json").write_text(json.dumps(doc))

    return edit


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda f: (f / "config.json").unlink(), r"config.json: missing"),
        (lambda f: (f / "model.safetensors").unlink(), r"model.safetensors: missing"),
        (lambda f: (f / "config.json").write_text("{not json"), r"config.json: unreadable"),
        (_break_truncate, r"model.safetensors: does not match config.json"),
        (_break_flip_byte, r"model.safetensors: does not match config.json"),
        (_edit_config(format="something-else"), r"not a cxr encoder checkpoint"),
        (_edit_config(format_version=99), r"format version 99 is not supported"),
        (_edit_config(**{"encoder.colour": "blue"}), r"unknown keys"),
        (_edit_config(**{"encoder.embed_dim": 64}), r"weights do not fit config.json"),
    ],
    ids=[
        "no-config",
        "no-weights",
        "bad-json",
        "truncated",
        "flipped",
        "format",
        "version",
        "key",
        "mismatch",
    ],
)
def test_broken_checkpoints_raise_model_error(
    tmp_path: Path, tiny_encoder: CxrEncoder, breakage: object, message: str
) -> None:
    folder = save_checkpoint(tiny_encoder, tmp_path / "ck")
    breakage(folder)  # type: ignore[operator]
    with pytest.raises(ModelError, match=message):
        load_checkpoint(folder)


def test_unhashed_garbage_weights_raise_model_error(tmp_path: Path, tiny_encoder: CxrEncoder) -> None:
    folder = save_checkpoint(tiny_encoder, tmp_path / "ck")
    _edit_config(weights_sha256=None)(folder)
    (folder / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        load_checkpoint(folder)


def test_missing_folder_raises_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no checkpoint folder"):
        load_checkpoint(tmp_path / "nowhere")
    with pytest.raises(ModelError, match="no checkpoint folder"):
        checkpoint_id(tmp_path / "nowhere")


def test_unserialisable_recipe_is_refused_before_writing(tmp_path: Path, tiny_encoder: CxrEncoder) -> None:
    with pytest.raises(ModelError, match="not JSON-serialisable"):
        save_checkpoint(tiny_encoder, tmp_path / "ck", recipe={"path": Path("x")})
    assert not (tmp_path / "ck").exists()

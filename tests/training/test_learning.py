"""Training really learns, and resuming is exact: tests that fail when the loop is a no-op or forgets state.

The learning test trains vit-tiny at 32 px for 30 steps on an easy real subset (COVID-19 against normal from
cxr-public, 200 films each) and compares the validation MAP@R with the same model's at initialisation and
with the exact chance level. A zero learning rate or a step that does not update the weights stays at the
initial score (measured: 0.67 at init, 0.95 after 30 steps; chance 0.27).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from services.embedding import bf16_supported, create_encoder, load_checkpoint
from services.manifest import read_manifest
from services.splits import read_split, split_rows
from services.training.config import TrainConfig
from services.training.data import load_image_cache
from services.training.loop import Trainer
from services.training.losses import LossConfig
from services.training.validation import chance_map_at_r, embed_images, validate

PER_CLASS = 200


@pytest.fixture(scope="module")
def easy_subset(cxr_public: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 seeded covid19 and 200 normal rows of cxr-public, copied beside their own manifest."""
    out = tmp_path_factory.mktemp("easy")
    with (cxr_public / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields, rows = list(reader.fieldnames or []), list(reader)
    rng = np.random.default_rng(0)
    chosen = []
    for label in ("covid19", "normal"):
        members = [r for r in rows if r["label"] == label]
        chosen += [members[i] for i in sorted(rng.choice(len(members), PER_CLASS, replace=False))]
    for row in chosen:
        dest = out / row["path"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cxr_public / row["path"], dest)
    with (out / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(chosen)
    return out / "manifest.csv"


def test_a_few_dozen_steps_beat_the_initial_model_and_chance(easy_subset: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(
        manifest=easy_subset,
        out_dir=tmp_path / "run",
        shape="vit-tiny",
        image_size=32,
        batch_size=32,
        steps=30,
        val_every=10,
        ckpt_every=1000,
        warmup_steps=5,
        min_class_images=2,
        workers=1,
    )
    result = Trainer(cfg).run()
    assert result.status == "finished" and result.steps == 30

    # The same model at initialisation (the trainer seeds it the same way), on the same val images.
    split = read_split(tmp_path / "run" / "split.json")
    val_rows = split_rows(read_manifest(easy_subset), split, easy_subset.parent)["val"]
    val = load_image_cache(val_rows, 32, workers=1)
    labels, groups = np.asarray(val.labels), np.asarray(val.groups)
    init = validate(embed_images(create_encoder("vit-tiny", image_size=32, seed=cfg.seed), val.images), labels, groups)
    chance = chance_map_at_r(labels, groups)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    scores = [rec["val_map_at_r"] for rec in log if "val_map_at_r" in rec]
    assert len(scores) == 3 and max(scores) == pytest.approx(result.best_val_map_at_r)
    assert result.best_val_map_at_r >= init.map_at_r + 0.15, (init.map_at_r, scores)
    assert result.best_val_map_at_r >= chance + 0.4, (chance, scores)
    # The kept checkpoint is the one that scored best, not merely the last one written.
    best = validate(embed_images(load_checkpoint(tmp_path / "run"), val.images, bf16=bf16_supported()), labels, groups)
    assert best.map_at_r == pytest.approx(result.best_val_map_at_r, abs=1e-6)


class _Crash(RuntimeError):
    pass


def _resume_cfg(sample: Path, out: Path) -> TrainConfig:
    return TrainConfig(
        manifest=sample / "manifest.csv",
        out_dir=out,
        shape="vit-tiny",
        image_size=32,
        batch_size=16,
        steps=6,
        val_every=3,
        ckpt_every=3,
        warmup_steps=2,
        min_class_images=2,
        workers=1,
        loss=LossConfig(memory_size=32, koleo_weight=0.3),  # the memory queue must come back too
    )


def _state(folder: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(folder).state_dict()


def test_resuming_after_a_crash_gives_the_weights_of_an_uninterrupted_run(public_sample: Path, tmp_path: Path) -> None:
    straight = Trainer(_resume_cfg(public_sample, tmp_path / "straight")).run()
    assert straight.steps == 6

    def crash_after_the_step_3_checkpoint(step: int, record: dict) -> None:
        if step == 5:  # weights have moved past the saved state: the resume must not see them
            raise _Crash

    with pytest.raises(_Crash):
        Trainer(_resume_cfg(public_sample, tmp_path / "crashed"), on_step=crash_after_the_step_3_checkpoint).run()
    at_3 = _state(tmp_path / "crashed" / "last")
    resumed = Trainer(_resume_cfg(public_sample, tmp_path / "crashed"), resume=True).run()
    assert resumed.steps == 6

    final, again = _state(tmp_path / "straight" / "last"), _state(tmp_path / "crashed" / "last")
    assert final.keys() == again.keys()
    for name in final:
        assert torch.equal(final[name], again[name]), name
    # Not vacuous: the last three steps changed the weights.
    assert any(not torch.equal(final[name], at_3[name]) for name in final)
    memory = [
        torch.load(tmp_path / d / "train_state.pt", weights_only=False)["criterion"] for d in ("straight", "crashed")
    ]
    assert memory[0].keys() == memory[1].keys() and all(torch.equal(memory[0][k], memory[1][k]) for k in memory[0])

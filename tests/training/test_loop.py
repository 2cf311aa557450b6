"""The training loop end to end on real images: a tiny run, its checkpoint and log, resume, collapse checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.embedding import load_checkpoint
from services.errors import ConfigError
from services.splits import read_split
from services.training.config import TrainConfig
from services.training.loop import Trainer, lr_at
from services.training.losses import LossConfig
from services.training.validation import ValScore, chance_map_at_r, collapse_reason


def _cfg(sample: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
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
        loss=LossConfig(memory_size=32, koleo_weight=0.3),
    )
    return TrainConfig(**{**base, **kw})


def test_tiny_run_writes_checkpoint_log_split_and_resumes(public_sample: Path, tmp_path: Path):
    out = tmp_path / "run"
    result = Trainer(_cfg(public_sample, out)).run()
    assert result.status == "finished" and result.steps == 6
    assert (out / "config.json").exists() and (out / "last" / "config.json").exists()
    recipe = json.loads((out / "config.json").read_text())["encoder"]["recipe"]
    assert recipe["loss"]["memory_size"] == 32 and recipe["loss"]["koleo_weight"] == 0.3
    assert len(recipe["split_sha256"]) == 64 and len(recipe["manifest_sha256"]) == 64
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert any("val_map_at_r" in rec for rec in log)
    split = read_split(out / "split.json")
    assert split.train and split.test
    load_checkpoint(out)  # the best checkpoint is a real one

    with pytest.raises(ConfigError, match="already holds a training run"):
        Trainer(_cfg(public_sample, out)).run()
    resumed = Trainer(_cfg(public_sample, out, steps=9), resume=True).run()
    assert resumed.steps == 9


def test_crossentropy_baseline_trains_cls_features(public_sample: Path, tmp_path: Path):
    result = Trainer(_cfg(public_sample, tmp_path / "ce", loss=LossConfig(kind="crossentropy"), steps=3)).run()
    model = load_checkpoint(result.out_dir)
    assert model.config.head == "none" and model.config.embed_dim == model.config.hidden_size


def test_lr_schedule_warms_up_then_anneals(public_sample: Path, tmp_path: Path):
    cfg = _cfg(public_sample, tmp_path, warmup_steps=10, lr=1e-3)
    assert lr_at(cfg, 0, 0.0) == pytest.approx(1e-4)
    assert lr_at(cfg, 10, 0.0) == pytest.approx(1e-3)
    assert lr_at(cfg, 50, 0.5) == pytest.approx(5e-4)
    assert lr_at(cfg, 99, 1.0) == pytest.approx(0.0)


def test_collapse_is_detected_by_spread_and_by_falling_to_chance():
    assert "mean pairwise cosine" in collapse_reason(
        ValScore(0.4, 0.99, 10), best=0.4, chance=0.3, max_mean_cosine=0.95
    )
    assert "fell to chance" in collapse_reason(ValScore(0.30, 0.2, 10), best=0.45, chance=0.30, max_mean_cosine=0.95)
    assert collapse_reason(ValScore(0.31, 0.2, 10), best=0.31, chance=0.30, max_mean_cosine=0.95) == ""  # early


def test_chance_level_equals_the_mean_over_random_rankings():
    """Naive twin: MAP@R of many uniformly random rankings (own patient removed), by a slow loop per query."""
    labels = np.array(["a"] * 24 + ["b"] * 8 + ["c"] * 4)
    groups = np.arange(36) // 2  # pairs of images share a patient, so exclusion changes R and N
    rng = np.random.default_rng(0)
    trials = 400
    total = 0.0
    for q in range(len(labels)):
        others = np.flatnonzero(groups != groups[q])
        relevant = labels[others] == labels[q]
        r = int(relevant.sum())
        for _ in range(trials):
            ranked = relevant[rng.permutation(len(others))][:r]
            hits = np.cumsum(ranked)
            total += float((hits / np.arange(1, r + 1) * ranked).sum() / r)
    simulated = total / (trials * len(labels))
    assert chance_map_at_r(labels, groups) == pytest.approx(simulated, abs=0.01)
    # Not a constant: the common class has the higher chance level.
    assert chance_map_at_r(labels[:24], groups[:24]) == pytest.approx(1.0)  # one class only: every ranking is perfect
    assert chance_map_at_r(labels[8:], groups[8:]) < chance_map_at_r(labels, groups)

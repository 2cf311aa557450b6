"""The training loop end to end on real images: a tiny run, its checkpoint and log, resume, collapse checks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from services.embedding import load_checkpoint
from services.errors import ConfigError
from services.imaging import decode_image, to_model_input
from services.splits import read_split
from services.training.config import TrainConfig
from services.training.loop import Trainer, lr_at
from services.training.losses import LossConfig
from services.training.recipes import RECIPES
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


def _films(sample: Path, size: int) -> torch.Tensor:
    """Eight of the sample's real films at the model's input size, (8, 1, size, size)."""
    rows = sorted(sample.glob("images/*/*"))[::3][:8]
    return torch.from_numpy(np.stack([to_model_input(decode_image(p).pixels, size) for p in rows]))[:, None]


def test_crossentropy_baseline_trains_cls_features(public_sample: Path, tmp_path: Path):
    """The baseline trains the ViT's CLS features (no projection head) with a linear classifier beside them: over a
    few steps the encoder moves from its init, the CLS token and the classifier included, and the saved checkpoint
    embeds real films differently from the init. The init is what the trainer itself saves at step 0."""
    ce = RECIPES["crossentropy"]
    cfg = _cfg(public_sample, tmp_path / "ce", loss=ce.loss, lr=ce.lr, steps=4, val_every=2, warmup_steps=1)
    init_run = Trainer(dataclasses.replace(cfg, out_dir=tmp_path / "init", steps=0)).run()
    losses: list[float] = []
    result = Trainer(cfg, on_step=lambda _step, rec: losses.append(rec["ce"])).run()
    assert (init_run.steps, result.status, result.steps) == (0, "finished", 4)
    assert len(losses) == 4 and all(np.isfinite(losses))

    init, last, best = (load_checkpoint(p) for p in (init_run.out_dir, result.out_dir / "last", result.out_dir))
    assert last.config.head == "none" and last.config.embed_dim == last.config.hidden_size
    before, after = init.state_dict(), last.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert "vit.embeddings.cls_token" in moved and "vit.layernorm.weight" in moved, sorted(set(before) - moved)
    assert {k.split(".")[2] for k in moved if k.startswith("vit.layers.")} == {
        str(i) for i in range(last.config.num_layers)
    }, "every transformer block is trained"

    def classifier(run_dir: Path) -> torch.Tensor:
        return torch.load(run_dir / "train_state.pt", weights_only=False)["criterion"]["weight"]

    n_classes = len(json.loads((result.out_dir / "config.json").read_text())["encoder"]["recipe"]["classes"])
    assert classifier(result.out_dir).shape == (n_classes, last.config.hidden_size)  # on the CLS features
    assert not torch.equal(classifier(init_run.out_dir), classifier(result.out_dir))

    films = _films(public_sample, cfg.image_size)
    with torch.no_grad():
        e_init, e_best = init(films), best(films)
        f_init, f_best = init.features(films), best.features(films)
    assert torch.allclose(e_best, torch.nn.functional.normalize(f_best, dim=-1), atol=1e-5)  # embedding = CLS
    cosine = (e_init * e_best).sum(-1)
    print(f"\nce baseline: losses {np.round(losses, 3).tolist()}, init/trained cosine {cosine.tolist()}")
    assert (f_init - f_best).abs().max() > 1e-2 and cosine.max() < 0.999


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

"""The training loop: AdamW, warmup + cosine, bf16 autocast, gradient clipping, checkpoints, resume, validation.

Layout of a run folder (`out_dir`): config.json + model.safetensors = the best checkpoint (so `--model out_dir`
works), last/ = the latest weights, train_state.pt = optimizer and loop state for --resume, train_log.jsonl,
split.json.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from services.embedding import bf16_supported, create_encoder, load_checkpoint, save_checkpoint
from services.errors import ConfigError, DataError
from services.evaluation.splits import make_split, read_split, split_rows, write_split
from services.manifest import file_sha256, read_manifest
from services.training.augment import augment
from services.training.config import TrainConfig
from services.training.data import ClassBalancedBatchSampler, ImageCache, load_image_cache
from services.training.losses import RetrievalLoss
from services.training.validation import chance_map_at_r, collapse_reason, embed_images, validate

StepCallback = Callable[[int, dict], None]


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    status: str  # "finished" | "time_limit" | "collapsed" | "early_stop"
    steps: int
    best_val_map_at_r: float
    best_step: int
    elapsed_s: float
    message: str


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over warmup_steps, then cosine from lr to 0 over the run's progress in [0, 1]."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(progress, 1.0)))


def _param_groups(modules: list[nn.Module], weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, the CLS token and position embeddings (standard for ViTs)."""
    decay, no_decay = [], []
    for module in modules:
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "embeddings" in name and "patch" not in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    """One training run, resumable. Build it with a TrainConfig, call run()."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        resume: bool = False,
        on_step: StepCallback | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg, self.resume, self.on_step = cfg, resume, on_step
        self.say = on_event or (lambda msg: None)
        self.out = Path(cfg.out_dir)
        self.bf16 = bf16_supported() if cfg.bf16 is None else cfg.bf16

    # ---- data ---------------------------------------------------------------------------------------------
    def _prepare_data(self) -> tuple[ImageCache, ImageCache, list[str], str, str]:
        cfg = self.cfg
        rows = read_manifest(cfg.manifest)
        manifest_sha = file_sha256(cfg.manifest)
        split_path = Path(cfg.split_file) if cfg.split_file else self.out / "split.json"
        if split_path.exists():
            split = read_split(split_path)
            self.say(f"using split {split_path}")
        else:
            split = make_split(
                rows,
                root=Path(cfg.manifest).parent,
                seed=cfg.seed,
                holdout_source=cfg.holdout_source,
                manifest_sha256=manifest_sha,
            )
            write_split(split, split_path)
            self.say(f"wrote patient-level split to {split_path}")
        split_sha = file_sha256(split_path)
        parts = split_rows(rows, split, Path(cfg.manifest).parent)
        counts = Counter(row.label for row in parts["train"])
        rare = sorted(label for label, n in counts.items() if n < cfg.min_class_images)
        if rare:
            # A class-balanced sampler would show these few images in nearly every batch and overfit them.
            self.say(f"not training on classes with < {cfg.min_class_images} train images: {', '.join(rare)}")
            parts["train"] = [row for row in parts["train"] if row.label not in rare]
        if len({row.label for row in parts["train"]}) < 2:
            raise DataError(
                f"training needs two or more classes with >= {cfg.min_class_images} train images",
                "Lower --min-class-images, or add labelled images.",
            )
        self.say(f"decoding {len(parts['train'])} train and {len(parts['val'])} val images at {cfg.image_size} px")
        train = load_image_cache(parts["train"], cfg.image_size, workers=cfg.workers, cache_dir=cfg.cache_dir)
        val = load_image_cache(parts["val"], cfg.image_size, workers=cfg.workers, cache_dir=cfg.cache_dir)
        for path, reason in train.errors + val.errors:
            self.say(f"skipped {path}: {reason}")
        classes = sorted(set(train.labels))
        return train, val, classes, manifest_sha, split_sha

    # ---- model --------------------------------------------------------------------------------------------
    def _build(self, n_classes: int) -> tuple[nn.Module, nn.Module]:
        cfg = self.cfg
        last = self.out / "last"
        if self.resume and (last / "config.json").exists():
            model = load_checkpoint(last)
            model.train()
        else:
            head = "none" if cfg.loss.kind == "crossentropy" else "linear"
            model = create_encoder(
                cfg.shape,
                image_size=cfg.image_size,
                embed_dim=cfg.embed_dim,
                head=head,
                init=cfg.init,
                seed=cfg.seed,
            )
        if cfg.loss.kind == "crossentropy":
            criterion: nn.Module = nn.Linear(model.config.hidden_size, n_classes)
        else:
            criterion = RetrievalLoss(cfg.loss, model.config.embed_dim)
        return model, criterion

    # ---- loop ---------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        train, val, classes, manifest_sha, split_sha = self._prepare_data()
        class_index = {c: i for i, c in enumerate(classes)}
        y_all = torch.tensor([class_index[label] for label in train.labels])
        model, criterion = self._build(len(classes))
        opt = torch.optim.AdamW(_param_groups([model, criterion], cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))
        sampler = ClassBalancedBatchSampler(train.labels, cfg.batch_size, seed=cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        state = self._load_state(opt, criterion, sampler, gen)
        step, elapsed0 = state["step"], state["elapsed"]
        best, best_step = state["best"], state["best_step"]
        evals_since_best = 0
        val_labels = np.asarray(val.labels)
        val_groups = np.asarray(val.groups)
        chance = chance_map_at_r(val_labels, val_groups, seed=cfg.seed)
        self.say(f"val MAP@R of a random embedding (chance): {chance:.4f}")
        recipe = {
            **cfg.recipe(),
            "classes": classes,
            "manifest_sha256": manifest_sha,
            "split_sha256": split_sha,
            "bf16": self.bf16,
        }
        log = (self.out / "train_log.jsonl").open("a")
        t_start = time.perf_counter()
        status, message = "finished", ""
        batches = iter(sampler)
        model.train()
        try:
            while True:
                elapsed = elapsed0 + time.perf_counter() - t_start
                progress = max(
                    step / cfg.steps if cfg.steps else 0.0,
                    elapsed / (cfg.max_minutes * 60) if cfg.max_minutes else 0.0,
                )
                if cfg.steps is not None and step >= cfg.steps:
                    break
                if cfg.max_minutes is not None and elapsed >= cfg.max_minutes * 60:
                    status = "time_limit"
                    break
                t0 = time.perf_counter()
                lr = lr_at(cfg, step, progress)
                for group in opt.param_groups:
                    group["lr"] = lr
                idx = next(batches)
                x = augment(train.batch(idx), cfg.augment, gen)
                y = y_all[idx]
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                    if cfg.loss.kind == "crossentropy":
                        logits = criterion(model.features(x))
                if cfg.loss.kind == "crossentropy":
                    loss = nn.functional.cross_entropy(logits.float(), y)
                    parts = {"ce": loss.item()}
                else:
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                        emb = model(x)
                    loss, parts = criterion(emb.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
                opt.step()
                step += 1
                record = {
                    "step": step,
                    "loss": loss.item(),
                    **parts,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "step_s": time.perf_counter() - t0,
                    "elapsed_s": elapsed,
                }
                if not math.isfinite(record["loss"]):
                    status, message = "collapsed", f"loss became {record['loss']} at step {step}"
                    break
                if step % 10 == 0:
                    log.write(json.dumps(record) + "\n")
                    log.flush()  # so `tail -f train_log.jsonl` follows a long run
                if self.on_step:
                    self.on_step(step, record)
                if step % cfg.val_every == 0 or (cfg.steps is not None and step == cfg.steps):
                    score = validate(embed_images(model, val.images, bf16=self.bf16), val_labels, val_groups)
                    log.write(
                        json.dumps(
                            {
                                "step": step,
                                "val_map_at_r": score.map_at_r,
                                "val_mean_cosine": score.mean_cosine,
                            }
                        )
                        + "\n"
                    )
                    log.flush()
                    self.say(f"step {step}: val MAP@R {score.map_at_r:.4f}, mean cosine {score.mean_cosine:.3f}")
                    if score.map_at_r > best:
                        best, best_step, evals_since_best = score.map_at_r, step, 0
                        save_checkpoint(model, self.out, recipe={**recipe, "step": step, "val_map_at_r": best})
                    else:
                        evals_since_best += 1
                    message = collapse_reason(score, best, chance, cfg.collapse_cosine)
                    if message:
                        status, message = "collapsed", f"step {step}: {message}; lower --lr or drop the memory"
                        break
                    if cfg.patience_evals and evals_since_best >= cfg.patience_evals:
                        status, message = (
                            "early_stop",
                            f"no val MAP@R gain for {evals_since_best} evaluations",
                        )
                        break
                if step % cfg.ckpt_every == 0:
                    self._save_state(
                        model,
                        opt,
                        criterion,
                        sampler,
                        gen,
                        step,
                        elapsed0 + time.perf_counter() - t_start,
                        best,
                        best_step,
                        recipe,
                    )
        finally:
            log.close()
        elapsed = elapsed0 + time.perf_counter() - t_start
        self._save_state(model, opt, criterion, sampler, gen, step, elapsed, best, best_step, recipe)
        if best_step == 0 and status != "collapsed":  # no validation ran: keep the last weights as the result
            score = validate(embed_images(model, val.images, bf16=self.bf16), val_labels, val_groups)
            best, best_step = score.map_at_r, step
            save_checkpoint(model, self.out, recipe={**recipe, "step": step, "val_map_at_r": best})
        return TrainResult(self.out, status, step, best, best_step, elapsed, message)

    # ---- state --------------------------------------------------------------------------------------------
    def _save_state(self, model, opt, criterion, sampler, gen, step, elapsed, best, best_step, recipe) -> None:  # noqa: ANN001
        save_checkpoint(model, self.out / "last", recipe={**recipe, "step": step})
        state = {
            "step": step,
            "elapsed": elapsed,
            "best": best,
            "best_step": best_step,
            "optimizer": opt.state_dict(),
            "criterion": criterion.state_dict(),
            "sampler": sampler.state_dict(),
            "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        tmp = self.out / "train_state.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(self.out / "train_state.pt")

    def _load_state(self, opt, criterion, sampler, gen) -> dict:  # noqa: ANN001
        fresh = {"step": 0, "elapsed": 0.0, "best": -1.0, "best_step": 0}
        path = self.out / "train_state.pt"
        if not self.resume:
            if path.exists():
                raise ConfigError(
                    f"{self.out} already holds a training run",
                    "Pass --resume to continue it, or choose another --out.",
                )
            return fresh
        if not path.exists():
            raise ConfigError(f"nothing to resume in {self.out}", "Drop --resume to start a new run.")
        state = torch.load(path, weights_only=False)
        opt.load_state_dict(state["optimizer"])
        criterion.load_state_dict(state["criterion"])
        sampler.load_state_dict(state["sampler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.say(f"resuming at step {state['step']} ({state['elapsed'] / 60:.1f} min done)")
        return {k: state[k] for k in fresh}

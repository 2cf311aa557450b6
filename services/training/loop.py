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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from services.embedding import bf16_supported, create_encoder, load_checkpoint, save_checkpoint
from services.errors import ConfigError, DataError
from services.manifest import file_sha256, read_manifests
from services.splits import load_or_make_split, split_rows
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


@dataclass
class _Run:
    """The mutable state of one run: what --resume restores, plus the counters of the loop."""

    model: nn.Module
    criterion: nn.Module
    opt: torch.optim.Optimizer
    sampler: ClassBalancedBatchSampler
    gen: torch.Generator
    recipe: dict
    step: int = 0
    elapsed0: float = 0.0  # seconds trained before this process (resume)
    best: float = -1.0
    best_step: int = 0
    evals_since_best: int = 0
    last_val_step: int = -1
    started: float = field(default_factory=time.perf_counter)

    @property
    def elapsed(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.started


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over warmup_steps, then cosine from lr to 0 over the run's progress in [0, 1]."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(progress, 1.0)))


def _param_groups(modules: list[nn.Module], weight_decay: float, stem_lr_scale: float = 1.0) -> list[dict]:
    """No weight decay on biases, norms, the CLS token and position embeddings (standard for ViTs). A pretrained
    CNN stem (hybrid shapes) gets its own groups at `lr_scale = stem_lr_scale`, so fine-tuning does not wash out
    its ImageNet features in the first steps."""
    groups: dict[tuple[bool, bool], list] = {(d, s): [] for d in (True, False) for s in (False, True)}
    for module in modules:
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            decay = not (p.ndim < 2 or "embeddings" in name and "patch" not in name)
            groups[(decay, ".patch_embeddings.stem." in f".{name}")].append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decay else 0.0, "lr_scale": stem_lr_scale if stem else 1.0}
        for (decay, stem), params in groups.items()
        if params
    ]


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
        manifests = read_manifests(cfg.manifests)
        rows, manifest_sha = manifests.rows, manifests.sha256
        split_path = Path(cfg.split_file) if cfg.split_file else self.out / "split.json"
        # A split left in the run folder by another manifest (or holdout) is refused, not silently reused.
        split, made = load_or_make_split(split_path, manifests, seed=cfg.seed, holdout_source=cfg.holdout_source)
        self.say(f"wrote patient-level split to {split_path}" if made else f"using split {split_path}")
        split_sha = file_sha256(split_path)
        parts = split_rows(rows, split, manifests.root)
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
        model, criterion = self._build(len(classes))
        groups = _param_groups([model, criterion], cfg.weight_decay, cfg.stem_lr_scale)
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))
        run = _Run(
            model=model,
            criterion=criterion,
            opt=opt,
            sampler=ClassBalancedBatchSampler(
                train.labels,
                cfg.batch_size,
                seed=cfg.seed,
                sources=train.sources if cfg.sampler == "label_source" else None,
                min_source_images=cfg.min_class_images,
            ),
            gen=torch.Generator().manual_seed(cfg.seed + 1),
            recipe={
                **cfg.recipe(),
                "classes": classes,
                "manifest_sha256": manifest_sha,
                "split_sha256": split_sha,
                "bf16": self.bf16,
            },
        )
        self._load_state(run)
        y_all = torch.tensor([class_index[label] for label in train.labels])
        val_labels, val_groups = np.asarray(val.labels), np.asarray(val.groups)
        chance = chance_map_at_r(val_labels, val_groups)
        self.say(f"val MAP@R of a random ranking (chance): {chance:.4f}")

        def evaluate() -> str:
            """Validate, keep the best checkpoint; returns a collapse reason or ""."""
            score = validate(embed_images(model, val.images, bf16=self.bf16), val_labels, val_groups)
            run.last_val_step = run.step
            self._log({"step": run.step, "val_map_at_r": score.map_at_r, "val_mean_cosine": score.mean_cosine})
            self.say(f"step {run.step}: val MAP@R {score.map_at_r:.4f}, mean cosine {score.mean_cosine:.3f}")
            if score.map_at_r > run.best:
                run.best, run.best_step, run.evals_since_best = score.map_at_r, run.step, 0
                save_checkpoint(model, self.out, recipe={**run.recipe, "step": run.step, "val_map_at_r": run.best})
            else:
                run.evals_since_best += 1
            return collapse_reason(score, run.best, chance, cfg.collapse_cosine)

        self._logfile = (self.out / "train_log.jsonl").open("a")
        run.started = time.perf_counter()
        status, message = "finished", ""
        batches = iter(run.sampler)
        model.train()
        try:
            while True:
                if cfg.steps is not None and run.step >= cfg.steps:
                    break
                if cfg.max_minutes is not None and run.elapsed >= cfg.max_minutes * 60:
                    status = "time_limit"
                    break
                started = time.perf_counter()  # the step's time includes the sampler and the cache gather
                idx = next(batches)
                record = self._train_step(run, train.batch(idx), y_all[idx], started=started)
                if not math.isfinite(record["loss"]):
                    status, message = "collapsed", f"loss became {record['loss']} at step {run.step}"
                    break
                if run.step % 10 == 0:
                    self._log(record)
                if self.on_step:
                    self.on_step(run.step, record)
                if run.step % cfg.val_every == 0:
                    reason = evaluate()
                    if reason:
                        status, message = "collapsed", f"step {run.step}: {reason}; lower --lr or drop the memory"
                        break
                    if cfg.patience_evals and run.evals_since_best >= cfg.patience_evals:
                        status, message = "early_stop", f"no val MAP@R gain for {run.evals_since_best} evaluations"
                        break
                if run.step % cfg.ckpt_every == 0:
                    self._save_state(run)
            if status != "collapsed" and run.last_val_step != run.step:
                reason = evaluate()  # the final, fully annealed weights are often the best
                if reason:
                    status, message = "collapsed", f"step {run.step}: {reason}; lower --lr or drop the memory"
        finally:
            self._logfile.close()
        self._save_state(run)
        return TrainResult(self.out, status, run.step, run.best, run.best_step, run.elapsed, message)

    def _train_step(
        self, run: _Run, images: torch.Tensor, labels: torch.Tensor, *, started: float | None = None
    ) -> dict:
        """One optimiser step on one batch; returns the log record. `step_s` counts from `started` (when the
        batch was drawn) to the end of the optimiser step."""
        cfg = self.cfg
        t0 = time.perf_counter() if started is None else started
        progress = max(
            run.step / cfg.steps if cfg.steps else 0.0,
            run.elapsed / (cfg.max_minutes * 60) if cfg.max_minutes else 0.0,
        )
        lr = lr_at(cfg, run.step, progress)
        for group in run.opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        x = augment(images, cfg.augment, run.gen)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            out = run.model.features(x) if cfg.loss.kind == "crossentropy" else run.model(x)
        if cfg.loss.kind == "crossentropy":
            loss = nn.functional.cross_entropy(run.criterion(out.float()), labels)
            parts = {"ce": loss.item()}
        else:
            loss, parts = run.criterion(out.float(), labels)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip))
        run.opt.step()
        run.step += 1
        return {
            "step": run.step,
            "loss": loss.item(),
            **parts,
            "lr": lr,
            "grad_norm": grad_norm,
            "step_s": time.perf_counter() - t0,
            "elapsed_s": run.elapsed,
        }

    def _log(self, record: dict) -> None:
        self._logfile.write(json.dumps(record) + "\n")
        self._logfile.flush()  # so `tail -f train_log.jsonl` follows a long run

    # ---- state --------------------------------------------------------------------------------------------
    def _save_state(self, run: _Run) -> None:
        save_checkpoint(run.model, self.out / "last", recipe={**run.recipe, "step": run.step})
        state = {
            "step": run.step,
            "elapsed": run.elapsed,
            "best": run.best,
            "best_step": run.best_step,
            "optimizer": run.opt.state_dict(),
            "criterion": run.criterion.state_dict(),
            "sampler": run.sampler.state_dict(),
            "generator": run.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        tmp = self.out / "train_state.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(self.out / "train_state.pt")

    def _load_state(self, run: _Run) -> None:
        """Fresh run: refuse to overwrite one. --resume: restore optimiser, memory, sampler, RNG and counters."""
        path = self.out / "train_state.pt"
        if not self.resume:
            if path.exists():
                raise ConfigError(
                    f"{self.out} already holds a training run",
                    "Pass --resume to continue it, or choose another --out.",
                )
            return
        if not path.exists():
            raise ConfigError(f"nothing to resume in {self.out}", "Drop --resume to start a new run.")
        state = torch.load(path, weights_only=False)
        run.opt.load_state_dict(state["optimizer"])
        run.criterion.load_state_dict(state["criterion"])
        run.sampler.load_state_dict(state["sampler"])
        run.gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        run.step, run.elapsed0 = state["step"], state["elapsed"]
        run.best, run.best_step = state["best"], state["best_step"]
        self.say(f"resuming at step {run.step} ({run.elapsed0 / 60:.1f} min done)")

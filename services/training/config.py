"""TrainConfig: every knob of a training run, recorded in the checkpoint's recipe."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from services.errors import ConfigError
from services.manifest import as_paths
from services.training.augment import AugmentConfig
from services.training.losses import LossConfig
from services.training.recipes import RECIPES

# "label_source": each batch balances labels and, within a label, its sources (so positives of a label come from
# more than one source wherever the data has them); "label": labels only (the sampler before issue 17).
SAMPLERS = ("label_source", "label")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Either `steps` or `max_minutes` (or both: whichever ends first) bounds it.

    The learning-rate schedule is warmup then cosine over the run's progress, where progress is the larger of
    step/steps and elapsed/max_minutes, so a time-bounded run still anneals to zero.
    """

    manifest: Path | Sequence[Path]  # one manifest, or several joined (split by patient as one set)
    out_dir: Path
    split_file: Path | None = None  # default out_dir/split.json, created when missing
    shape: str = "vit-small"
    image_size: int = 128
    embed_dim: int | None = None
    init: Path | None = None
    steps: int | None = None
    max_minutes: float | None = None
    batch_size: int = 64
    lr: float = RECIPES["default"].lr
    stem_lr_scale: float = 0.1  # a pretrained CNN stem (hybrid shapes) learns at lr * this
    weight_decay: float = 0.05
    warmup_steps: int = 100
    grad_clip: float = 1.0
    loss: LossConfig = field(default_factory=lambda: RECIPES["default"].loss)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    bf16: bool | None = None
    val_every: int = 200
    ckpt_every: int = 200
    seed: int = 0
    holdout_source: str | None = None
    collapse_cosine: float = 0.95  # mean pairwise cosine of val embeddings above this = collapsed
    patience_evals: int = 0  # stop after this many evaluations without a better val MAP@R (0 = never)
    min_class_images: int = 20  # classes with fewer train images are left out of training (still evaluated)
    sampler: str = "label_source"
    cache_dir: Path | None = None
    workers: int = 2

    @property
    def manifests(self) -> tuple[Path, ...]:
        """The manifest(s) as a tuple of paths."""
        return as_paths(self.manifest)

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r}", f"Use one of: {', '.join(SAMPLERS)}.")
        if self.steps is None and self.max_minutes is None:
            raise ConfigError("a training run needs --steps or --max-minutes", "Pass one (or both).")
        if self.batch_size < 4:
            raise ConfigError(f"batch size {self.batch_size} is too small for pair losses", "Use 16 or more.")

    def recipe(self) -> dict:
        """The JSON-able record of this configuration, for config.json and the log."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, Path):
                out[key] = str(value)
        paths = [str(p) for p in self.manifests]
        out["manifest"] = paths[0] if len(paths) == 1 else paths
        out.pop("cache_dir", None)
        out.pop("workers", None)
        return out

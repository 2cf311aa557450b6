"""Named training recipes: a loss and the learning rate it was validated at. `default` is what the ablation supports
(README, "Results"); `paper` is the MIDL 2024 recipe, kept whatever it scores."""

from __future__ import annotations

from dataclasses import dataclass

from services.training.losses import LossConfig


@dataclass(frozen=True)
class Recipe:
    loss: LossConfig
    lr: float
    note: str


_CONTRASTIVE_LR = 1e-4  # at 5e-4 in-batch contrastive collapsed (mean cosine 0.99) by step 400 on cxr-public

RECIPES: dict[str, Recipe] = {
    "crossentropy": Recipe(LossConfig(kind="crossentropy"), 5e-4, "CLS token + linear classifier; CLS features"),
    "contrastive": Recipe(LossConfig(kind="contrastive"), _CONTRASTIVE_LR, "in-batch pairs: (1 - s), max(0, s - 0.5)"),
    "xbm": Recipe(
        LossConfig(kind="contrastive", memory_size=2048), _CONTRASTIVE_LR, "contrastive + cross-batch memory"
    ),
    "paper": Recipe(
        LossConfig(kind="contrastive", memory_size=2048, koleo_weight=0.3),
        _CONTRASTIVE_LR,
        "contrastive over a cross-batch memory + 0.3 KoLeo (MIDL 2024)",
    ),
}
RECIPES["default"] = RECIPES["contrastive"]

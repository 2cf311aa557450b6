"""Named loss presets. `default` is the one the ablation supports (see README, "Results")."""

from __future__ import annotations

from services.training.losses import LossConfig

RECIPES: dict[str, LossConfig] = {
    # In-batch contrastive, margins (1 - s) and max(0, s - 0.5); no memory, no KoLeo. See README "Results".
    "default": LossConfig(kind="contrastive", memory_size=0, koleo_weight=0.0),
    "contrastive": LossConfig(kind="contrastive", memory_size=0, koleo_weight=0.0),
    "xbm": LossConfig(kind="contrastive", memory_size=2048, koleo_weight=0.0),
    # The paper's full recipe: contrastive over a cross-batch memory + 0.3 KoLeo.
    "paper": LossConfig(kind="contrastive", memory_size=2048, koleo_weight=0.3),
    "crossentropy": LossConfig(kind="crossentropy"),
}

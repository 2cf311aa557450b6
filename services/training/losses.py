"""Retrieval losses: contrastive with a cross-batch memory, plus the KoLeo spreading regulariser.

The recipe is El-Nouby et al. 2021 ("Training Vision Transformers for Image Retrieval") as applied to chest
radiographs by Susmitha & Namboodiri (MIDL 2024). With s the cosine similarity of two embeddings, a positive
pair costs 1 - s and a negative pair costs max(0, s - 0.5). KoLeo adds -mean(log(nearest-neighbour distance))
over the batch so that embeddings spread out instead of collapsing.

pytorch-metric-learning semantics, read from its 2.9 source and pinned by tests/training/test_losses.py:
- `ContrastiveLoss` with `CosineSimilarity` (an inverted distance, where margin(x, y) = y - x) costs a
  positive pair relu(pos_margin - s) and a negative pair relu(s - neg_margin).
- Its default reducer is `MultipleReducers({"pos_loss": AvgNonZeroReducer, "neg_loss": AvgNonZeroReducer})`.
  Each term is the mean over the pairs whose cost is above zero, and the two terms are summed. We keep that
  default on purpose. As the memory grows, most negatives are already below the margin; a plain mean would
  let those free pairs dilute the gradient of the few hard ones.
- Ordered pairs (i, j) and (j, i) both count. That does not change a mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from pytorch_metric_learning import distances, losses
from torch import Tensor, nn

from services.errors import ConfigError

LOSS_KINDS = ("contrastive", "crossentropy")


def koleo_loss(emb: Tensor, eps: float = 1e-8) -> Tensor:
    """KoLeo differential-entropy estimate: -mean_i log(min_{j != i} ||e_i - e_j||_2 + eps).

    The neighbour is picked without a gradient, and the distance to it is then recomputed with one. The loss
    therefore pushes each point away from its nearest neighbour. (Taking a min over a detached matrix, as
    some earlier code did, leaves a constant.) A batch of fewer than two embeddings returns zero.
    """
    if emb.ndim != 2:
        raise ValueError(f"koleo_loss expects (B, D) embeddings, got shape {tuple(emb.shape)}")
    n = emb.shape[0]
    if n < 2:
        return emb.sum() * 0.0
    with torch.no_grad():
        dist = torch.cdist(emb.float(), emb.float())
        dist.fill_diagonal_(float("inf"))
        neighbour = dist.argmin(dim=1)
    # vector_norm's gradient at 0 (a duplicated embedding) is 0, not NaN; eps keeps the log finite.
    nearest = torch.linalg.vector_norm(emb - emb[neighbour], dim=1)
    return -torch.log(nearest + eps).mean()


@dataclass(frozen=True)
class LossConfig:
    """The training objective. `memory_size` 0 means in-batch pairs only; `koleo_weight` 0 turns KoLeo off.

    `kind="crossentropy"` is the classification baseline (CLS token + linear classifier). The training loop
    builds it; `RetrievalLoss` handles only the contrastive kind.
    """

    kind: str = "contrastive"
    pos_margin: float = 1.0
    neg_margin: float = 0.5
    memory_size: int = 0
    koleo_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ConfigError(f"unknown loss kind {self.kind!r}", f"Use one of: {', '.join(LOSS_KINDS)}.")
        if self.memory_size < 0:
            raise ConfigError(f"memory_size must be >= 0, got {self.memory_size}", "Use 0 to turn XBM off.")
        if self.koleo_weight < 0:
            raise ConfigError(f"koleo_weight must be >= 0, got {self.koleo_weight}", "The paper uses 0.3.")


class RetrievalLoss(nn.Module):
    """Contrastive loss (optionally against a cross-batch memory) plus `koleo_weight` times KoLeo.

    The loss takes L2-normalised (B, D) embeddings and integer class labels. KoLeo sees only the current
    batch. Memory pairs are one-sided: pml stores the memory detached, so gradient flows through the
    current batch only.

    Resume: the memory's embeddings and labels are pml buffers, and its write position and "filled" flag
    are mirrored into two buffers here. So `state_dict()` (all tensors, safetensors-friendly) restores the
    memory exactly through `load_state_dict`. Call `reset_memory()` to start empty instead.
    """

    def __init__(self, cfg: LossConfig, embedding_size: int) -> None:
        super().__init__()
        if cfg.kind != "contrastive":
            raise ConfigError(
                f"RetrievalLoss handles the contrastive loss, not {cfg.kind!r}",
                "The cross-entropy baseline is built by the training loop (linear classifier on the CLS token).",
            )
        self.cfg = cfg
        self.embedding_size = embedding_size
        self.contrastive = losses.ContrastiveLoss(
            pos_margin=cfg.pos_margin, neg_margin=cfg.neg_margin, distance=distances.CosineSimilarity()
        )
        self.xbm: losses.CrossBatchMemory | None = None
        if cfg.memory_size > 0:
            self.xbm = losses.CrossBatchMemory(
                self.contrastive, embedding_size, memory_size=cfg.memory_size, miner=None
            )
        # Mirrors of pml's plain-attribute queue state, so that they travel in state_dict().
        self.register_buffer("xbm_queue_idx", torch.zeros((), dtype=torch.long))
        self.register_buffer("xbm_filled", torch.zeros((), dtype=torch.bool))
        self.register_load_state_dict_post_hook(_restore_queue_state)

    def forward(self, emb: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Return the total loss and its parts as floats: {"contrastive", "koleo", "total"}."""
        if emb.ndim != 2 or emb.shape[1] != self.embedding_size:
            raise ValueError(f"expected (B, {self.embedding_size}) embeddings, got {tuple(emb.shape)}")
        if labels.shape != (emb.shape[0],):
            raise ValueError(f"expected {emb.shape[0]} labels, got shape {tuple(labels.shape)}")
        # The loss runs in fp32 even under bf16 autocast, and the XBM memory stays fp32.
        emb = emb.float()
        labels = labels.long()
        if self.xbm is None:
            contrastive = self.contrastive(emb, labels)
        else:
            if emb.shape[0] > self.cfg.memory_size:
                raise ConfigError(
                    f"batch of {emb.shape[0]} is larger than the cross-batch memory ({self.cfg.memory_size})",
                    "Raise memory_size to at least the batch size.",
                )
            contrastive = self.xbm(emb, labels)
            self.xbm_queue_idx.fill_(int(self.xbm.queue_idx))
            self.xbm_filled.fill_(bool(self.xbm.has_been_filled))
        weight = self.cfg.koleo_weight
        if weight > 0:
            koleo = koleo_loss(emb)
            total = contrastive + weight * koleo
        else:
            with torch.no_grad():  # reported for monitoring only
                koleo = koleo_loss(emb)
            total = contrastive
        parts = {
            "contrastive": float(contrastive.detach()),
            "koleo": float(koleo.detach()),
            "total": float(total.detach()),
        }
        return total, parts

    def reset_memory(self) -> None:
        """Empty the cross-batch memory (e.g. after changing the encoder under it)."""
        if self.xbm is not None:
            device = self.xbm.embedding_memory.device
            self.xbm.reset_queue()
            self.xbm.to(device)
        self.xbm_queue_idx.zero_()
        self.xbm_filled.zero_()

    @property
    def memory_fill(self) -> int:
        """How many embeddings the memory currently holds (0 without a memory)."""
        if self.xbm is None:
            return 0
        return self.cfg.memory_size if self.xbm.has_been_filled else int(self.xbm.queue_idx)


def _restore_queue_state(module: nn.Module, incompatible_keys: Any) -> None:
    """After load_state_dict, copy the mirrored queue position back into pml's plain attributes."""
    assert isinstance(module, RetrievalLoss)
    if module.xbm is not None:
        module.xbm.queue_idx = int(module.xbm_queue_idx)
        module.xbm.has_been_filled = bool(module.xbm_filled)

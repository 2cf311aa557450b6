"""Why two X-rays are similar: a heat map on each image of the regions that drove their cosine similarity.

`relevance`: gradient-weighted attention relevance (Chefer, Gur and Wolf, ICCV 2021, "Generic Attention-model
Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers"), with the pair's cosine as the target.
For image A of the pair (A, B) the target is cos(f(A), f(B).detach()); one forward and one backward give every
layer's attention probabilities A_l and their gradients, and

    R = I;  for each layer l in order:  R = R + mean_heads(clamp(grad(A_l) * A_l, min=0)) @ R

The CLS row of R over the patch tokens, on the patch grid, is the map. It is specific to the pair (rollout alone
is not), and it reaches the patch tokens of a CLS model (last-layer Grad-CAM does not). Every pair of a batch is
explained by one batched forward and backward pass.

`occlusion`: the slow "verify" mode, SBSM-style (sliding masks, ~100 batched forward passes per image): each
window is filled with the image's mean grey and the drop in the pair's cosine is spread over the window's pixels.

Explanations run on an "eager-attention twin" of the encoder that shares its weights (no copy) but has its own
config, so normal inference keeps its SDPA attention, speed and numerics. Drawing the maps over the images is
services.embedding.overlay's job.
"""

from __future__ import annotations

import copy
import math
import threading
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from services.errors import ModelError

from .batch import BatchEncoder
from .model import CxrEncoder
from .overlay import normalise_map

Method = Literal["relevance", "occlusion"]
METHODS: tuple[str, ...] = ("relevance", "occlusion")
_PAIR_BATCH = 8  # pairs per relevance pass (16 images)
_OCCLUSION_BATCH = 50


@dataclass(frozen=True)
class PairExplanation:
    """The maps of one (query, result) pair on the model's patch grid (g, g), raw values (>= 0 for relevance)."""

    query_map: np.ndarray
    result_map: np.ndarray
    similarity: float
    method: str
    patch_size: int
    image_size: int

    def to_json(self) -> dict[str, Any]:
        """JSON-able: each map as rows of floats on the patch grid, scaled to [0, 1] (0 = least relevant)."""
        grid = list(self.query_map.shape)
        return {
            "method": self.method,
            "similarity": round(float(self.similarity), 6),
            "grid": grid,
            "patch_size": self.patch_size,
            "image_size": self.image_size,
            "query": {"map": _rounded(normalise_map(self.query_map))},
            "result": {"map": _rounded(normalise_map(self.result_map))},
        }


class Explainer:
    """Explains (query, result) pairs with one encoder; safe to share between threads (calls are serialised)."""

    def __init__(self, encoder: CxrEncoder | BatchEncoder) -> None:
        base = encoder.encoder if isinstance(encoder, BatchEncoder) else encoder
        if not isinstance(base, CxrEncoder):
            raise TypeError(f"Explainer needs a CxrEncoder or BatchEncoder, got {type(base).__name__}")
        self.base = base
        self.config = base.config
        self.grid = self.config.image_size // self.config.patch_size
        self.device = next(base.parameters()).device
        self.model = _eager_twin(base)
        from transformers.models.vit.modeling_vit import ViTAttention

        self._attention = [m for m in self.model.modules() if isinstance(m, ViTAttention)]
        if len(self._attention) != self.model.vit.config.num_hidden_layers:
            raise ModelError(
                f"found {len(self._attention)} attention modules in a {self.model.vit.config.num_hidden_layers}"
                "-layer ViT; this transformers version lays the ViT out differently from what explain.py expects"
            )
        self._lock = threading.Lock()

    def explain(
        self, query: np.ndarray, result: np.ndarray, *, method: Method = "relevance", masks: int = 100
    ) -> PairExplanation:
        """Maps for one pair of grey images in [0, 1] (any size: each is resized to the model's input)."""
        return self.explain_many(query, [result], method=method, masks=masks)[0]

    def explain_many(
        self, query: np.ndarray, results: list[np.ndarray], *, method: Method = "relevance", masks: int = 100
    ) -> list[PairExplanation]:
        """One explanation per result, each against the same query (the query's map depends on the result)."""
        if method not in METHODS:
            raise ValueError(f"unknown explanation method {method!r}; known: {', '.join(METHODS)}")
        if not results:
            return []
        q = self._tensor([query])
        r = self._tensor(results)
        with self._lock:
            if method == "relevance":
                q_maps, r_maps, sims = self._relevance_pairs(q.expand(len(r), -1, -1, -1), r)
            else:
                q_maps, r_maps, sims = self._occlusion_pairs(q, r, masks)
        c = self.config
        return [
            PairExplanation(q_maps[i], r_maps[i], float(sims[i]), method, c.patch_size, c.image_size)
            for i in range(len(r))
        ]

    def relevance_maps(self, images: Tensor, partners: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pairwise relevance for model-sized (N, 1, S, S) batches: (query maps, partner maps, cosines)."""
        with self._lock:
            return self._relevance_pairs(images.to(self.device), partners.to(self.device))

    def embed(self, images: Tensor) -> Tensor:
        """(N, 1, S, S) in [0, 1] -> (N, D) unit vectors in fp32 with the encoder's own attention."""
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), _OCCLUSION_BATCH):
                out.append(self.base(images[start : start + _OCCLUSION_BATCH].to(self.device)).float())
        return torch.cat(out)

    def _tensor(self, images: list[np.ndarray]) -> Tensor:
        from services.imaging import to_model_input

        size = self.config.image_size
        arrays = []
        for img in images:
            img = np.asarray(img)
            if img.ndim != 2 or not np.issubdtype(img.dtype, np.floating):
                raise ModelError(f"explanations take 2-D float grey images in [0, 1], got {img.dtype} {img.shape}")
            arrays.append(to_model_input(img, size))
        return torch.from_numpy(np.stack(arrays)).unsqueeze(1).to(self.device)

    def _relevance_pairs(self, a: Tensor, b: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        maps_a, maps_b, sims = [], [], []
        for start in range(0, len(a), _PAIR_BATCH):
            ma, mb, s = self._relevance_batch(a[start : start + _PAIR_BATCH], b[start : start + _PAIR_BATCH])
            maps_a.append(ma)
            maps_b.append(mb)
            sims.append(s)
        return np.concatenate(maps_a), np.concatenate(maps_b), np.concatenate(sims)

    def _relevance_batch(self, a: Tensor, b: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(a)
        x = torch.cat([a, b]).float().detach().requires_grad_(True)  # the graph needs a leaf; weights are frozen
        attentions: list[Tensor] = []

        def keep(_module: torch.nn.Module, _args: object, output: tuple[Tensor, Tensor | None]) -> None:
            probs = output[1]
            if probs is None:
                raise ModelError("the attention layer returned no probabilities; eager attention was not used")
            probs.retain_grad()
            attentions.append(probs)

        handles = [m.register_forward_hook(keep) for m in self._attention]
        try:
            with torch.enable_grad(), torch.autocast(self.device.type, enabled=False):
                emb = self.model(x)
                ea, eb = emb[:n], emb[n:]
                # Each image's own term only: cos(f(A), f(B).detach()) for A, and the mirror for B.
                target = (ea * eb.detach()).sum() + (ea.detach() * eb).sum()
                target.backward()
        finally:
            for h in handles:
                h.remove()
        tokens = attentions[0].shape[-1]
        relevance = torch.eye(tokens, device=x.device).expand(2 * n, tokens, tokens).clone()
        with torch.no_grad():
            for probs in attentions:
                cam = (probs.grad * probs).clamp(min=0).mean(dim=1)
                relevance = relevance + torch.bmm(cam, relevance)
        maps = relevance[:, 0, 1:].reshape(2 * n, self.grid, self.grid).cpu().numpy().astype(np.float32)
        sims = (ea * eb).sum(-1).detach().cpu().numpy()
        return maps[:n], maps[n:], sims

    def _occlusion_pairs(self, q: Tensor, r: Tensor, masks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        eq, er = self.embed(q), self.embed(r)
        sims = (er @ eq[0]).cpu().numpy()
        windows = sliding_masks(self.config.image_size, masks, self.config.patch_size).to(self.device)
        q_maps = [self._occlusion_map(q[0], windows, er[i]) for i in range(len(r))]
        r_maps = [self._occlusion_map(r[i], windows, eq[0]) for i in range(len(r))]
        return np.stack(q_maps), np.stack(r_maps), sims

    def _occlusion_map(self, image: Tensor, windows: Tensor, partner: Tensor) -> np.ndarray:
        """Mean cosine drop of the masks covering each patch (pixels averaged per patch)."""
        base = float(self.embed(image[None]) @ partner)
        fill = image.mean()
        occluded = image[None] * (1 - windows[:, None]) + fill * windows[:, None]
        drops = base - self.embed(occluded) @ partner  # (M,)
        weight = windows.sum(0).clamp(min=1e-6)
        pixels = (drops[:, None, None] * windows).sum(0) / weight
        p = self.config.patch_size
        return F.avg_pool2d(pixels[None, None], p)[0, 0].cpu().numpy().astype(np.float32)


def _eager_twin(base: CxrEncoder) -> CxrEncoder:
    """The same weights (shared storage, frozen) under a ViT config of its own that uses eager attention."""
    from transformers import ViTModel

    vit_config = copy.deepcopy(base.vit.config)
    vit_config._attn_implementation = "eager"
    vit_config.attention_probs_dropout_prob = 0.0
    with torch.device("meta"):
        twin = CxrEncoder(base.config, ViTModel(vit_config, add_pooling_layer=False))
    try:
        twin.load_state_dict(base.state_dict(), strict=True, assign=True)
    except RuntimeError as exc:
        raise ModelError(f"cannot build the explanation model from this encoder ({str(exc).splitlines()[0]})") from exc
    return twin.eval().requires_grad_(False)


def sliding_masks(image_size: int, count: int = 100, patch_size: int = 16, window: int | None = None) -> Tensor:
    """About `count` square window masks (M, S, S) sliding on a regular grid over the image (SBSM).

    The default window is one patch, or 1.5 strides where the grid is coarser than the patches, so the
    windows overlap and cover every pixel.
    """
    per_side = max(2, round(math.sqrt(count)))
    if window is None:
        window = max(patch_size, math.ceil(1.5 * image_size / per_side))
    window = min(image_size, window)
    starts = np.linspace(0, image_size - window, per_side).round().astype(int)
    masks = torch.zeros(per_side * per_side, image_size, image_size)
    for i, top in enumerate(starts):
        for j, left in enumerate(starts):
            masks[i * per_side + j, top : top + window, left : left + window] = 1.0
    return masks


def _rounded(heat: np.ndarray) -> list[list[float]]:
    return [[round(float(v), 4) for v in row] for row in heat]

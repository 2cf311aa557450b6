"""Validation during training: MAP@R on the val split (leave-one-patient-out) and an embedding-spread check."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from services.embedding import CxrEncoder
from services.evaluation.baselines import expected_map_at_r
from services.evaluation.metrics import map_at_r
from services.evaluation.ranking import rank_relevance


@dataclass(frozen=True)
class ValScore:
    map_at_r: float
    mean_cosine: float  # mean pairwise cosine of the embeddings: near 1 means they collapsed to one point
    n: int


@torch.inference_mode()
def embed_images(model: CxrEncoder, images: np.ndarray, *, batch_size: int = 128, bf16: bool = False) -> np.ndarray:
    """Embed uint8 (N,S,S) images with the model in eval mode; returns float32 (N,D)."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start : start + batch_size]).float().div_(255.0).unsqueeze(1)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                emb = model(x)
            out.append(torch.nn.functional.normalize(emb.float(), dim=1).numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, model.config.embed_dim), np.float32)


def validate(emb: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> ValScore:
    """Each val image queries the other val images of other patients."""
    _, rel, n_rel = rank_relevance(emb, emb, labels, labels, groups, groups)
    valid = n_rel > 0
    score = float(map_at_r(rel[valid], n_rel[valid]).mean()) if valid.any() else 0.0
    n = len(emb)
    gram = emb @ emb.T
    mean_cos = float((gram.sum() - np.trace(gram)) / max(n * (n - 1), 1))
    return ValScore(score, mean_cos, n)


def chance_map_at_r(labels: np.ndarray, groups: np.ndarray) -> float:
    """Expected val MAP@R of a random ranking (exact): the floor a collapsed or untrained model sits at."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    other_patient = groups[:, None] != groups[None, :]
    n_gallery = other_patient.sum(axis=1)
    n_relevant = (other_patient & (labels[:, None] == labels[None, :])).sum(axis=1)
    valid = n_relevant > 0
    return float(expected_map_at_r(n_relevant[valid], n_gallery[valid]).mean()) if valid.any() else 0.0


def collapse_reason(score: ValScore, best: float, chance: float, max_mean_cosine: float) -> str:
    """Why training has collapsed, or "" if it has not.

    Two signs: the embeddings bunch into one direction (mean pairwise cosine near 1), or val MAP@R falls back to
    the chance level after having clearly beaten it (the failure mode of memory + KoLeo at a high learning rate).
    """
    if score.mean_cosine > max_mean_cosine:
        return f"embeddings collapsed: mean pairwise cosine {score.mean_cosine:.3f} > {max_mean_cosine}"
    margin = 0.02
    if best > chance + 2 * margin and score.map_at_r < chance + margin / 2:
        return f"val MAP@R fell to chance ({score.map_at_r:.4f}, chance {chance:.4f}, best was {best:.4f})"
    return ""

"""Data sets for benchmarks/store_scale.py: vectors shaped like real embeddings, and the hard synthetic case.

- `real`: the model's embeddings of the 6,235 cxr-public images (a trained checkpoint when given, else a
  random-init vit-tiny at 128 px, said so in the results), grown to N points on the data's own manifold: a new
  point lies between an image and one of its 10 nearest images (uniform mix), plus isotropic noise of a quarter
  of the median nearest-image distance. Each point carries its parent image's label, source, view, sex and age.
- `hard`: 64 Gaussian clusters on the sphere with noise as large as the centres (sigma 1), the worst case;
  payloads drawn from the same real joint distribution of label and source, independent of the vectors, so a
  filter never follows the clusters.

Payloads are the project's own (services.index.build_payload) plus per-point DICOM UIDs, content hash and an
opaque source reference, as the receiver would store them.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.index import build_payload
from services.manifest import ManifestRow, read_manifest

LABELS = ("normal", "pneumonia_bacterial", "pneumonia_viral", "covid19")
# Neither field alone is selective (15% of the sources, 24% of the labels); together 5% of cxr-public.
SELECTIVE = {"source": "ozanguldali/final-covid-chestxray", "label": "pneumonia_viral"}


@dataclass
class Parents:
    """The real images: their embeddings, manifest rows and one payload template each."""

    vectors: np.ndarray
    rows: list[ManifestRow]
    templates: list[dict[str, Any]]
    model_note: str
    labels: np.ndarray  # per parent, for masks
    sources: np.ndarray


def _encoder(model: Path | None):  # noqa: ANN202 - torch types stay out of the module's import
    from services.embedding import BatchEncoder, create_encoder

    if model is not None:
        return BatchEncoder.from_checkpoint(model, batch_size=64), f"checkpoint {model}"
    enc = create_encoder("vit-tiny", image_size=128, seed=0)
    note = "random-init vit-tiny at 128 px (seed 0): no trained checkpoint was given"
    return BatchEncoder(enc, batch_size=64, model_id="random-vit-tiny-128-seed0"), note


def embed_public(manifest: Path, model: Path | None, cache: Path) -> Parents:
    """Embed every image of the manifest once (cached as .npy beside a note of the model)."""
    rows = read_manifest(manifest)
    tag = hashlib.sha256(f"{manifest.resolve()}|{model}".encode()).hexdigest()[:12]
    npy, note_file = cache / f"emb-{tag}.npy", cache / f"emb-{tag}.txt"
    if npy.exists() and note_file.exists():
        vectors, note = np.load(npy), note_file.read_text()
    else:
        import torch

        from services.imaging import decode_image, to_model_input

        torch.set_num_threads(1)
        encoder, note = _encoder(model)
        t0, chunks = time.perf_counter(), []
        for start in range(0, len(rows), 256):
            batch = rows[start : start + 256]
            chunks.append(
                encoder.encode(
                    np.stack([to_model_input(decode_image(r.path).pixels, encoder.image_size) for r in batch])
                )
            )
        vectors = np.concatenate(chunks).astype(np.float32)
        note += f"; embedded {len(rows)} images in {time.perf_counter() - t0:.0f} s"
        cache.mkdir(parents=True, exist_ok=True)
        np.save(npy, vectors)
        note_file.write_text(note)
    templates = [
        build_payload(label=r.label, source_ref=None, model_id="bench-model", salt=b"bench-salt", row=r) for r in rows
    ]
    labels = np.array([r.label for r in rows])
    sources = np.array([r.source or "" for r in rows])
    return Parents(vectors, rows, templates, f"{note}; {spread(vectors)}", labels, sources)


def spread(vectors: np.ndarray) -> str:
    """How spread the embeddings are: mean pairwise cosine and the principal components holding 90%/99% of the
    variance (few components: an easy space for HNSW)."""
    e = _unit(vectors)
    n = len(e)
    mean_cos = (float((e @ e.T).sum()) - n) / (n * n - n)
    var = np.linalg.svd(e - e.mean(0), compute_uv=False) ** 2
    cum = np.cumsum(var / var.sum())
    dims = [int(np.searchsorted(cum, q)) + 1 for q in (0.9, 0.99)]
    return f"mean pairwise cosine {mean_cos:.2f}, {dims[0]}/{dims[1]} principal components hold 90%/99% of the variance"


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class RealLike:
    """New points between real embeddings and their nearest neighbours (see the module docstring)."""

    def __init__(self, parents: Parents) -> None:
        e = _unit(parents.vectors)
        sims = e @ e.T
        np.fill_diagonal(sims, -2)
        self.neighbours = np.argsort(-sims, axis=1)[:, :10]
        nn_dist = np.sqrt(np.maximum(0.0, 2 - 2 * sims.max(axis=1)))
        self.sigma = 0.25 * float(np.median(nn_dist))
        self.e = e

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        parent = rng.integers(0, len(self.e), n)
        other = self.neighbours[parent, rng.integers(0, 10, n)]
        mix = rng.random((n, 1), dtype=np.float32)
        x = self.e[parent] + mix * (self.e[other] - self.e[parent])
        x += self.sigma * rng.standard_normal(x.shape, dtype=np.float32) / np.sqrt(x.shape[1])
        return _unit(x), parent


class HardMixture:
    """64 Gaussian clusters with heavy noise; payload parents independent of the vectors."""

    def __init__(self, dim: int, n_parents: int, seed: int = 7, clusters: int = 64, noise: float = 1.0) -> None:
        rng = np.random.default_rng(seed)
        self.centres = _unit(rng.standard_normal((clusters, dim)))
        self.noise, self.n_parents = noise, n_parents

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        c = self.centres[rng.integers(0, len(self.centres), n)]
        x = c + self.noise * rng.standard_normal(c.shape, dtype=np.float32) / np.sqrt(c.shape[1])
        return _unit(x), rng.integers(0, self.n_parents, n)


def point_payloads(parents: Parents, parent: np.ndarray, start: int) -> list[dict[str, Any]]:
    """Payloads for points start.. with the given parents: the parent's template plus per-point identity."""
    out = []
    for offset, p in enumerate(parent.tolist()):
        i = start + offset
        digest = hashlib.sha256(i.to_bytes(8, "little")).hexdigest()
        payload = dict(parents.templates[p])
        payload.update(
            content_sha256=digest,
            source_ref=f"file:{digest[:32]}",
            study_uid=f"2.25.{i // 3 + 1}",
            series_uid=f"2.25.{i // 3 + 1}.1",
            sop_uid=f"2.25.{i + 1}.1.1",
            patient_hash=hashlib.sha256(f"{payload.get('patient_hash')}:{i // 6}".encode()).hexdigest()[:32],
        )
        out.append(payload)
    return out

"""Encoder throughput, fp32 against bf16 autocast, and how closely the two agree, on real X-rays.

Agreement is measured where it matters: a trained checkpoint (`--model DIR`, a `cxr train` run) embedding real
radiographs from `--manifest` (a seeded sample). It reports the cosine between each image's fp32 and bf16
embeddings and the overlap of each image's 10 nearest neighbours among the sample. Without `--model` the script
falls back to random-init shapes (vit-tiny and vit-small at 128 and 224 px) on the same real images, and says
so: their speed is representative, their agreement is not evidence about a trained model.
Run from the repository root: `python -m benchmarks.encoder_speed --model runs/tiny128`. Prints a table and
writes benchmarks/results/encoder_speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from services.embedding import BatchEncoder, bf16_supported, create_encoder, load_checkpoint
from services.imaging import decode_image, to_model_input
from services.manifest import ManifestRow, read_manifest

RESULTS = Path(__file__).resolve().parent / "results" / "encoder_speed.json"
TOP_K = 10
UNTRAINED_NOTE = (
    "NOTE: no --model given, so these are random-init weights. Their speed is representative, but fp32/bf16 "
    "agreement on untrained weights says nothing about a trained model's; pass --model DIR (a `cxr train` run)."
)


@dataclass
class Row:
    model: str
    trained: bool
    image_size: int
    batch_size: int
    n_images: int
    fp32_img_s: float
    bf16_img_s: float
    speedup: float
    cosine_mean: float
    cosine_min: float
    top10_overlap: float  # mean share of each image's fp32 top 10 (among the sample) that bf16 also returns


def best_rates(encoders: list[BatchEncoder], batch: np.ndarray, min_seconds: float) -> list[float]:
    """Images/s of each encoder's fastest batch, timing them in turn so they share the same neighbours.

    On shared cores another process can slow a run several-fold; alternating and keeping the best batch
    compares the precisions under the same conditions.
    """
    for encoder in encoders:
        encoder.encode(batch)  # warm-up: oneDNN builds its kernels for this shape
    best = [0.0] * len(encoders)
    spent = 0.0
    while spent < min_seconds * len(encoders) or 0.0 in best:
        for i, encoder in enumerate(encoders):
            start = time.perf_counter()
            encoder.encode(batch)
            took = time.perf_counter() - start
            spent += took
            best[i] = max(best[i], len(batch) / took)
    return best


def sample_rows(manifest: Path, n: int, seed: int = 0) -> list[ManifestRow]:
    """A seeded sample of `n` manifest rows (every class, as the manifest mixes them)."""
    rows = read_manifest(manifest)
    pick = np.sort(np.random.default_rng(seed).choice(len(rows), size=min(n, len(rows)), replace=False))
    return [rows[i] for i in pick]


def real_images(rows: list[ManifestRow], size: int) -> np.ndarray:
    """The rows' radiographs decoded and resized exactly as indexing does."""
    return np.stack([to_model_input(decode_image(r.path).pixels, size) for r in rows])


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int = TOP_K) -> float:
    """Mean share of each item's k nearest neighbours (self excluded) under `a` that `b` also has."""
    k = min(k, len(a) - 1)

    def neighbours(emb: np.ndarray) -> np.ndarray:
        sim = emb @ emb.T
        np.fill_diagonal(sim, -np.inf)
        return np.argsort(-sim, axis=1)[:, :k]

    na, nb = neighbours(a), neighbours(b)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(na.tolist(), nb.tolist(), strict=True)]))


def measure(
    name: str, model: torch.nn.Module, images: np.ndarray, batch_size: int, min_seconds: float, *, trained: bool
) -> Row:
    size = model.config.image_size
    fp32_encoder = BatchEncoder(model, batch_size=batch_size, bf16=False)
    bf16_encoder = BatchEncoder(model, batch_size=batch_size, bf16=True)
    fp32_rate, bf16_rate = best_rates([fp32_encoder, bf16_encoder], images[:batch_size], min_seconds)
    fp32, bf16 = fp32_encoder.encode(images), bf16_encoder.encode(images)
    cosines = (fp32 * bf16).sum(axis=1)  # unit vectors
    return Row(
        model=name,
        trained=trained,
        image_size=size,
        batch_size=batch_size,
        n_images=len(images),
        fp32_img_s=round(fp32_rate, 1),
        bf16_img_s=round(bf16_rate, 1),
        speedup=round(bf16_rate / fp32_rate, 2),
        cosine_mean=float(cosines.mean()),
        cosine_min=float(cosines.min()),
        top10_overlap=top_k_overlap(fp32, bf16),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["vit-tiny", "vit-small"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 224])
    parser.add_argument("--model", type=Path, help="a trained checkpoint folder (without it: random-init shapes)")
    parser.add_argument("--manifest", type=Path, default=Path("../shared/data/cxr-public/manifest.csv"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=256, help="real X-rays embedded in fp32 and bf16")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="time spent per precision and model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    trained = args.model is not None
    if trained:
        runs = [(args.model.name, lambda: load_checkpoint(args.model))]
    else:
        print(UNTRAINED_NOTE, file=sys.stderr)
        runs = [
            (f"{shape} (random init)", lambda s=shape, z=size: create_encoder(s, image_size=z, seed=0).eval())
            for shape in args.shapes
            for size in args.sizes
        ]
    sample = sample_rows(args.manifest, args.images)
    images_at: dict[int, np.ndarray] = {}
    rows = []
    for name, build in runs:
        model = build()
        size = model.config.image_size
        if size not in images_at:
            images_at[size] = real_images(sample, size)
        rows.append(measure(name, model, images_at[size], args.batch_size, args.min_seconds, trained=trained))

    header = (
        f"{'model':<26} {'size':>4} {'fp32 img/s':>10} {'bf16 img/s':>10} {'speedup':>7} {'cos mean':>9} "
        f"{'cos min':>9} {'top10 overlap':>13}"
    )
    print(f"{len(sample)} real X-rays from {args.manifest}, batch {args.batch_size}, {args.threads} threads")
    print(header)
    for r in rows:
        print(
            f"{r.model:<26} {r.image_size:>4} {r.fp32_img_s:>10.1f} {r.bf16_img_s:>10.1f} {r.speedup:>6.2f}x "
            f"{r.cosine_mean:>9.6f} {r.cosine_min:>9.6f} {r.top10_overlap:>13.3f}"
        )
    if not trained:
        print(UNTRAINED_NOTE)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "torch": torch.__version__,
        "threads": args.threads,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_supported": bf16_supported(),
        "machine": platform.machine(),
        "weights": str(args.model) if trained else "random init (no --model): agreement is not evidence",
        "images": {"manifest": str(args.manifest), "n": len(sample), "sample_seed": 0},
        "rows": [asdict(r) for r in rows],
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

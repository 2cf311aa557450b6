"""`cxr train` step time against a plain PyTorch loop of the same model, loss and batch.

The plain loop is forward (bf16 autocast), the same pml contrastive loss, backward, clip, AdamW step, on a batch that
already sits in memory. Ours is the Trainer on real data (sampler, cache lookup, augmentation, logging included).
Both run alternately in one process so they share the machine's noise; medians of the per-step times are compared.
Run `python -m benchmarks.train_step_overhead`; prints a table and writes benchmarks/results/train_step_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from services.embedding import bf16_supported, create_encoder
from services.training.augment import AugmentConfig, augment
from services.training.config import TrainConfig
from services.training.loop import Trainer
from services.training.losses import LossConfig, RetrievalLoss

RESULTS = Path(__file__).resolve().parent / "results" / "train_step_overhead.json"


def plain_steps(
    shape: str, size: int, batch: int, steps: int, bf16: bool, *, with_augment: bool = False
) -> list[float]:
    model = create_encoder(shape, image_size=size, seed=0)
    loss_fn = RetrievalLoss(LossConfig(), model.config.embed_dim)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 1, size, size)
    y = torch.arange(batch) % 4
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        inputs = augment(x, AugmentConfig(), gen) if with_augment else x
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            emb = model(inputs)
        loss, _ = loss_fn(emb.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    return times[2:]  # drop warm-up


def ours_steps(manifest: Path, shape: str, size: int, batch: int, steps: int, cache: Path) -> list[float]:
    times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            manifest=manifest,
            out_dir=Path(tmp) / "run",
            shape=shape,
            image_size=size,
            batch_size=batch,
            steps=steps,
            val_every=10**9,
            ckpt_every=10**9,
            cache_dir=cache,
        )
        Trainer(cfg, on_step=lambda s, rec: times.append(rec["step_s"])).run()
    return times[2:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--manifest", type=Path, default=Path("../shared/data/cxr-public/manifest.csv"))
    p.add_argument("--model", default="vit-tiny")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bf16 = bf16_supported()
    plain: list[float] = []
    plain_aug: list[float] = []
    ours: list[float] = []
    with tempfile.TemporaryDirectory() as cache:
        for _ in range(args.rounds):
            plain += plain_steps(args.model, args.image_size, args.batch_size, args.steps, bf16)
            plain_aug += plain_steps(args.model, args.image_size, args.batch_size, args.steps, bf16, with_augment=True)
            ours += ours_steps(args.manifest, args.model, args.image_size, args.batch_size, args.steps, Path(cache))
    p_med, a_med, o_med = statistics.median(plain), statistics.median(plain_aug), statistics.median(ours)
    print(f"{args.model} @ {args.image_size} px, batch {args.batch_size}, {args.threads} threads, bf16={bf16}")
    print(f"{'loop':28} {'median s/step':>14} {'ratio':>7}")
    print(f"{'plain PyTorch':28} {p_med:14.3f} {1.0:7.2f}")
    print(f"{'plain + same augmentation':28} {a_med:14.3f} {a_med / p_med:7.2f}")
    print(f"{'cxr train (Trainer)':28} {o_med:14.3f} {o_med / p_med:7.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                **vars(args),
                "manifest": str(args.manifest),
                "bf16": bf16,
                "plain_median_s": p_med,
                "ours_median_s": o_med,
                "ratio": o_med / p_med,
                "plain_steps": plain,
                "ours_steps": ours,
            },
            indent=2,
        )
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

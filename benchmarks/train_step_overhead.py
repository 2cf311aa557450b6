"""`cxr train` step time against a plain PyTorch loop of the same model, loss and batch.

The plain loop is forward (bf16 autocast), the same pml contrastive loss, backward, clip, AdamW step, on a batch that
already sits in memory (with and without the same augmentation). Ours is the Trainer on real data, timed from
outside: the wall time between successive `on_step` callbacks, so every part of a loop iteration counts (the
sampler, the cache gather, augmentation, the step, the JSON log line every 10 steps and the callback itself).
The Trainer's own `step_s` (from drawing the batch to the end of the optimiser step) is recorded beside it.
Validation and checkpoints are switched off in both. The loops alternate in one process so they share the
machine's noise; medians of the per-step times are compared, and every step of every row goes to the JSON.
Run `python -m benchmarks.train_step_overhead`; prints a table and writes benchmarks/results/train_step_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
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
WARMUP = 2  # steps dropped from every run (first oneDNN kernels, allocator)


def plain_steps(
    shape: str, size: int, batch: int, steps: int, bf16: bool, *, with_augment: bool = False
) -> list[float]:
    """Per-step seconds of the plain loop, warm-up dropped."""
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
    return times[WARMUP:]


def ours_steps(
    manifest: Path, shape: str, size: int, batch: int, steps: int, cache: Path
) -> tuple[list[float], list[float]]:
    """(callback-to-callback seconds, the Trainer's own step_s) per step of a real Trainer run, warm-up dropped.

    The interval ending at step s covers everything the loop did since step s-1's callback returned, so one
    extra step is run; both lists then cover the same steps as the plain loop's (steps - WARMUP of them)."""
    stamps: list[float] = []
    inner: list[float] = []

    def on_step(step: int, rec: dict) -> None:
        stamps.append(time.perf_counter())
        inner.append(rec["step_s"])

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            manifest=manifest,
            out_dir=Path(tmp) / "run",
            shape=shape,
            image_size=size,
            batch_size=batch,
            steps=steps + 1,
            val_every=10**9,
            ckpt_every=10**9,
            cache_dir=cache,
        )
        Trainer(cfg, on_step=on_step).run()
    intervals = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return intervals[WARMUP:], inner[WARMUP + 1 :]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--manifest", type=Path, default=Path("../shared/data/cxr-public/manifest.csv"))
    p.add_argument("--model", default="vit-tiny")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bf16 = bf16_supported()
    rows: dict[str, list[float]] = {"plain": [], "plain_augment": [], "trainer_loop": [], "trainer_step_s": []}
    rounds = []
    with tempfile.TemporaryDirectory() as cache:
        for r in range(args.rounds):
            plain = plain_steps(args.model, args.image_size, args.batch_size, args.steps, bf16)
            aug = plain_steps(args.model, args.image_size, args.batch_size, args.steps, bf16, with_augment=True)
            loop, inner = ours_steps(
                args.manifest, args.model, args.image_size, args.batch_size, args.steps, Path(cache)
            )
            rows["plain"] += plain
            rows["plain_augment"] += aug
            rows["trainer_loop"] += loop
            rows["trainer_step_s"] += inner
            rounds.append(
                {"round": r, "plain": plain, "plain_augment": aug, "trainer_loop": loop, "trainer_step_s": inner}
            )
    medians = {name: statistics.median(times) for name, times in rows.items()}
    base = medians["plain"]
    titles = {
        "plain": "plain PyTorch",
        "plain_augment": "plain + same augmentation",
        "trainer_loop": "cxr train, whole iteration",
        "trainer_step_s": "cxr train, its own step_s",
    }
    print(f"{args.model} @ {args.image_size} px, batch {args.batch_size}, {args.threads} threads, bf16={bf16}")
    print(f"{'loop':30} {'median s/step':>14} {'ratio':>7} {'steps':>6}")
    for name, median in medians.items():
        print(f"{titles[name]:30} {median:14.3f} {median / base:7.2f} {len(rows[name]):6d}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "bf16": bf16,
        "load_average_1_5_15": list(os.getloadavg()),  # other processes on the same cores make the medians swing
        "warmup_steps_dropped": WARMUP,
        "definitions": {
            "trainer_loop": "wall time between successive on_step callbacks: sampler, cache gather, augmentation, "
            "step, logging and the callback",
            "trainer_step_s": "the Trainer's step_s: from drawing the batch to the end of the optimiser step",
        },
        "median_s": medians,
        "ratio_to_plain": {name: m / base for name, m in medians.items()},
        "steps_s": rows,
        "rounds": rounds,
    }
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

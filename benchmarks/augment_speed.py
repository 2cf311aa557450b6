"""Augmentation speed: `augment` on a training batch against the plain-torch reference it replaces.

The reference builds the sampling grid with `F.affine_grid` (the separable grid in `services.training.augment`
exists to be faster). Both run alternately on the same batches and thetas, best and median of `--repeats`.
This replaces a wall-clock threshold in the tests, which flaked on a shared machine. Run
`python -m benchmarks.augment_speed`; prints a table and writes benchmarks/results/augment_speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from services.training.augment import AugmentConfig, _affine_thetas, affine_grid, augment

RESULTS = Path(__file__).resolve().parent / "results" / "augment_speed.json"


def _time(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = AugmentConfig()
    batch = torch.rand(args.batch_size, 1, args.image_size, args.image_size, generator=torch.Generator().manual_seed(0))
    theta = _affine_thetas(args.batch_size, cfg, torch.Generator().manual_seed(1))
    shape = [args.batch_size, 1, args.image_size, args.image_size]
    gen = torch.Generator().manual_seed(2)
    rows = {
        "augment (whole pipeline)": _time(lambda: augment(batch, cfg, gen), args.repeats),
        "separable grid": _time(lambda: affine_grid(theta, args.image_size, args.image_size), args.repeats),
        "F.affine_grid (reference)": _time(lambda: F.affine_grid(theta, shape, align_corners=False), args.repeats),
        "grid_sample": _time(
            lambda: F.grid_sample(batch, affine_grid(theta, args.image_size, args.image_size), align_corners=False),
            args.repeats,
        ),
    }
    print(f"batch {args.batch_size} x 1 x {args.image_size} x {args.image_size}, {args.threads} thread(s)")
    print(f"{'step':28} {'best ms':>9} {'median ms':>10}")
    for name, times in rows.items():
        print(f"{name:28} {min(times) * 1e3:9.2f} {statistics.median(times) * 1e3:10.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "threads": args.threads,
        "repeats": args.repeats,
        "rows": {name: {"best_s": min(t), "median_s": statistics.median(t), "times_s": t} for name, t in rows.items()},
    }
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

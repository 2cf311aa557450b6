"""Encoder throughput of every inference back end against eager fp32 and eager bf16, with their agreement, on real
X-rays and a trained checkpoint.

For each back end in services.embedding.backends: images/s (best batch of alternating rounds, so all back ends
share the machine's load), model-FLOPs utilisation against the CPU's bf16 matmul peak (INFRA-NOTES: ~877
GFLOP/s on 2 threads; `--peak-gflops`), and agreement with eager fp32: per-image cosine, overlap of each query's
top 10 in a labelled gallery, and full mAP / MAP@R / P@10 of those rankings (must match to 3 decimals).
A back end "agrees" when cosine >= 0.999, top-10 overlap >= 0.95 and the metrics match.

Run from the repository root: `python -m benchmarks.encoder_speed --model runs/hybrid128`. Without `--model` a
random-init vit-tiny is used and the script says so: its speed is representative, its agreement is not evidence.
Prints a table and writes benchmarks/results/encoder_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from services.embedding import create_encoder, load_checkpoint
from services.embedding.backends import BACKENDS, make_runner
from services.evaluation.metrics import average_precision, map_at_r, precision_at_k, relevance_from_labels
from services.imaging import decode_image, to_model_input
from services.manifest import ManifestRow, read_manifest

RESULTS = Path(__file__).resolve().parent / "results" / "encoder_speed.json"
TOP_K = 10


@dataclass
class Row:
    backend: str
    img_s: float
    vs_eager_bf16: float
    mfu: float  # achieved model FLOP/s over the bf16 matmul peak
    setup_s: float
    cosine_min: float
    top10_overlap: float
    full_map: float
    map_at_r: float
    p_at_10: float
    agrees: bool
    error: str = ""


def sample_rows(manifest: Path, n: int, seed: int = 0) -> list[ManifestRow]:
    rows = [r for r in read_manifest(manifest) if not r.label.startswith("other")]
    pick = np.sort(np.random.default_rng(seed).choice(len(rows), size=min(n, len(rows)), replace=False))
    return [rows[i] for i in pick]


def model_flops(model: torch.nn.Module, size: int) -> float:
    """Forward FLOPs of one image (matmuls and convolutions, as torch counts them)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 1, size, size))
    return float(counter.get_total_flops())


def retrieval(emb: np.ndarray, labels: np.ndarray, n_queries: int) -> tuple[np.ndarray, dict[str, float]]:
    """Rank the gallery (the rest of the sample) for the first `n_queries` images; top-10 ids and metric means."""
    q, g = emb[:n_queries], emb[n_queries:]
    order = np.argsort(-(q @ g.T), axis=1, kind="stable")
    rel = relevance_from_labels(labels[n_queries:][order], labels[:n_queries])
    n_rel = rel.sum(axis=1)
    return order[:, :TOP_K], {
        "full_map": float(average_precision(rel, n_rel).mean()),
        "map_at_r": float(map_at_r(rel, n_rel).mean()),
        "p_at_10": float(precision_at_k(rel, TOP_K).mean()),
    }


def best_rates(runners: dict, batch: np.ndarray, rounds: int) -> dict[str, float]:
    best = dict.fromkeys(runners, 0.0)
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run(batch)
            best[name] = max(best[name], len(batch) / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a trained checkpoint folder (without it: random-init vit-tiny)")
    parser.add_argument("--manifest", type=Path, default=Path("../shared/data/cxr-public/manifest.csv"))
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=600, help="real X-rays: the first --queries query the rest")
    parser.add_argument("--queries", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--peak-gflops", type=float, default=877.0, help="bf16 matmul peak of this CPU")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if args.model is None:
        print("NOTE: no --model: random-init vit-tiny; agreement on untrained weights is not evidence", file=sys.stderr)
        model = create_encoder("vit-tiny", image_size=128, seed=0).eval()
    else:
        model = load_checkpoint(args.model)
    size = model.config.image_size
    rows_in = sample_rows(args.manifest, args.images)
    images = np.stack([to_model_input(decode_image(r.path).pixels, size) for r in rows_in])[:, None]
    labels = np.array([r.label for r in rows_in])
    flops = model_flops(model, size)

    runners, setup, errors = {}, {}, {}
    for name in args.backends:
        t0 = time.perf_counter()
        try:
            runners[name] = make_runner(model, name, threads=args.threads)
            runners[name](images[: args.batch_size])  # warm-up: kernels, compilation
        except Exception as exc:  # noqa: BLE001 - a back end that does not run here is a row, not a crash
            errors[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
            runners.pop(name, None)
        setup[name] = time.perf_counter() - t0
    rates = best_rates(runners, images[: args.batch_size], args.rounds)

    def embed(run) -> np.ndarray:  # noqa: ANN001
        out = np.concatenate([run(images[i : i + args.batch_size]) for i in range(0, len(images), args.batch_size)])
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    ref = embed(runners["eager-fp32"]) if "eager-fp32" in runners else embed(make_runner(model, "eager-fp32"))
    ref_top, ref_metrics = retrieval(ref, labels, args.queries)
    rows = []
    for name in args.backends:
        if name not in runners:
            rows.append(Row(name, 0, 0, 0, round(setup[name], 1), 0, 0, 0, 0, 0, False, errors[name]))
            continue
        emb = embed(runners[name])
        top, metrics = retrieval(emb, labels, args.queries)
        overlap = float(
            np.mean([len(set(a) & set(b)) / TOP_K for a, b in zip(top.tolist(), ref_top.tolist(), strict=True)])
        )
        cos_min = float((emb * ref).sum(axis=1).min())
        same = all(round(metrics[k], 3) == round(ref_metrics[k], 3) for k in metrics)
        rate = rates[name]
        rows.append(
            Row(
                backend=name,
                img_s=round(rate, 1),
                vs_eager_bf16=round(rate / rates["eager-bf16"], 2) if rates.get("eager-bf16") else 0.0,
                mfu=round(rate * flops / (args.peak_gflops * 1e9), 3),
                setup_s=round(setup[name], 1),
                cosine_min=round(cos_min, 6),
                top10_overlap=round(overlap, 3),
                agrees=cos_min >= 0.999 and overlap >= 0.95 and same,
                **{k: round(v, 4) for k, v in metrics.items()},
            )
        )

    name = args.model.name if args.model else "vit-tiny (random init)"
    print(
        f"{name} @ {size} px, {flops / 1e9:.2f} GFLOP/image; {len(images)} real X-rays ({args.queries} queries), "
        f"batch {args.batch_size}, {args.threads} threads, load {os.getloadavg()[0]:.1f}"
    )
    print(f"{'backend':<14} {'img/s':>7} {'x bf16':>6} {'MFU':>6} {'setup s':>7} {'cos min':>9} {'top10':>6} "
          f"{'fullmAP':>7} {'MAP@R':>6} {'P@10':>6} agrees")  # fmt: skip
    for r in rows:
        print(
            f"{r.backend:<14} {r.img_s:>7.1f} {r.vs_eager_bf16:>6.2f} {r.mfu:>6.3f} {r.setup_s:>7.1f} "
            f"{r.cosine_min:>9.6f} {r.top10_overlap:>6.3f} {r.full_map:>7.4f} {r.map_at_r:>6.4f} {r.p_at_10:>6.4f} "
            f"{'yes' if r.agrees else 'NO'} {r.error}"
        )
    agreeing = [r for r in rows if r.agrees]
    fastest = max(agreeing, key=lambda r: r.img_s) if agreeing else None
    if fastest:
        print(f"fastest that agrees: {fastest.backend} ({fastest.vs_eager_bf16:.2f}x eager bf16)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "model": str(args.model) if args.model else "random init vit-tiny (agreement is not evidence)",
        "image_size": size,
        "gflop_per_image": flops / 1e9,
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": platform.machine(),
        "load_avg": os.getloadavg()[0],
        "peak_gflops": args.peak_gflops,
        "reference_metrics": ref_metrics,
        "fastest_agreeing": fastest.backend if fastest else None,
        "rows": [asdict(r) for r in rows],
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

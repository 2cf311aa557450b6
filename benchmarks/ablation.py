"""Retrieval-quality ablation: what each part of the training recipe buys, on one split, one backbone, one budget.

Rows: (1) raw pixels, (2) frozen ImageNet EfficientNet-Lite0 features (224 px, no training), (3) random-init
ViT, (4) cross-entropy on CLS features, (5) contrastive without memory, (6) plus a cross-batch memory, (7) plus
KoLeo 0.3 (the paper's full recipe). Every trained row uses the same split file, backbone, image size, step budget
and seed; each trains at its recipe's learning rate (the one it was validated at, `services.training.recipes`)
unless --lr sets one for all; the table prints each row's own rate and the JSON each row's full training config.
A finished run in OUT/<row> is reused only when its recorded recipe, learning rate, steps, shape, size, batch, seed
and split match the current arguments; otherwise the script stops and names the difference.

Every row is scored by `services.evaluation.scoring.score_retrieval`, the function `cxr eval` uses: queries
against the train gallery, exact cosine ranking, the query's own patient excluded; embeddings are computed in
memory, not read back from a vector store. The queries are the VALIDATION split (`--score-on val`, the default):
a recipe is chosen on validation, and only the chosen one is scored on test (`benchmarks.headline`).
`--score-on test` reproduces older tables, which were scored on test, and the output says so.

Classes with fewer than --min-class-images train images (cxr-public's other_* labels) are left out of both
queries and gallery, as the trainer leaves them out of training, so the table reads "4-class" and, with the
pneumonia merge, "3-class".

    python -m benchmarks.ablation --manifest data/cxr-public/manifest.csv --model vit-small --image-size 128 \\
        --steps 2000 --out runs/ablation
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.config import Settings
from services.embedding import bf16_supported, create_encoder, load_checkpoint
from services.evaluation.baselines import RAW_PIXEL_SIZE, chance_summary, raw_pixel_embeddings
from services.evaluation.imagenet import ImagenetBaseline
from services.evaluation.report import shape_summary
from services.evaluation.scoring import score_retrieval
from services.evaluation.types import RetrievalSet
from services.manifest import ManifestRow, file_sha256, read_manifests, source_of
from services.splits import load_or_make_split, merge_labels, split_rows
from services.training.config import TrainConfig
from services.training.data import ImageCache, load_image_cache
from services.training.loop import Trainer
from services.training.losses import LossConfig
from services.training.recipes import RECIPES
from services.training.validation import embed_images

ROW_NAMES = ("raw", "imagenet", "random", "ce", "contrastive", "xbm", "koleo")
TITLES = {
    "raw": f"raw pixels ({RAW_PIXEL_SIZE}x{RAW_PIXEL_SIZE}, L2)",
    "imagenet": "frozen ImageNet Lite0 (224 px)",
    "random": "random-init ViT",
    "ce": "cross-entropy (CLS)",
    "contrastive": "contrastive, no memory",
    "xbm": "+ cross-batch memory",
    "koleo": "+ KoLeo 0.3 (paper recipe)",
}
HEADLINE = (("map", "full mAP"), ("map_at_r", "MAP@R"), ("r_precision", "R-Prec"), ("1", "P@1"), ("10", "P@10"))
KS = (1, 5, 10)
COLLAPSE_COSINE = 0.95
RECIPE_OF = {"ce": "crossentropy", "contrastive": "contrastive", "xbm": "xbm", "koleo": "paper"}


@dataclass(frozen=True)
class Data:
    """The split's train (gallery) and test (query) images, decoded once, with their scoring metadata."""

    train: ImageCache
    test: ImageCache
    train_raw: np.ndarray
    test_raw: np.ndarray
    train_meta: tuple[np.ndarray, np.ndarray]  # (groups, sources)
    test_meta: tuple[np.ndarray, np.ndarray]
    train_rows: list[ManifestRow]  # in the order of `train`
    test_rows: list[ManifestRow]


def losses(memory_size: int) -> dict[str, LossConfig]:
    return {
        "ce": LossConfig(kind="crossentropy"),
        "contrastive": LossConfig(kind="contrastive", memory_size=0, koleo_weight=0.0),
        "xbm": LossConfig(kind="contrastive", memory_size=memory_size, koleo_weight=0.0),
        "koleo": LossConfig(kind="contrastive", memory_size=memory_size, koleo_weight=0.3),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", type=Path, action="append", required=True, help="repeatable: the union is split")
    p.add_argument("--score-on", choices=("val", "test"), default="val", help="queries: validation (default) or test")
    p.add_argument("--model", choices=("vit-tiny", "vit-small"), default="vit-small")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=None, help="one rate for every row (default: each recipe's own)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--memory-size", type=int, default=4096)
    p.add_argument("--warmup-steps", type=int, default=None, help="default min(100, steps // 10)")
    p.add_argument("--merge", default="pneumonia_bacterial,pneumonia_viral=pneumonia", help="'' to skip")
    p.add_argument("--min-class-images", type=int, default=20)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--only", default=",".join(ROW_NAMES), help=f"comma list of: {','.join(ROW_NAMES)}")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.only) - set(ROW_NAMES))
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {','.join(ROW_NAMES)}")
    return args


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prepare(args: argparse.Namespace) -> tuple[Path, Data]:
    """Write (or reuse) out/split.json and decode the train images and the scored queries (val, or test with
    --score-on test) at model size and 32 px."""
    manifests = read_manifests(args.manifest)
    rows, root = manifests.rows, manifests.root
    split_path = args.out / "split.json"
    split, made = load_or_make_split(split_path, manifests, seed=args.seed)  # refuses another manifest's split
    say(f"wrote split {split_path}" if made else f"reusing split {split_path}")
    parts = split_rows(rows, split, root)
    counts = Counter(row.label for row in parts["train"])
    keep = {label for label, n in counts.items() if n >= args.min_class_images}
    dropped = sorted(set(counts) - keep)
    if dropped:
        say(f"leaving out classes with < {args.min_class_images} train images: {', '.join(dropped)}")
    train_rows = [r for r in parts["train"] if r.label in keep]
    test_rows = [r for r in parts[args.score_on] if r.label in keep]
    workers, cache = args.threads or 2, args.out / "cache"
    say(f"decoding {len(train_rows)} train and {len(test_rows)} {args.score_on} images")
    train = load_image_cache(train_rows, args.image_size, workers=workers, cache_dir=cache)
    test = load_image_cache(test_rows, args.image_size, workers=workers, cache_dir=cache)
    train_raw = load_image_cache(train_rows, RAW_PIXEL_SIZE, workers=workers, cache_dir=cache)
    test_raw = load_image_cache(test_rows, RAW_PIXEL_SIZE, workers=workers, cache_dir=cache)
    if train.paths != train_raw.paths or test.paths != test_raw.paths:
        raise SystemExit("an image decoded at one size but not the other; check the skipped files above")
    by_path = {str(r.path): r for r in rows}
    data = Data(
        train,
        test,
        train_raw.images.astype(np.float32) / 255.0,
        test_raw.images.astype(np.float32) / 255.0,
        _meta([by_path[p] for p in train.paths]),
        _meta([by_path[p] for p in test.paths]),
        [by_path[p] for p in train.paths],
        [by_path[p] for p in test.paths],
    )
    return split_path, data


def _meta(rows: list[ManifestRow]) -> tuple[np.ndarray, np.ndarray]:
    groups = [r.patient_id or f"\0image:{r.path}" for r in rows]  # raw ids stay in memory, never written
    sources = [source_of(r.origin_dataset, r.source) for r in rows]
    return np.array(groups), np.array(sources)


def row_lr(name: str, args: argparse.Namespace) -> float:
    """The learning rate a trained row runs at: --lr when given, else its recipe's validated rate."""
    return RECIPES[RECIPE_OF[name]].lr if args.lr is None else args.lr


def train_config(name: str, args: argparse.Namespace, split_path: Path) -> TrainConfig:
    """The TrainConfig of one trained row under the current arguments."""
    return TrainConfig(
        manifest=args.manifest,
        out_dir=args.out / name,
        split_file=split_path,
        shape=args.model,
        image_size=args.image_size,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=row_lr(name, args),
        warmup_steps=min(100, args.steps // 10) if args.warmup_steps is None else args.warmup_steps,
        loss=losses(args.memory_size)[name],
        seed=args.seed,
        min_class_images=args.min_class_images,
        cache_dir=args.out / "cache",
        workers=args.threads or 2,
    )


REUSE_KEYS = ("loss", "lr", "steps", "shape", "image_size", "batch_size", "seed", "warmup_steps", "min_class_images")


def reuse_mismatches(run_dir: Path, cfg: TrainConfig, split_sha: str) -> list[str]:
    """What differs between a finished run's recorded recipe (its config.json) and the current arguments."""
    try:
        recipe = json.loads((run_dir / "config.json").read_text())["encoder"]["recipe"]
    except (OSError, ValueError, KeyError) as exc:
        return [f"its config.json cannot be read ({exc})"]
    wanted = {**cfg.recipe(), "split_sha256": split_sha}
    out = []
    for key in (*REUSE_KEYS, "split_sha256"):
        if recipe.get(key) != wanted.get(key):
            out.append(f"{key}: run has {recipe.get(key)!r}, current arguments give {wanted.get(key)!r}")
    return out


def embed_row(name: str, args: argparse.Namespace, split_path: Path, data: Data) -> tuple[np.ndarray, np.ndarray, dict]:
    """(train emb, test emb, training record) for one ablation row; trains it first when needed."""
    if name == "raw":
        return raw_pixel_embeddings(data.train_raw), raw_pixel_embeddings(data.test_raw), {"status": "-"}
    if name == "imagenet":
        settings = Settings(decode_workers=args.threads or 2)
        lite, why = ImagenetBaseline.load(settings, batch_size=args.batch_size)
        if lite is None:
            raise SystemExit(f"imagenet: {why}")
        return lite.embed(data.train_rows, settings), lite.embed(data.test_rows, settings), {"status": "-"}
    bf16 = bf16_supported()
    if name == "random":
        model = create_encoder(args.model, image_size=args.image_size, seed=args.seed)
        record: dict = {"status": "-"}
    else:
        run_dir = args.out / name
        result_file = run_dir / "ablation_result.json"
        cfg = train_config(name, args, split_path)
        if result_file.exists():
            wrong = reuse_mismatches(run_dir, cfg, file_sha256(split_path))
            if wrong:
                raise SystemExit(
                    f"{name}: the finished run in {run_dir} does not match the current arguments: "
                    + "; ".join(wrong)
                    + f". Delete {run_dir} to retrain it, or pass another --out."
                )
            say(f"{name}: reusing the finished run in {run_dir} (recipe, lr, steps and split match)")
            record = json.loads(result_file.read_text())
        else:
            result = Trainer(cfg, on_event=lambda msg: say(f"{name}: {msg}")).run()
            record = {
                "config": cfg.recipe(),
                "lr": cfg.lr,
                "status": result.status,
                "steps": result.steps,
                "train_minutes": result.elapsed_s / 60,
                "best_val_map_at_r": result.best_val_map_at_r,
                "best_step": result.best_step,
                "message": result.message,
            }
            result_file.write_text(json.dumps(record, indent=1))
        model = load_checkpoint(run_dir)
    train_emb = embed_images(model, data.train.images, bf16=bf16)
    test_emb = embed_images(model, data.test.images, bf16=bf16)
    return train_emb, test_emb, record


def mean_cosine(emb: np.ndarray) -> float:
    """Mean pairwise cosine of unit embeddings, without the diagonal: near 1 means collapse."""
    n = len(emb)
    total = emb.sum(axis=0)
    return float((total @ total - n) / max(n * (n - 1), 1))


def score_row(train_emb: np.ndarray, test_emb: np.ndarray, data: Data, variants: dict, args: argparse.Namespace):
    """Shaped summaries per label variant, plus the chance summaries (label-only, the same for every row)."""
    out, chance = {}, {}
    for variant, merges in variants.items():
        gallery = RetrievalSet(train_emb, np.array(data.train.labels), *data.train_meta, tuple(data.train.paths))
        query = RetrievalSet(test_emb, np.array(data.test.labels), *data.test_meta, tuple(data.test.paths))
        query, gallery = query.relabelled(merges), gallery.relabelled(merges)
        scored = score_retrieval(query, gallery, ks=KS, n_boot=args.n_boot, seed=args.seed)
        out[variant] = {**shape_summary(scored.summary, KS), "audit": scored.audit["overall"]}
        summary = chance_summary(scored, query.labels, ks=KS, n_boot=args.n_boot, seed=args.seed)
        chance[variant] = shape_summary(summary, KS)
    return out, chance


def _cell(block: dict, key: str) -> float:
    return block["precision_at_k"][key]["mean"] if key.isdigit() else block[key]["mean"]


def render(results: list[dict], chance: dict, variants: list[str], args: argparse.Namespace) -> str:
    """The markdown table: one row per method, headline metrics per label variant, time and collapse."""
    header = ["method"] + [f"{v} {name}" for v in variants for _, name in HEADLINE]
    header += ["lr", "train min", "status", "mean cos"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for res in results:
        cells = [f"{_cell(res['metrics'][v], key):.3f}" for v in variants for key, _ in HEADLINE]
        minutes = res["training"].get("train_minutes")
        status = res["training"]["status"]
        if res["name"] not in ("raw", "imagenet") and res["mean_cosine"] > COLLAPSE_COSINE:  # all-positive features
            status += " (collapsed)"
        lr = res["training"].get("lr")
        extra = [f"{lr:g}" if lr is not None else "-", f"{minutes:.1f}" if minutes is not None else "-"]
        extra += [status, f"{res['mean_cosine']:.3f}"]
        lines.append("| " + " | ".join([res["title"], *cells, *extra]) + " |")
    cells = [f"{_cell(chance[v], key):.3f}" for v in variants for key, _ in HEADLINE]
    lines.append("| " + " | ".join(["chance", *cells, "-", "-", "-", "-"]) + " |")
    rates = "lr " + (f"{args.lr:g} for every row" if args.lr is not None else "per row (each recipe's own)")
    head = (
        f"# Ablation: {args.model}, {args.image_size} px, {args.steps} steps, batch {args.batch_size}, {rates}\n\n"
        f"Micro means over {args.score_on} queries against the train gallery (own patient excluded); full mAP "
        "divides by R, "
        "not by the hits. 95% CIs are in ablation.json.\n\n"
    )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    split_path, data = prepare(args)
    n_classes = len(set(data.test.labels) | set(data.train.labels))
    variants = {f"{n_classes}-class": ()}
    if args.merge:
        n_merged = len(set(merge_labels([*data.train.labels, *data.test.labels], (args.merge,))))
        variants[f"{n_merged}-class"] = (args.merge,)
    results, chance = [], {}
    for name in args.only:
        t0 = time.perf_counter()
        train_emb, test_emb, record = embed_row(name, args, split_path, data)
        metrics, chance = score_row(train_emb, test_emb, data, variants, args)
        res = {
            "name": name,
            "title": TITLES[name],
            "training": record,
            "mean_cosine": mean_cosine(test_emb),
            "metrics": metrics,
            "seconds": time.perf_counter() - t0,
        }
        results.append(res)
        first = next(iter(variants))
        say(f"{name}: {first} full mAP {metrics[first]['map']['mean']:.3f} ({res['seconds']:.0f} s)")
    table = render(results, chance, list(variants), args)
    doc = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "split": {"file": str(split_path), "sha256": file_sha256(split_path)},
        "n_gallery": len(data.train.paths),
        "n_queries": len(data.test.paths),
        "scored_on": args.score_on,
        "variants": {k: list(v) for k, v in variants.items()},
        "chance": chance,
        "rows": results,
    }
    (args.out / "ablation.json").write_text(json.dumps(doc, indent=1, default=float) + "\n")
    (args.out / "ablation.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

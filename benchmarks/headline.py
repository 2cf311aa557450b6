"""The README's headline table, remade by one command: train the default recipe (unless a run exists), evaluate it
4-class and 3-class in-split, and optionally a `--holdout-source` run, then print the table and save JSON.

    python -m benchmarks.headline --manifest ../shared/data/cxr-public/manifest.csv --minutes 45

Each step is the user-facing command (`cxr train`, `cxr eval`), run as a subprocess, so the table is exactly what
a user gets. Existing runs and reports under --runs are reused; delete them to start over.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "headline.json"
THREE_CLASS = "pneumonia_bacterial,pneumonia_viral=pneumonia"
ROWS = (
    ("model", None),
    ("raw pixels", "raw_pixels"),
    ("frozen ImageNet Lite0", "imagenet_lite0"),
    ("chance", "chance"),
)


def cxr(*args: str) -> None:
    cmd = [sys.executable, "-m", "cli.main", *args]
    print("$ cxr " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def train(run: Path, args: argparse.Namespace, *extra: str) -> None:
    if (run / "config.json").exists():
        print(f"reusing the trained run {run}")
        return
    cxr("train", "--manifest", str(args.manifest), "--model", args.model, "--image-size", str(args.image_size),
        "--max-minutes", str(args.minutes), "--threads", str(args.threads), "--out", str(run), *extra)  # fmt: skip


def evaluate(run: Path, out: Path, args: argparse.Namespace, *extra: str) -> dict:
    if not (out / "report.json").exists():
        cxr("eval", "--model", str(run), "--manifest", str(args.manifest), "--out", str(out), *extra)
    return json.loads((out / "report.json").read_text())


def block(report: dict, key: str | None) -> dict:
    if key is None:
        return report
    return report["chance"] if key == "chance" else report["baselines"].get(key, {})


def summary(report: dict) -> dict:
    out = {}
    for name, key in ROWS:
        b = block(report, key)
        if not b:
            continue
        m = b["map"]
        out[name] = {
            "full_map": m["mean"],
            "ci": [m.get("ci_low"), m.get("ci_high")],
            "macro_full_map": m.get("macro", {}).get("mean"),
            "map_at_r": b["map_at_r"]["mean"],
            "p_at_1": b["precision_at_k"]["1"]["mean"],
            "per_class_full_map": {c: v["map"]["mean"] for c, v in b.get("per_class", {}).items()},
        }
    out["macro_classes"] = report.get("macro", {}).get("classes")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", type=Path, default=Path("../shared/data/cxr-public/manifest.csv"))
    p.add_argument("--runs", type=Path, default=Path("runs/headline"))
    p.add_argument("--model", default="hybrid-lite0", help="shape of the default recipe")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--minutes", type=float, default=45.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--holdout-source", default="Hannover", help="also train and evaluate with this source held out")
    p.add_argument("--no-holdout", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()

    run = args.runs / "in-source"
    train(run, args)
    results = {
        "4-class": summary(evaluate(run, args.runs / "report-4class", args)),
        "3-class": summary(evaluate(run, args.runs / "report-3class", args, "--merge", THREE_CLASS)),
    }
    if not args.no_holdout:
        held = args.runs / f"holdout-{args.holdout_source}"
        train(held, args, "--holdout-source", args.holdout_source)
        report = evaluate(held, args.runs / "report-holdout", args)
        results[f"4-class, {args.holdout_source} held out"] = summary(report)

    print("\n| | full mAP [95% CI] | macro full mAP | MAP@R | P@1 |\n|---|---|---|---|---|")
    for setting, rows in results.items():
        for name, r in rows.items():
            if name == "macro_classes":
                continue
            ci = f" [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]" if name == "model" and r["ci"][0] is not None else ""
            macro = f"{r['macro_full_map']:.3f}" if r["macro_full_map"] is not None else "-"
            print(f"| {setting} {name} | {r['full_map']:.3f}{ci} | {macro} | {r['map_at_r']:.3f} | {r['p_at_1']:.3f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

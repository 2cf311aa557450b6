"""The README's Results, remade by one command: train the candidate recipes on the joined manifests, choose the
default on validation MAP@R, evaluate only the chosen run on the test split, and save JSON.

    python -m benchmarks.headline

Candidates (each `cxr train`, one thread, same patient-level split of the union, same seed):
- the default recipe (hybrid-lite0, 128 px, 45 min) with the label-and-source balanced sampler, and the same with
  the label-only sampler (the sampler ablation);
- with the sampler validation picked: 60 and 90 minutes, and the Lite1 stem at 45 minutes.

Every candidate is a validation row (best val MAP@R from its training log, with its full recipe). The candidate
with the best val MAP@R is the default; only it is scored on the test split (`cxr eval`): all labels, the
pneumonia labels merged, and cxr-public's own queries (4-class and 3-class, against the union's gallery), then
the targets of issue 17 are checked on its rankings. Each step is the user-facing command, run as a subprocess.
Existing runs and reports under --runs are reused; delete them to start over. `--candidates` trains only some
(the others are listed as not run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.headline_targets import check_targets

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
MANIFESTS = (DATA / "cxr-public" / "manifest.csv", DATA / "cxr-adult" / "manifest.csv")
RESULTS = Path(__file__).resolve().parent / "results" / "headline.json"
PNEUMONIA = "pneumonia_bacterial,pneumonia_viral,lung_opacity=pneumonia"
THREE_CLASS = "pneumonia_bacterial,pneumonia_viral=pneumonia"
SAMPLERS = ("label_source", "label")
FIRST = {f"lite0-45min-{s}": {"model": "hybrid-lite0", "minutes": 45.0, "sampler": s} for s in SAMPLERS}
LATER = {
    "lite0-60min": ("hybrid-lite0", 60.0),
    "lite0-90min": ("hybrid-lite0", 90.0),
    "lite1-45min": ("hybrid-lite1", 45.0),
}
ROWS = (
    ("model", None),
    ("raw pixels", "raw_pixels"),
    ("frozen ImageNet Lite0", "imagenet_lite0"),
    ("chance", "chance"),
)


def cxr(*args: str) -> None:
    print("$ cxr " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "cli.main", *args], check=True, cwd=REPO)


def manifest_args(args: argparse.Namespace) -> list[str]:
    return [arg for path in args.manifest for arg in ("--manifest", str(path))]


def train(run: Path, spec: dict, args: argparse.Namespace) -> None:
    if (run / "config.json").exists():
        print(f"reusing the trained run {run}")
        return
    cxr("train", *manifest_args(args), "--model", spec["model"], "--image-size", str(args.image_size),
        "--max-minutes", str(spec["minutes"]), "--threads", str(args.threads), "--sampler", spec["sampler"],
        "--out", str(run))  # fmt: skip


def validation_row(run: Path, spec: dict) -> dict:
    """A candidate's validation record: best val MAP@R and step from its log, its steps, and its full recipe."""
    if not (run / "config.json").exists():
        return {**spec, "status": "not run"}
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines() if line.strip()]
    vals = [r for r in log if "val_map_at_r" in r]
    best = max(vals, key=lambda r: r["val_map_at_r"])
    steps = [r for r in log if "loss" in r]
    recipe = json.loads((run / "config.json").read_text())["encoder"]["recipe"]
    return {
        **spec,
        "status": "trained",
        "run": run.name,
        "best_val_map_at_r": best["val_map_at_r"],
        "best_step": best["step"],
        "steps": max(r["step"] for r in log),
        "train_minutes": round(steps[-1]["elapsed_s"] / 60, 1) if steps else 0.0,
        "mean_step_s": round(sum(r["step_s"] for r in steps) / max(len(steps), 1), 3),
        "recipe": recipe,
    }


def evaluate(run: Path, out: Path, args: argparse.Namespace, *extra: str) -> dict:
    if not (out / "report.json").exists():
        cxr("eval", "--model", str(run), *manifest_args(args), "--out", str(out), *extra)
    return json.loads((out / "report.json").read_text())


def block(report: dict, key: str | None) -> dict:
    if key is None:
        return report
    return report["chance"] if key == "chance" else report["baselines"].get(key, {})


def summary(report: dict) -> dict:
    """The headline numbers of one report: per method, micro/macro full mAP with CIs, MAP@R, P@1, per class."""
    out: dict = {}
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
            "r_precision": b["r_precision"]["mean"],
            "p_at_1": b["precision_at_k"]["1"]["mean"],
            "p_at_10": b["precision_at_k"]["10"]["mean"],
            "per_class": {
                c: {"full_map": v["map"]["mean"], "p_at_1": v["precision_at_k"]["1"]["mean"], "n": v["n_queries"]}
                for c, v in b.get("per_class", {}).items()
            },
            "per_source": b.get("per_source", {}),
        }
    for key in ("per_source", "audit", "merges", "macro", "n_queries", "n_gallery", "bootstrap"):
        if key in report:
            out[key] = report[key]
    return out


def choose(rows: dict[str, dict]) -> str:
    trained = {name: row for name, row in rows.items() if row["status"] == "trained"}
    return max(trained, key=lambda name: trained[name]["best_val_map_at_r"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", type=Path, action="append", help="repeatable; default cxr-public and cxr-adult")
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "headline")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--candidates", default=",".join([*FIRST, *LATER]), help="comma list of candidates to train")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    args.manifest = args.manifest or list(MANIFESTS)
    wanted = {name.strip() for name in args.candidates.split(",") if name.strip()}

    specs: dict[str, dict] = {name: spec for name, spec in FIRST.items()}
    for name in FIRST:
        if name in wanted:
            train(args.runs / name, specs[name], args)
    rows = {name: validation_row(args.runs / name, spec) for name, spec in specs.items()}
    sampler = rows[choose(rows)]["sampler"]
    for name, (model, minutes) in LATER.items():
        specs[name] = {"model": model, "minutes": minutes, "sampler": sampler}
        if name in wanted:
            train(args.runs / name, specs[name], args)
        rows[name] = validation_row(args.runs / name, specs[name])
    chosen = choose(rows)
    run = args.runs / chosen
    print(f"validation picks {chosen} (val MAP@R {rows[chosen]['best_val_map_at_r']:.4f})")

    public = str(args.manifest[0])
    reports = {
        "all labels": evaluate(run, args.runs / "report-all", args),
        "pneumonia merged": evaluate(run, args.runs / "report-merged", args, "--merge", PNEUMONIA),
        "cxr-public queries, 4-class": evaluate(
            run, args.runs / "report-public-4class", args, "--query-manifest", public, "--no-baselines"
        ),
        "cxr-public queries, 3-class": evaluate(
            run,
            args.runs / "report-public-3class",
            args,
            "--query-manifest",
            public,
            "--merge",
            THREE_CLASS,
            "--no-baselines",
        ),  # fmt: skip
    }
    results = {setting: summary(report) for setting, report in reports.items()}
    targets = check_targets(reports, args.runs / "report-all", args.manifest)
    doc = {
        "args": {k: [str(x) for x in v] if isinstance(v, list) else str(v) for k, v in vars(args).items()},
        "chosen": chosen,
        "sampler_chosen_at_45min": sampler,
        "validation": rows,
        "test": results,
        "targets": targets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    from benchmarks.results_tables import headline_tables

    print(headline_tables(doc))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""`cxr eval`: score a checkpoint on the held-out split, honestly (patient-level, same-patient results excluded)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.errors import stderr
from cli.options import CollectionOpt, load_settings
from services.evaluation.job import EvalConfig, run_eval


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(k) for k in text.split(",") if k.strip()}))
    except ValueError:
        raise typer.BadParameter("a comma-separated list of integers, e.g. 1,5,10", param_hint="--k") from None
    if not ks or ks[0] < 1:
        raise typer.BadParameter("values must be >= 1", param_hint="--k")
    return ks


def eval_(
    model: Annotated[Path, typer.Option("--model", "-m", help="Checkpoint folder (a `cxr train` run).")],
    manifest: Annotated[Path, typer.Option("--manifest", help="CSV with path,label,patient_id,...")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder: report.json, report.md, PNGs.")],
    split: Annotated[Path | None, typer.Option("--split", help="Split file (default: MODEL/split.json).")] = None,
    merge: Annotated[
        list[str] | None, typer.Option("--merge", help="Merge labels: a,b=c (repeatable), e.g. 3-class.")
    ] = None,
    k: Annotated[str, typer.Option("--k", help="Cut-offs for P@K, Recall@K, Hit@K.")] = "1,5,10",
    collection: CollectionOpt = None,
    n_boot: Annotated[int, typer.Option("--n-boot", min=100, help="Bootstrap resamples for the 95% CIs.")] = 1000,
    no_baselines: Annotated[bool, typer.Option("--no-baselines", help="Skip the raw-pixel row.")] = False,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Index the train split as the gallery, query with every test image, write the report.

    Example: cxr eval --model runs/vit-s --manifest data/manifest.csv --merge pneumonia_bacterial,pneumonia_viral=pneumonia --out reports/3class
    """
    settings = load_settings()
    cfg = EvalConfig(
        model=model, manifest=manifest, out_dir=out, split_file=split, merges=tuple(merge or ()), ks=_ks(k),
        collection=collection, n_boot=n_boot, seed=seed, baselines=not no_baselines,
    )
    report = run_eval(cfg, settings, on_event=lambda m: stderr.print(m, markup=False))
    ch = report.get("chance", {}).get("map", {})
    typer.echo(
        f"full mAP {report['map']['mean']:.4f} [{report['map']['ci_low']:.4f}, {report['map']['ci_high']:.4f}]"
        f"  MAP@R {report['map_at_r']['mean']:.4f}  R-Precision {report['r_precision']['mean']:.4f}"
        f"  P@1 {report['precision_at_k']['1']['mean']:.4f}" if "1" in report["precision_at_k"] else ""
    )
    if ch:
        typer.echo(f"chance full mAP {ch.get('mean', float('nan')):.4f}")
    typer.echo(f"report: {out / 'report.md'}")

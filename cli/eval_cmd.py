"""`cxr eval`: score a checkpoint on the held-out split, honestly (patient-level, same-patient results excluded)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.errors import stderr
from cli.options import CollectionOpt, load_settings


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

    Example: cxr eval --model runs/vit-s --manifest data/manifest.csv --out reports/4class
    """
    from services.evaluation.job import EvalConfig, run_eval

    settings = load_settings()
    cfg = EvalConfig(
        model=model,
        manifest=manifest,
        out_dir=out,
        split_file=split,
        merges=tuple(merge or ()),
        ks=_ks(k),
        collection=collection,
        n_boot=n_boot,
        seed=seed,
        baselines=not no_baselines,
    )
    report = run_eval(cfg, settings, on_event=lambda m: stderr.print(m, markup=False))
    typer.echo(headline_table(report))
    typer.echo(f"report: {out / 'report.md'}")


def headline_table(report: dict) -> str:
    """The leading numbers (micro means) for the model, the raw-pixel baseline and chance, as plain text."""
    rows = [("model", report), *report.get("baselines", {}).items(), ("chance", report["chance"])]
    ks = list(report["precision_at_k"])
    head = ["full mAP", "MAP@R", "R-Precision", *(f"P@{k}" for k in (ks[0], ks[-1]))]
    lines = [f"{'':12}" + "".join(f"{h:>13}" for h in head)]
    for name, block in rows:
        values = [
            block["map"],
            block["map_at_r"],
            block["r_precision"],
            block["precision_at_k"][ks[0]],
            block["precision_at_k"][ks[-1]],
        ]
        lines.append(f"{name:12}" + "".join(f"{v['mean']:>13.4f}" for v in values))
    return "\n".join(lines)

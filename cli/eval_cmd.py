"""`cxr eval`: score a checkpoint on the held-out split or on another manifest, honestly (patient-level,
same-patient results excluded, leaks counted)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

import typer

from cli.errors import stderr
from cli.options import CollectionOpt, load_settings
from services.governance.audit import record_cli


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
    manifest: Annotated[
        list[Path],
        typer.Option(
            "--manifest",
            help="Gallery CSV (path,label,patient_id,...); in-split also the queries. Repeat to join several.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder: report.json, report.md, PNGs.")],
    split: Annotated[Path | None, typer.Option("--split", help="Split file (default: MODEL/split.json).")] = None,
    queries: Annotated[
        Path | None,
        typer.Option("--queries", help="Another manifest: every row queries the gallery (instead of the test split)."),
    ] = None,
    query_manifest: Annotated[
        list[Path] | None,
        typer.Option("--query-manifest", help="Only test images of this joined --manifest query (repeatable)."),
    ] = None,
    gallery: Annotated[
        str, typer.Option("--gallery", help="Gallery: 'train' (the split's train part) or 'all' (needs --queries).")
    ] = "train",
    exclude_leaks: Annotated[
        bool, typer.Option("--exclude-leaks", help="Drop queries whose file or near-duplicate is in the gallery.")
    ] = False,
    allow_split_mismatch: Annotated[
        bool,
        typer.Option("--allow-split-mismatch", help="Evaluate on a split other than the model's training split."),
    ] = False,
    min_class_queries: Annotated[
        int, typer.Option("--min-class-queries", min=1, help="Macro average over classes with >= N queries.")
    ] = 10,
    merge: Annotated[
        list[str] | None, typer.Option("--merge", help="Merge labels: a,b=c (repeatable), e.g. 3-class.")
    ] = None,
    k: Annotated[str, typer.Option("--k", help="Cut-offs for P@K, Recall@K, Hit@K.")] = "1,5,10",
    collection: CollectionOpt = None,
    n_boot: Annotated[int, typer.Option("--n-boot", min=100, help="Bootstrap resamples for the 95% CIs.")] = 1000,
    no_baselines: Annotated[
        bool, typer.Option("--no-baselines", help="Skip the raw-pixel and frozen ImageNet rows.")
    ] = False,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Index the train split as the gallery, query with every test image (or every row of --queries), report.

    Example: cxr eval --model runs/vit-s --manifest data/manifest.csv --out reports/4class

    External: cxr eval --model runs/vit-s --manifest data/manifest.csv --queries ours.csv --out reports/ours
    """
    from services.evaluation.job import run_eval
    from services.evaluation.types import GALLERIES, EvalConfig

    if gallery not in GALLERIES:
        raise typer.BadParameter(f"choose one of {', '.join(GALLERIES)}", param_hint="--gallery")
    if gallery == "all" and queries is None:
        raise typer.BadParameter("--gallery all needs --queries (the test split would be in its gallery)")
    settings = load_settings()
    cfg = EvalConfig(
        model=model,
        manifest=tuple(manifest),
        out_dir=out,
        split_file=split,
        queries=queries,
        query_manifests=tuple(query_manifest or ()),
        gallery=gallery,
        exclude_leaks=exclude_leaks,
        allow_split_mismatch=allow_split_mismatch,
        min_class_queries=min_class_queries,
        merges=tuple(merge or ()),
        ks=_ks(k),
        collection=collection,
        n_boot=n_boot,
        seed=seed,
        baselines=not no_baselines,
    )
    report = run_eval(cfg, settings, on_event=lambda m: stderr.print(m, markup=False))
    record_cli(settings, "cli.eval", report_sha256=hashlib.sha256((out / "report.json").read_bytes()).hexdigest())
    typer.echo(headline_table(report))
    leak = report["leakage"]
    typer.echo(
        f"leakage: {leak['exact']['n_queries']} exact and {leak['near_duplicate']['n_queries']} near-duplicate "
        f"queries in the gallery ({'excluded' if leak['excluded'] else 'kept'}); "
        f"{leak['queries_without_patient_id']} queries without a patient id"
    )
    typer.echo(f"report: {out / 'report.md'}")


def headline_table(report: dict) -> str:
    """The leading numbers (micro means) for the model, the raw-pixel baseline and chance, as plain text."""
    rows = [("model", report), *report.get("baselines", {}).items(), ("chance", report["chance"])]
    ks = list(report["precision_at_k"])
    head = ["full mAP", "MAP@R", "R-Precision", *(f"P@{k}" for k in (ks[0], ks[-1]))]
    lines = [f"{'':16}" + "".join(f"{h:>13}" for h in head)]
    for name, block in rows:
        values = [
            block["map"],
            block["map_at_r"],
            block["r_precision"],
            block["precision_at_k"][ks[0]],
            block["precision_at_k"][ks[-1]],
        ]
        lines.append(f"{name:16}" + "".join(f"{v['mean']:>13.4f}" for v in values))
    return "\n".join(lines)

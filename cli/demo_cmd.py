"""`cxr demo`: the main job on the embedded default. Train a short checkpoint if none exists, index a few hundred
public chest X-rays, search with a held-back one, print the results."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cli.errors import stderr
from cli.options import ModelOpt, load_settings
from cli.progress import progress_bar


def demo(
    data: Annotated[
        list[Path] | None,
        typer.Option("--data", help="Folder with manifest.csv and images; repeat to join several data sets."),
    ] = None,
    train_minutes: Annotated[
        float, typer.Option("--train-minutes", min=0.05, help="Training budget when no checkpoint exists.")
    ] = 5.0,
    n_index: Annotated[int, typer.Option("--n-index", min=10, help="How many train-split images to index.")] = 300,
    k: Annotated[int, typer.Option("--k", min=1)] = 10,
    model: ModelOpt = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Train (if needed), index a few hundred images, search with a held-back one.

    Example: cxr demo --data ../shared/data/cxr-public --data ../shared/data/cxr-adult --train-minutes 5
    """
    from services.embedding.registry import DEFAULT_SHAPE
    from services.errors import DataError
    from services.manifest import read_manifests
    from services.pipeline import IngestItem, IngestOptions, Ingestor, QueryOptions, Runtime, search_file
    from services.pipeline.stored_image import resolve_source
    from services.splits import read_split, split_rows
    from services.training.config import TrainConfig
    from services.training.loop import Trainer

    settings = load_settings(model=model, collection="demo")
    folders = data or [Path("../shared/data/cxr-public"), Path("../shared/data/cxr-adult")]
    manifest = [folder / "manifest.csv" for folder in folders]
    ckpt = settings.model_path
    if not (ckpt / "config.json").exists():
        stderr.print(
            f"No trained checkpoint at {ckpt}: training one now with the default recipe ({DEFAULT_SHAPE}: "
            f"ImageNet EfficientNet-Lite stem + ViT, 128 px) for {train_minutes:g} minutes. This short demo "
            "budget gives a weak model; see the README for the 45-minute run behind the reported numbers."
        )
        cfg = TrainConfig(
            manifest=tuple(manifest),
            out_dir=ckpt,
            shape=DEFAULT_SHAPE,
            image_size=128,
            max_minutes=train_minutes,
            cache_dir=ckpt / "cache",
        )
        with progress_bar() as bar:
            task = bar.add_task("training", total=None, status="")
            result = Trainer(
                cfg,
                on_step=lambda s, r: bar.update(task, completed=s, status=f"loss {r['loss']:.4f}"),
                on_event=bar.console.print,
            ).run()
        stderr.print(f"trained {result.steps} steps ({result.status}); val MAP@R {result.best_val_map_at_r:.3f}")
    else:
        stderr.print(f"using the trained checkpoint at {ckpt}")
    split_path = ckpt / "split.json"
    if not split_path.exists():
        raise DataError(f"{ckpt} has no split.json, so the demo cannot hold a query back from training")
    joined = read_manifests(manifest)
    parts = split_rows(joined.rows, read_split(split_path), joined.root)
    rng = random.Random(seed)
    gallery = rng.sample(parts["train"], min(n_index, len(parts["train"])))
    query = rng.choice(parts["test"])
    with Runtime(settings) as rt:
        opts = IngestOptions(collection="demo", batch_size=settings.batch_size, decode_workers=settings.decode_workers)
        with progress_bar() as bar:
            task = bar.add_task("indexing", total=len(gallery), status="")
            report = Ingestor(rt.encoder, rt.store, opts, salt=settings.salt, refs=rt.ledger.put_refs).run(
                [IngestItem(r.path, r.label, r) for r in gallery], progress=lambda n: bar.advance(task, n)
            )
        typer.echo(
            f"indexed {report.indexed} (already present {report.skipped}, failed {len(report.failed)}) into "
            f"'demo' at {report.images_per_s:.1f} images/s"
        )
        qopts = QueryOptions(collection="demo", k=k, exclude_same_patient=True, patient_id=query.patient_id)
        result = search_file(query.path, encoder=rt.encoder, store=rt.store, opts=qopts, salt=settings.salt)
        files = [resolve_source(rt.ledger, hit.payload) for hit in result.hits]
    typer.echo(f"query: {query.path.name}, a held-back test image (label {query.label}); its patient's images excluded")
    table = Table()
    for col in ("rank", "score", "label", "match", "file"):
        table.add_column(col)
    for rank, (hit, file) in enumerate(zip(result.hits, files, strict=True), start=1):
        label = str(hit.payload.get("label"))
        table.add_row(
            str(rank),
            f"{hit.score:.4f}",
            label,
            "yes" if label == query.label else "",
            file.name if file else str(hit.payload.get("source_ref", "-")),
        )
    Console(highlight=False).print(table)
    same = sum(str(h.payload.get("label")) == query.label for h in result.hits)
    typer.echo(f"{same} of {len(result.hits)} results share the query's label ({query.label}).")

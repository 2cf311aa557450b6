"""`cxr collections`, `cxr info`, `cxr optimize`: look at and maintain the store."""

from __future__ import annotations

import json
import time

import typer
from rich.console import Console
from rich.table import Table

from cli.errors import stderr
from cli.options import CollectionOpt, JsonOpt, ModelOpt, load_settings
from services import __version__


def collections(as_json: JsonOpt = False) -> None:
    """List collections with their vector size and point count.

    Example: cxr collections --json
    """
    from services.pipeline import Runtime

    settings = load_settings()
    with Runtime(settings) as rt:
        infos = rt.store.collections()
    if as_json:
        typer.echo(json.dumps([vars(i) for i in infos], indent=2))
        return
    table = Table(title=f"collections in {settings.qdrant_url or settings.store_path}")
    for col in ("name", "dim", "count"):
        table.add_column(col)
    for i in infos:
        table.add_row(i.name, str(i.dim), str(i.count))
    Console(highlight=False).print(table)


def info(model: ModelOpt = None, as_json: JsonOpt = False) -> None:
    """Show the version, where data lives, which store is used and the model's config.

    Example: cxr info --model runs/vit-small
    """
    from services.embedding import checkpoint_id, native_bf16_cpu  # neither loads torch

    settings = load_settings(model=model)
    data = {
        "version": __version__,
        "data_dir": str(settings.data_dir),
        "store": f"server {settings.qdrant_url}" if settings.qdrant_url else f"embedded {settings.store_path}",
        "collection": settings.collection,
        "model": str(settings.model_path),
        "model_id": None,
        "bf16_supported": native_bf16_cpu(),
    }
    cfg_path = settings.model_path / "config.json"
    if cfg_path.exists():
        data["model_id"] = checkpoint_id(settings.model_path)
        data["model_config"] = json.loads(cfg_path.read_text())
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    for key, value in data.items():
        if key != "model_config":
            typer.echo(f"{key:15} {value}")
    if "model_config" in data:
        cfg = data["model_config"]
        typer.echo(f"{'model shape':15} {cfg.get('shape')} @ {cfg.get('image_size')} px, dim {cfg.get('embed_dim')}")


def optimize(collection: CollectionOpt = None) -> None:
    """Build the HNSW index now (blocking in the embedded engine; before it, search is exact).

    Example: cxr optimize --collection chest
    """
    from services.pipeline import Runtime

    settings = load_settings(collection=collection)
    with Runtime(settings) as rt:
        stderr.print(f"optimizing {settings.collection} ({rt.store.count(settings.collection)} points)...")
        t0 = time.perf_counter()
        rt.store.optimize(settings.collection)
    typer.echo(f"optimized {settings.collection} in {time.perf_counter() - t0:.1f} s")

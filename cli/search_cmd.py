"""`cxr search`: the k most similar indexed X-rays to one query image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from cli.errors import cell, stderr
from cli.options import CollectionOpt, JsonOpt, ModelOpt, load_settings
from services.governance.audit import record_cli

if TYPE_CHECKING:  # the heavy modules load inside the command only
    import numpy as np

    from services.index import Hit
    from services.pipeline import Runtime


def search(
    query: Annotated[Path, typer.Argument(help="Query image: DICOM, PNG or JPEG.")],
    k: Annotated[int, typer.Option("--k", "-k", min=1, max=1000, help="How many results.")] = 10,
    filters: Annotated[
        list[str] | None,
        typer.Option("--filter", "-f", help="FIELD=VALUE, FIELD=V1,V2 (any of) or FIELD!=VALUE; repeatable."),
    ] = None,
    exclude_same_patient: Annotated[
        bool, typer.Option("--exclude-same-patient", help="Drop results from the query's own patient.")
    ] = False,
    patient_id: Annotated[
        str | None, typer.Option("--patient-id", help="The query's patient id, when the file has none (PNG).")
    ] = None,
    include_self: Annotated[
        bool, typer.Option("--include-self", help="Keep the query image itself if it is indexed.")
    ] = False,
    collection: CollectionOpt = None,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
    explain_dir: Annotated[
        Path | None,
        typer.Option(
            "--explain",
            help="Write PNG heat maps of why each result is similar (query and result overlays) to this folder.",
        ),
    ] = None,
) -> None:
    """Find the most similar indexed X-rays, with their diagnosis and score.

    Example: cxr search q.dcm --k 10 --filter view=PA --exclude-same-patient
    """
    from services.pipeline import QueryOptions, Runtime, hits_to_json
    from services.pipeline.query import read_query, search_decoded
    from services.pipeline.stored_image import resolve_source

    settings = load_settings(collection=collection, model=model)
    opts = QueryOptions(
        collection=settings.collection,
        k=k,
        filters=tuple(filters or ()),
        exclude_same_patient=exclude_same_patient,
        exclude_self=not include_self,
        patient_id=patient_id,
        max_pixels=settings.max_pixels,
        min_side=settings.min_side,
    )
    with Runtime(settings) as rt:
        decoded, sha = read_query(query, opts)  # decoded once: the search and the heat maps share it
        result = search_decoded(decoded, sha, encoder=rt.encoder, store=rt.store, opts=opts, salt=settings.salt)
        files = [resolve_source(rt.ledger, hit.payload) for hit in result.hits]
        if explain_dir is not None:
            write_explanations(explain_dir, query, decoded.pixels, result.hits, rt=rt)
    record_cli(
        settings, "cli.search", collection=settings.collection, query_sha256=sha, results=[h.id for h in result.hits]
    )
    if exclude_same_patient and not result.patient_excluded:
        stderr.print(
            "warning: the query carries no patient id, so same-patient results could not be excluded; pass --patient-id"
        )
    if as_json:
        typer.echo(json.dumps(hits_to_json(result.hits), indent=2))
        return
    table = Table(title=cell(f"{len(result.hits)} nearest to {query.name} in {settings.collection}"))
    for col in ("rank", "score", "label", "view", "file"):
        table.add_column(col, justify="right" if col in {"rank", "score"} else "left")
    for rank, (hit, file) in enumerate(zip(result.hits, files, strict=True), start=1):
        p = hit.payload
        table.add_row(
            str(rank),
            f"{hit.score:.4f}",
            cell(p.get("label", "-")),
            cell(p.get("view", "-")),
            cell(file.name if file else p.get("source_ref", "-")),  # the user's own file, on the user's terminal
        )
    Console(highlight=False).print(table)


def write_explanations(out_dir: Path, query: Path, query_pixels: np.ndarray, hits: list[Hit], *, rt: Runtime) -> None:
    """`--explain`: NN_query.png and NN_result.png per result (the query's map depends on the result), and
    explain.json with the maps on the patch grid; results whose image cannot be read are reported and skipped.
    `query_pixels` is the query as the search decoded it; `query` only names it in explain.json."""
    from services.embedding.explain import Explainer
    from services.embedding.overlay import overlay_png
    from services.errors import StoredImageError
    from services.pipeline.stored_image import load_stored_pixels

    settings = rt.settings
    kept, pixels = [], []
    for rank, hit in enumerate(hits, start=1):
        try:
            pixels.append(
                load_stored_pixels(
                    rt.ledger, hit.payload, hit.id, max_pixels=settings.max_pixels, min_side=settings.min_side
                )
            )
            kept.append((rank, hit))
        except StoredImageError as exc:
            stderr.print(f"warning: result {rank} ({hit.id}) not explained: {exc}")
    explanations = Explainer(rt.encoder).explain_many(query_pixels, pixels)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for (rank, hit), result_pixels, ex in zip(kept, pixels, explanations, strict=True):
        names = {"query": f"{rank:02d}_query.png", "result": f"{rank:02d}_result.png"}
        (out_dir / names["query"]).write_bytes(overlay_png(query_pixels, ex.query_map))
        (out_dir / names["result"]).write_bytes(overlay_png(result_pixels, ex.result_map))
        doc = ex.to_json()
        doc["query"].update(png=names["query"], file=str(query))
        doc["result"].update(png=names["result"], id=hit.id)
        records.append({"rank": rank, "score": round(float(hit.score), 6), "label": hit.payload.get("label"), **doc})
    (out_dir / "explain.json").write_text(json.dumps(records, indent=1) + "\n")
    stderr.print(f"wrote {2 * len(records)} heat-map overlays and explain.json to {out_dir}")

"""`cxr search`: the k most similar indexed X-rays to one query image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cli.errors import stderr
from cli.options import CollectionOpt, JsonOpt, ModelOpt, load_settings


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
) -> None:
    """Find the most similar indexed X-rays, with their diagnosis and score.

    Example: cxr search q.dcm --k 10 --filter view=PA --exclude-same-patient
    """
    from services.pipeline import QueryOptions, Runtime, hits_to_json, search_file

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
        result = search_file(query, encoder=rt.encoder, store=rt.store, opts=opts, salt=settings.salt)
    if exclude_same_patient and not result.patient_excluded:
        stderr.print(
            "warning: the query carries no patient id, so same-patient results could not be excluded; pass --patient-id"
        )
    if as_json:
        typer.echo(json.dumps(hits_to_json(result.hits), indent=2))
        return
    table = Table(title=f"{len(result.hits)} nearest to {query.name} in {settings.collection}")
    for col in ("rank", "score", "label", "view", "source"):
        table.add_column(col, justify="right" if col in {"rank", "score"} else "left")
    for rank, hit in enumerate(result.hits, start=1):
        p = hit.payload
        table.add_row(
            str(rank),
            f"{hit.score:.4f}",
            str(p.get("label", "-")),
            str(p.get("view", "-")),
            str(p.get("source_uri", "-")),
        )
    Console(highlight=False).print(table)

"""`cxr index`: embed a folder of X-rays (PNG, JPEG, DICOM) into a collection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cli.errors import EXIT_PARTIAL, printable
from cli.options import BatchSizeOpt, CollectionOpt, JsonOpt, ManifestOpt, ModelOpt, load_settings
from cli.progress import progress_bar
from services.governance.audit import record_cli
from services.governance.tombstones import tombstones_at


def index(
    paths: Annotated[list[Path] | None, typer.Argument(help="Files or folders (walked recursively).")] = None,
    manifest: ManifestOpt = None,
    label_from: Annotated[
        str,
        typer.Option("--label-from", help="Where labels come from: manifest, folder (parent name) or none."),
    ] = "auto",
    collection: CollectionOpt = None,
    model: ModelOpt = None,
    batch_size: BatchSizeOpt = None,
    workers: Annotated[int | None, typer.Option("--workers", min=0, help="Decoder threads.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Index at most N files (for a trial).")] = None,
    errors_out: Annotated[
        Path | None,
        typer.Option("--errors-out", help="Write failed files as JSON lines (path, stage, reason)."),
    ] = None,
    as_json: JsonOpt = False,
    queue: Annotated[
        bool, typer.Option("--queue", help="Record the files and hand them to the background workers (`cxr worker`).")
    ] = False,
    update: Annotated[
        bool,
        typer.Option("--update", help="Rewrite stored points' payloads (and vectors if the content changed)."),
    ] = False,
) -> None:
    """Index X-rays into a collection. Re-indexing a file never duplicates it.

    Example: cxr index ./studies --manifest studies/manifest.csv --collection chest

    Several data sets: cxr index --manifest public/manifest.csv --manifest adult/manifest.csv
    """
    from services.manifest import read_manifests
    from services.pipeline import FileError, IngestOptions, Ingestor, Runtime, build_items
    from services.pipeline.sources import Unfound

    if label_from not in {"auto", "manifest", "folder", "none"}:
        raise typer.BadParameter("must be manifest, folder or none", param_hint="--label-from")
    if not paths and not manifest:
        raise typer.BadParameter("give PATH(s) to index, or --manifest", param_hint="PATHS")
    settings = load_settings(collection=collection, model=model, batch_size=batch_size, decode_workers=workers)
    joined = read_manifests(manifest) if manifest else None
    rows = joined.rows if joined is not None else None
    mode = ("manifest" if rows is not None else "none") if label_from == "auto" else label_from
    items, unfound = build_items(paths or [], manifest=rows, label_from=mode)  # type: ignore[arg-type]
    # a manifest row with a bad label is refused on its own, with its line; the rest goes on
    unfound[:0] = [Unfound(where, reason) for where, reason in (joined.refused if joined is not None else ())]
    items = items[:limit] if limit else items
    if queue:
        record_cli(settings, "cli.index-queue", collection=settings.collection, files=len(items), unfound=len(unfound))
        _enqueue(settings, items, unfound, update=update, as_json=as_json)
        return
    opts = IngestOptions.from_settings(settings, update=update)
    with Runtime(settings) as rt:
        forgotten = tombstones_at(settings.ledger_path, settings.salt)
        ingestor = Ingestor(
            rt.encoder, rt.store, opts, salt=settings.salt, refs=rt.ledger.put_refs, tombstones=forgotten
        )
        with progress_bar() as bar:
            task = bar.add_task("indexing", total=len(items), status="")
            report = ingestor.run(items, progress=lambda n: bar.advance(task, n))
    report.failed[:0] = [FileError(u.path, "find", u.reason) for u in unfound]
    record_cli(
        settings,
        "cli.index",
        "ok" if not report.failed else "partial",
        collection=settings.collection,
        indexed=report.indexed,
        skipped=report.skipped,
        failed=len(report.failed),
    )
    if errors_out:
        errors_out.write_text("".join(json.dumps(vars(f)) + "\n" for f in report.failed))
    _print_report(report, settings.collection, as_json)
    if report.failed:
        if report.indexed + report.skipped == 0:
            from services.errors import CxrError

            raise CxrError(f"none of {len(report.failed)} file(s) could be indexed", "See the failures listed above.")
        raise typer.Exit(EXIT_PARTIAL)


def _enqueue(settings, items, unfound, *, update: bool, as_json: bool) -> None:  # noqa: ANN001
    """`--queue`: the ledger records every file (durable before this returns), then a best-effort dispatch."""
    from services.pipeline.submission import submit
    from workers.dispatch import make_publish

    publish = make_publish(settings)
    done = submit(settings, items, publish=publish, collection=settings.collection, update=update, unfound=unfound)
    report = {
        "collection": settings.collection,
        "recorded": done.recorded,
        "already_known": done.already,
        "sent_now": done.sent,
        "sent_by_another_dispatcher": done.sent_elsewhere,
        "waiting_for_broker": done.waiting,
        "failed": [{"path": u.path, "stage": "find", "reason": u.reason} for u in unfound],
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        elsewhere = f", already sent by another dispatcher {done.sent_elsewhere}" if done.sent_elsewhere else ""
        later = (
            f"; {done.waiting} wait for the broker and `cxr worker`'s sweep sends them (is Redis up?)"
            if done.waiting
            else ""
        )
        typer.echo(
            f"collection {settings.collection}: recorded {done.recorded}, already known {done.already}, "
            f"sent to the queue now {done.sent}{elsewhere}{later}; watch with `cxr status`"
        )
        for u in unfound:
            typer.echo(f"  failed [find] {printable(u.path)}: {printable(u.reason)}")
    if unfound:
        raise typer.Exit(EXIT_PARTIAL)


def _print_report(report, collection: str, as_json: bool) -> None:  # noqa: ANN001 - IngestReport
    out = Console(highlight=False, soft_wrap=True)
    if as_json:
        typer.echo(json.dumps({"collection": collection, **report.to_dict()}, indent=2))
        return
    out.print(
        f"collection {collection}: indexed {report.indexed}, skipped (already present) {report.skipped}, "
        f"failed {len(report.failed)}; {report.images_per_s:.1f} images/s over {report.seconds:.1f} s"
    )
    for f in report.failed:
        out.print(f"  failed [{f.stage}] {printable(f.path)}: {printable(f.reason)}", markup=False)

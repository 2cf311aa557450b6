"""`cxr report`: the similar-cases report of one film, as a PDF page, DICOM files, or sent to the PACS."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.errors import stderr
from cli.options import CollectionOpt, ModelOpt, load_settings
from services.governance.audit import record_cli


def report(
    query: Annotated[str, typer.Argument(help="The query film (DICOM, PNG or JPEG), or the id of an indexed image.")],
    k: Annotated[int, typer.Option("--k", "-k", min=1, max=20, help="How many similar films (one per patient).")] = 10,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the one-page PDF here.")] = None,
    dicom_dir: Annotated[
        Path | None,
        typer.Option(
            "--dicom", help="Write the Encapsulated PDF and the Comprehensive SR (DICOM files) to this folder."
        ),
    ] = None,
    send: Annotated[bool, typer.Option("--send", help="Send both DICOM objects to the report destination.")] = False,
    collection: CollectionOpt = None,
    model: ModelOpt = None,
) -> None:
    """Make the similar-cases report of a film: the k most similar films of other patients, their labels and
    scores, as one PDF page (decision support, not a diagnosis) and as DICOM for the PACS.

    Example: cxr report q.dcm --out report.pdf --dicom report-dicom/
    """
    from services.pipeline import Runtime
    from services.reports.build import build_report
    from services.reports.dicom_pdf import to_bytes

    settings = load_settings(collection=collection, model=model)
    if out is None and dicom_dir is None and not send:
        out = Path("report.pdf")
    with Runtime(settings) as rt:
        built = build_report(query, settings=settings, searcher=rt, k=k)
    written = []
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(built.pdf)
        written.append(out)
    if dicom_dir is not None:
        dicom_dir.mkdir(parents=True, exist_ok=True)
        for kind, ds in (("pdf", built.pdf_dataset), ("sr", built.sr_dataset)):
            path = dicom_dir / f"{kind}-{ds.SOPInstanceUID}.dcm"
            path.write_bytes(to_bytes(ds))
            written.append(path)
    record_cli(settings, "cli.report", collection=settings.collection, results=list(built.hit_ids), sent=send)
    for path in written:
        typer.echo(str(path))
    if send:
        from services.reports.deliver import send_report

        send_report(built, settings)
        stderr.print(f"sent the report of {len(built.hit_ids)} similar films")

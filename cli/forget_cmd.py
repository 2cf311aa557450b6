"""`cxr forget`: remove one patient, study or instance everywhere cxr keeps it, and keep it from coming back."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cli.options import JsonOpt, load_settings


def forget(
    patient_id: Annotated[
        str | None, typer.Option("--patient-id", help="The patient's id, as the PACS has it.")
    ] = None,
    study_uid: Annotated[str | None, typer.Option("--study-uid", help="A Study Instance UID.")] = None,
    sop_uid: Annotated[str | None, typer.Option("--sop-uid", help="A SOP Instance UID.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would be removed; remove nothing.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove a patient (or a study, or an instance): its points in every collection, ledger items, spool copies,
    API uploads and queued messages; then refuse it when it arrives again (a salted-hash tombstone;
    CXR_FORGET_RESEND=skip drops it silently instead). Files you indexed in place are yours and stay.

    Example: cxr forget --patient-id MRN12345 --dry-run
    """
    from services.governance.audit import record_cli
    from services.governance.forget import forget as run_forget
    from services.governance.tombstones import Target, target_hashes
    from services.pipeline import Runtime
    from workers.purge import purger

    try:
        target = Target.given(patient_id, study_uid, sop_uid)
    except ValueError:
        raise typer.BadParameter("give exactly one of --patient-id, --study-uid, --sop-uid") from None
    settings = load_settings()
    with Runtime(settings) as rt:
        report = run_forget(settings, target, store=rt.store, ledger=rt.ledger, dry_run=dry_run, purge=purger(settings))
    tomb = target_hashes(target, settings.salt)[0][1]  # the salted hash only, never the id itself
    action = "forget.dry-run" if dry_run else "forget"
    record_cli(
        settings,
        action,
        kind=target.kind,
        target_hash=tomb,
        points=sum(report.points.values()),
        ledger_items=report.ledger_items,
        spool_files=report.spool_files,
        uploads=report.uploads,
    )
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    verb = "would remove" if dry_run else "removed"
    points = ", ".join(f"{n} in {c}" for c, n in report.points.items()) or "none"
    typer.echo(f"{verb}: points {points}; ledger items {report.ledger_items}; spool files {report.spool_files};")
    typer.echo(f"  API uploads {report.uploads}; queued messages {report.queue_messages}")
    if report.user_files_left:
        typer.echo(f"  {report.user_files_left} file(s) indexed in place are yours and were left where they are")
    for note in report.notes:
        typer.echo(f"  note: {note}")
    if not dry_run:
        typer.echo(f"this {target.kind} is refused from now on when it arrives again (CXR_FORGET_RESEND)")

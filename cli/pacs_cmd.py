"""`cxr dicom-listen` (the DICOM receiver) and `cxr pacs pull` (DICOMweb or Orthanc's changes feed)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import date
from typing import Annotated

import typer

from cli.errors import EXIT_PARTIAL
from cli.options import CollectionOpt, JsonOpt, MetricsPortOpt, load_settings
from services.governance.audit import audit_log, record_cli
from services.governance.tombstones import tombstones_at

pacs_app = typer.Typer(help="Pull chest radiographs from a PACS.", no_args_is_help=True)


def _logging(verbose: bool) -> None:
    """Our records to stderr; pynetdicom's own chatter only from WARNING (it never needs PHI, nor do we)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    for noisy in ("pylibjpeg", "openjpeg", "libjpeg", "urllib3", "dicomweb_client"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _dispatcher(settings, enabled: bool):  # noqa: ANN001, ANN202 - Settings -> Callable[[], int] | None
    """workers.dispatch's callback (Celery on Redis); None when disabled or the queue is not installed."""
    if not enabled:
        return None
    try:
        from workers.dispatch import make_dispatcher
    except ImportError as exc:
        logging.getLogger("cxr.pacs").warning("no dispatcher (%s): items wait in the ledger for `cxr worker`", exc)
        return None
    return make_dispatcher(settings)


def _intake(settings):  # noqa: ANN001, ANN202 - Settings -> Intake
    from services.pacs.deid import Deidentifier
    from services.pacs.intake import Intake
    from services.pacs.spool import Spool
    from services.pipeline.ledger import Ledger

    spool = Spool(settings.spool_path, min_free_mb=settings.spool_min_free_mb)
    deid = Deidentifier(settings.salt) if settings.spool_deidentify else None
    return Intake(
        spool,
        Ledger(settings.ledger_path),
        collection=settings.collection,
        deidentifier=deid,
        salt=settings.salt,
        quarantine_conflicts=settings.spool_quarantine_conflicts,
        tombstones=tombstones_at(settings.ledger_path, settings.salt),
        skip_forgotten=settings.forget_resend == "skip",
        max_instance_bytes=settings.dicom_max_instance_mb * 2**20,
    )


def dicom_listen(
    aet: Annotated[str | None, typer.Option("--aet", help="Our AE title (default $CXR_DICOM_AET or CXR).")] = None,
    port: Annotated[
        int | None, typer.Option("--port", min=1, max=65535, help="Default $CXR_DICOM_PORT or 11112.")
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Bind address (default $CXR_DICOM_HOST or 0.0.0.0).")
    ] = None,
    allow_aet: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-aet",
            help="A calling AE title to accept, optionally only from a host or network: TITLE, TITLE@10.0.0.5,"
            " TITLE@10.1.2.0/24 (repeatable; adds to $CXR_DICOM_ALLOW_AETS).",
        ),
    ] = None,
    allow_any_aet: Annotated[
        bool, typer.Option("--allow-any-aet", help="Accept every calling AE title (not for a hospital network).")
    ] = False,
    max_associations: Annotated[
        int | None, typer.Option("--max-associations", min=1, help="Concurrent associations (default 64).")
    ] = None,
    collection: CollectionOpt = None,
    deidentify: Annotated[
        bool | None,
        typer.Option("--deidentify/--no-deidentify", help="Spool only de-identified copies ($CXR_SPOOL_DEIDENTIFY)."),
    ] = None,
    dispatch: Annotated[
        bool, typer.Option("--dispatch/--no-dispatch", help="Send what lands to the queue (needs Redis).")
    ] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every stored instance (UIDs only).")] = False,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Receive X-rays over DICOM (C-STORE, C-ECHO) into the spool; success only once each is durable.

    Example: cxr dicom-listen --aet CXR --port 11112 --allow-aet ORTHANC --allow-aet CR_ROOM1
    """
    import signal
    import threading

    from services.pacs.receiver import Receiver, ReceiverConfig, parse_aets

    _logging(verbose)
    settings = load_settings(
        collection=collection,
        dicom_aet=aet,
        dicom_port=port,
        dicom_host=host,
        dicom_max_associations=max_associations,
        spool_deidentify=deidentify,
    )
    cfg = ReceiverConfig(
        ae_title=settings.dicom_aet,
        host=settings.dicom_host,
        port=settings.dicom_port,
        allow_aets=parse_aets([settings.dicom_allow_aets, *(allow_aet or [])]),
        allow_any_aet=allow_any_aet,
        max_associations=settings.dicom_max_associations,
        max_connections=settings.dicom_max_connections,
        max_pdu=settings.dicom_max_pdu,
        max_instance_bytes=settings.dicom_max_instance_mb * 2**20,
        dispatch_interval_s=settings.receiver_dispatch_interval_s,
        acse_timeout_s=settings.dicom_acse_timeout_s,
        network_timeout_s=settings.dicom_network_timeout_s,
        dimse_timeout_s=settings.dicom_dimse_timeout_s,
    )
    receiver = Receiver(_intake(settings), cfg, dispatch=_dispatcher(settings, dispatch), audit=audit_log(settings))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    receiver.start()
    if metrics_port:
        from workers.metrics import serve_metrics

        serve_metrics(settings, metrics_port)
    typer.echo(f"cxr receiver {cfg.ae_title} ready on {cfg.host}:{receiver.port}", err=True)
    stop.wait()
    receiver.stop()
    s = receiver.stats
    typer.echo(
        f"stopped: stored {s.stored} (resent {s.duplicates}), refused {sum(s.failed.values())}"
        f" (UID conflicts {s.conflicts}, over the size cap {s.oversized}), associations refused"
        f" {s.rejected_associations}",
        err=True,
    )


def _parse_since(value: str | None) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value if "-" in value else f"{value[:4]}-{value[4:6]}-{value[6:8]}")
    except ValueError:
        raise typer.BadParameter("use YYYY-MM-DD or YYYYMMDD", param_hint="--since") from None


@pacs_app.command()
def pull(
    url: Annotated[str, typer.Option("--url", help="DICOMweb root (http://pacs/dicom-web) or Orthanc's REST root.")],
    user: Annotated[str | None, typer.Option("--user", envvar="CXR_PACS_USER", help="HTTP basic-auth user.")] = None,
    password: Annotated[
        str | None, typer.Option("--password", envvar="CXR_PACS_PASSWORD", help="Password (prefer the env var).")
    ] = None,
    token: Annotated[str | None, typer.Option("--token", envvar="CXR_PACS_TOKEN", help="Bearer token.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Only studies from this date (YYYY-MM-DD).")] = None,
    modality: Annotated[str, typer.Option("--modality", help="Comma-separated modalities to pull.")] = "CR,DX",
    mode: Annotated[str, typer.Option("--mode", help="dicomweb or orthanc-changes.")] = "dicomweb",
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Stop after N new instances.")] = None,
    page_size: Annotated[int, typer.Option("--page-size", min=2, help="Results per QIDO / changes request.")] = 200,
    collection: CollectionOpt = None,
    dispatch: Annotated[bool, typer.Option("--dispatch/--no-dispatch", help="Queue what lands (Redis).")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Fetch new chest radiographs from a PACS into the spool and the ledger. A rerun fetches only what is new.

    Example: cxr pacs pull --url http://orthanc:8042/dicom-web --user cxr --since 2024-01-01
    """
    from services.pacs.http import PacsAuth
    from services.pacs.pull import pull as run_pull
    from services.pacs.pull_batch import PullOptions

    if mode not in ("dicomweb", "orthanc-changes"):
        raise typer.BadParameter("must be dicomweb or orthanc-changes", param_hint="--mode")
    _logging(False)
    settings = load_settings(collection=collection)
    opts = PullOptions(
        url=url,
        mode=mode,  # type: ignore[arg-type]
        auth=PacsAuth(user=user, password=password, token=token),
        since=_parse_since(since),
        modalities=tuple(m.strip().upper() for m in modality.split(",") if m.strip()),
        page_size=page_size,
        timeout_s=settings.pacs_timeout_s,
        retries=settings.pacs_retries,
        limit=limit,
    )
    report = run_pull(_intake(settings), opts, dispatch=_dispatcher(settings, dispatch))
    record_cli(
        settings,
        "dicom.pull",
        "ok" if not report.failed else "partial",
        mode=report.mode,
        listed=report.listed,
        fetched=report.fetched,
        new=report.stored,
        already=report.already,
        refused=report.refused,
        failed=len(report.failed),
    )
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        typer.echo(
            f"{report.mode}: listed {report.listed}, fetched {report.fetched}, new {report.stored}, "
            f"already here {report.already}, refused (not chest) {report.refused}, failed {len(report.failed)}; "
            f"cursor {report.cursor or '-'}{'' if report.complete else ' (incomplete: rerun to continue)'}"
        )
        for f in report.failed:
            typer.echo(f"  failed {'permanently' if f.permanent else 'for now'} {f.ref}: {f.reason}", err=True)
    if report.failed:
        raise typer.Exit(EXIT_PARTIAL)

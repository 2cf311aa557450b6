"""`cxr worker`, `cxr status`, `cxr failures`, `cxr retry`: run and watch the background ingestion queue.

`status`, `failures` and `retry` read the ledger (SQLite) and Redis only: no torch, no store, well under a second.
"""

from __future__ import annotations

import faulthandler
import json
import signal
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cli.errors import cell, stderr
from cli.options import JsonOpt, MetricsPortOpt, load_settings
from workers.queues import EMBED_QUEUE, INDEX_QUEUE, QUEUES, REPORT_QUEUE, queue_depths

# kombu keeps a queue's messages in the list named after it, plus one list per priority step (sep \x06\x16).


def status(as_json: JsonOpt = False) -> None:
    """Queue depths (Redis), ledger counts, reports sent back to the PACS (pending, sent, failed), the recent
    indexing rate, and the API uploads still kept (count, size, oldest age). Works while Redis is down.

    Example: cxr status --json
    """
    from services.pipeline.ledger import Ledger
    from services.pipeline.report_ledger import ReportLedger
    from services.pipeline.uploads import uploads_summary

    settings = load_settings()
    ledger = Ledger(settings.ledger_path)
    data = {
        "ledger": ledger.counts(),
        "reports": ReportLedger(settings.ledger_path).counts(),
        "uploads": uploads_summary(settings),
        "indexed_last_60s": ledger.indexed_since(60),
        "indexed_last_5min": ledger.indexed_since(300),
        "queues": queue_depths(settings.redis_url),
        "ledger_path": str(settings.ledger_path),
    }
    data["rate_per_s_5min"] = round(data["indexed_last_5min"] / 300, 2)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    counts = data["ledger"]
    typer.echo("ledger   " + "  ".join(f"{k} {v}" for k, v in counts.items()))
    typer.echo("reports  " + "  ".join(f"{k} {v}" for k, v in data["reports"].items()))
    typer.echo(
        f"rate     {data['indexed_last_60s']} indexed in the last minute, {data['indexed_last_5min']} in 5 min"
        f" ({data['rate_per_s_5min']:.2f}/s)"
    )
    kept = data["uploads"]
    age = "" if kept["oldest_age_s"] is None else f", the oldest {_age(kept['oldest_age_s'])} old"
    typer.echo(f"uploads  {kept['count']} kept ({kept['bytes'] / 2**20:.1f} MiB{age})")
    queues = data["queues"]
    if "error" in queues:
        typer.echo(f"queues   unknown: {queues['error']}; items stay in the ledger and are sent when it returns")
    else:
        typer.echo(
            f"queues   {EMBED_QUEUE} {queues[EMBED_QUEUE]}  {INDEX_QUEUE} {queues[INDEX_QUEUE]}"
            f"  {REPORT_QUEUE} {queues[REPORT_QUEUE]}"
            f"  unacknowledged {queues['unacked']}"
        )


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def failures(
    as_json: JsonOpt = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Show at most N, newest first.")] = 1000,
) -> None:
    """List items that failed for good (dead letters): key, file, stage, reason, attempts; and reports the PACS
    did not take (key report:<SOP Instance UID>, stage 'report', the destination in place of the file).

    Example: cxr failures --json
    """
    from services.pipeline.ledger import Ledger
    from services.pipeline.report_ledger import ReportLedger

    settings = load_settings()
    rows = [r.to_dict() for r in Ledger(settings.ledger_path).failures(limit=limit)]
    for rep in ReportLedger(settings.ledger_path).failures(limit=limit):
        rows.append(
            {"key": rep.name, "path": rep.destination, "collection": rep.collection, "stage": "report"}
            | {"reason": rep.reason, "attempts": rep.attempts, "permanent": False, "updated_at": rep.updated_at}
        )
    if as_json:
        keep = ("key", "path", "collection", "stage", "reason", "attempts", "permanent", "updated_at")
        typer.echo(json.dumps([{k: r[k] for k in keep} for r in rows], indent=2))
        return
    if not rows:
        typer.echo("no failures")
        return
    table = Table(title=f"{len(rows)} failed item(s); `cxr retry KEY|FILE` or `cxr retry --all` re-arms them")
    for col in ("key", "file", "stage", "reason", "attempts"):
        table.add_column(col, overflow="fold")
    for r in rows:  # keys are opaque (they travel through Redis); the file is shown from the local ledger
        table.add_row(
            cell(r["key"]), cell(r["path"]), cell(r["stage"] or ""), cell(r["reason"] or ""), str(r["attempts"])
        )
    Console(highlight=False).print(table)


def retry(
    keys: Annotated[
        list[str] | None, typer.Argument(help="Ledger keys from `cxr failures`, or the failed files' paths.")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Re-arm every failed item.")] = False,
) -> None:
    """Re-arm failed items and reports (attempts back to 0) and send them to the queue again.

    Example: cxr retry --all
    """
    from services.pipeline.ledger import Ledger
    from services.pipeline.report_ledger import REPORT_PREFIX, ReportLedger

    if bool(keys) == all_:
        raise typer.BadParameter("give KEY(s) or --all, not both and not neither", param_hint="KEYS")
    settings = load_settings()
    ledger = Ledger(settings.ledger_path)
    if keys:  # a path names the item keyed by its HMAC (what `cxr index --queue` recorded)
        from services.pipeline.ledger import file_key

        keys = [k if ledger.get(k) is not None or ":" in k else file_key(k, settings.salt) for k in keys]
    report_names = None if all_ else [k for k in keys or () if k.startswith(REPORT_PREFIX)]
    reports = ReportLedger(settings.ledger_path)
    rearmed = reports.retry(report_names) if all_ or report_names else []
    if rearmed:
        _send_reports(settings, reports, len(rearmed))
    item_keys = None if all_ else [k for k in keys or () if not k.startswith(REPORT_PREFIX)]
    armed = ledger.retry(item_keys) if all_ or item_keys else []
    missing = sorted(set(keys or ()) - set(armed) - {r.name for r in rearmed})
    for key in missing:
        stderr.print(f"not a failed item: {key}", markup=False)
    from services.pipeline.submission import dispatch_due
    from workers.dispatch import make_publish

    sent = dispatch_due(settings, ledger, make_publish(settings)) if armed else 0
    later = "" if sent or not armed else " (the sweep sends them once Redis answers)"
    if armed or not rearmed:
        typer.echo(f"re-armed {len(armed)} item(s); sent {sent} to the queue now{later}")
    if missing:
        raise typer.Exit(1)


def _send_reports(settings, reports, n: int) -> None:  # noqa: ANN001 - Settings, ReportLedger
    from services.reports.trigger import dispatch_due_reports
    from workers.dispatch import make_report_publish

    sent = dispatch_due_reports(settings, reports, make_report_publish(settings))
    later = "" if sent == n else " (the sweep of `cxr worker` sends the rest once Redis answers)"
    typer.echo(f"re-armed {n} report(s); sent {sent} to the queue now{later}")


QueuesOpt = Annotated[str, typer.Option("--queues", "-Q", help=f"Comma-separated: {', '.join(QUEUES)}.")]
EVERY_QUEUE = ",".join(QUEUES)


def worker(
    queues: QueuesOpt = EVERY_QUEUE,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Embed processes.")] = 1,
    loglevel: Annotated[str, typer.Option("--loglevel", help="Celery log level.")] = "INFO",
    sweep: Annotated[bool, typer.Option("--sweep/--no-sweep", help="Re-send due ledger items periodically.")] = True,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Run the background workers: N embed processes and the single index writer, plus the ledger sweep.

    The index queue always runs one process: it is the one writer of the embedded store. Stop with Ctrl-C or
    SIGTERM (running tasks finish; unfinished ones are redelivered).

    Example: cxr worker --concurrency 2
    """
    from services.pipeline.submission import Sweep
    from workers.dispatch import make_publish
    from workers.supervisor import Supervisor

    wanted = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = sorted(set(wanted) - set(QUEUES))
    if unknown or not wanted:
        raise typer.BadParameter(f"unknown queue(s) {unknown}; use {' and/or '.join(QUEUES)}", param_hint="--queues")
    settings = load_settings()
    if metrics_port:  # before any celery child starts: they write their metrics where the parent reads them
        from workers.metrics import serve_metrics, use_multiprocess_dir

        use_multiprocess_dir()
        serve_metrics(settings, metrics_port, multiprocess=True)
    # `kill -USR1 <pid>` writes every thread's stack to stderr: how to see where a stuck worker waits
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    supervisor = Supervisor(
        settings, [q for q in QUEUES if q in wanted], concurrency, loglevel, lambda m: stderr.print(m, markup=False)
    )
    sweeper = Sweep(settings, lambda: make_publish(settings)) if sweep else None
    if sweeper:
        sweeper.start()
    report_sweeper = None
    if sweep and settings.report_destination:  # reports planned while Redis was down, or whose message was lost
        from services.reports.trigger import ReportSweep
        from workers.dispatch import make_report_publish

        report_sweeper = ReportSweep(settings, lambda: make_report_publish(settings))
        report_sweeper.start()
    stopping = {"sig": 0}

    def on_signal(signum: int, _frame: object) -> None:
        stopping["sig"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stderr.print("cxr worker: " + ", ".join(f"{q} x{n}" for q, n in supervisor.sizes.items()))
    # A celery child that exits is restarted (workers.supervisor); only a signal stops this worker.
    supervisor.run(lambda: bool(stopping["sig"]))
    if sweeper:
        sweeper.stop()
    if report_sweeper:
        report_sweeper.stop()
    supervisor.stop()

"""`cxr audit`: read the audit trail, and check that no record was edited or removed (`cxr audit verify`)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cli.errors import cell
from cli.options import JsonOpt, load_settings

audit_app = typer.Typer(
    help="The audit trail: who searched, viewed, indexed, received or forgot what, and when.",
    no_args_is_help=False,
    rich_markup_mode=None,
)


@audit_app.callback(invoke_without_command=True)
def audit(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option("--since", help="From this ISO time, or an age: 30m, 12h, 7d.")] = None,
    actor: Annotated[
        str | None, typer.Option("--actor", help="Only this actor (token:NAME, ae:TITLE, os:USER).")
    ] = None,
    action: Annotated[
        str | None, typer.Option("--action", help="Only this action (api.search, dicom.associate, ...).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="The newest N records.")] = 200,
    as_json: JsonOpt = False,
) -> None:
    """List audit records, oldest first (the newest --limit of those that match).

    Example: cxr audit --since 24h --action api.search --json
    """
    if ctx.invoked_subcommand is not None:
        return
    from services.governance.audit import audit_log, since_from

    try:
        start = since_from(since) if since else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None
    rows = audit_log(load_settings()).records(since=start, actor=actor, action=action, limit=limit)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    table = Table(title=f"{len(rows)} audit record(s)")
    for col in ("seq", "time (UTC)", "actor", "action", "outcome", "client", "objects"):
        table.add_column(col, overflow="fold")
    for r in rows:
        objects = json.dumps(r.objects, separators=(",", ":"))
        table.add_row(
            str(r.seq), r.ts, cell(r.actor), cell(r.action), cell(r.outcome), cell(r.client or ""), cell(objects)
        )
    Console(highlight=False, width=200).print(table)


@audit_app.command()
def verify(as_json: JsonOpt = False) -> None:
    """Check the hash chain: exit 0 when every record is intact, 1 (naming the first bad one) otherwise. Prints the
    head (count and last hash): keep it elsewhere to notice the newest records being removed.

    Example: cxr audit verify
    """
    from services.governance.audit import audit_log

    verdict = audit_log(load_settings()).verify()
    if as_json:
        typer.echo(json.dumps(verdict.__dict__, indent=2))
    elif verdict.ok:
        typer.echo(f"audit trail intact: {verdict.count} record(s), head {verdict.head}")
    else:
        typer.echo(f"audit trail BROKEN: {verdict.problem} ({verdict.count} record(s) good before it)", err=True)
    raise typer.Exit(0 if verdict.ok else 1)

"""The `cxr` command: a thin Typer shell over services.pipeline and friends."""

from __future__ import annotations

import typer

from cli.audit_cmd import audit_app
from cli.demo_cmd import demo
from cli.errors import CxrGroup
from cli.eval_cmd import eval_
from cli.forget_cmd import forget
from cli.index_cmd import index
from cli.pacs_cmd import dicom_listen, pacs_app
from cli.queue_cmd import failures, retry, status, worker
from cli.search_cmd import search
from cli.serve_cmd import serve
from cli.store_cmd import collections, info, optimize
from cli.token_cmd import token_app
from cli.train_cmd import train

app = typer.Typer(
    name="cxr",
    cls=CxrGroup,
    help="Chest X-ray retrieval by image similarity.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: Rich's option table cut option names at 80 columns (`--allow-split-misma…`); click's layout
    # never cuts a name and wraps the help text beside it.
    rich_markup_mode=None,
)

app.command()(index)
app.command()(search)
app.command()(collections)
app.command()(info)
app.command()(optimize)
app.command()(train)
app.command(name="eval")(eval_)
app.command()(demo)
app.command()(worker)
app.command()(status)
app.command()(failures)
app.command()(retry)
app.command()(forget)
app.command(name="dicom-listen")(dicom_listen)
app.add_typer(pacs_app, name="pacs")
app.command()(serve)
app.add_typer(audit_app, name="audit")
app.add_typer(token_app, name="token")


def main() -> None:
    app()


if __name__ == "__main__":
    main()

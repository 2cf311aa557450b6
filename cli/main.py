"""The `cxr` command: a thin Typer shell over services.pipeline and friends."""

from __future__ import annotations

import typer

from cli.errors import CxrGroup
from cli.index_cmd import index
from cli.search_cmd import search
from cli.store_cmd import collections, info, optimize

app = typer.Typer(
    name="cxr",
    cls=CxrGroup,
    help="Chest X-ray retrieval by image similarity.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command()(index)
app.command()(search)
app.command()(collections)
app.command()(info)
app.command()(optimize)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

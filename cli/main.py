"""The `cxr` command: a thin Typer shell over services.pipeline and friends.

Each command's module is imported only when that command runs: `cxr collections` does not pay for the imports of
`cxr serve` or `cxr eval`. `cxr`, `cxr --help`, a misspelt name and `cli.main.app` build the whole app.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from importlib import import_module
from typing import Any

import typer

from cli.errors import CxrGroup

# name -> (module, attribute): a command function, or a Typer sub-app (a group of commands). In help order.
COMMANDS: dict[str, tuple[str, str]] = {
    "index": ("cli.index_cmd", "index"),
    "search": ("cli.search_cmd", "search"),
    "report": ("cli.report_cmd", "report"),
    "collections": ("cli.store_cmd", "collections"),
    "info": ("cli.store_cmd", "info"),
    "optimize": ("cli.store_cmd", "optimize"),
    "train": ("cli.train_cmd", "train"),
    "eval": ("cli.eval_cmd", "eval_"),
    "demo": ("cli.demo_cmd", "demo"),
    "worker": ("cli.queue_cmd", "worker"),
    "status": ("cli.queue_cmd", "status"),
    "failures": ("cli.queue_cmd", "failures"),
    "retry": ("cli.queue_cmd", "retry"),
    "forget": ("cli.forget_cmd", "forget"),
    "dicom-listen": ("cli.pacs_cmd", "dicom_listen"),
    "pacs": ("cli.pacs_cmd", "pacs_app"),
    "serve": ("cli.serve_cmd", "serve"),
    "audit": ("cli.audit_cmd", "audit_app"),
    "token": ("cli.token_cmd", "token_app"),
}


def build_app(names: Iterable[str] = COMMANDS) -> typer.Typer:
    """The `cxr` app with the commands `names` (default: all), importing only their modules."""
    names = list(names)
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
    for name in names:
        module, attribute = COMMANDS[name]
        target = getattr(import_module(module), attribute)
        if isinstance(target, typer.Typer):
            app.add_typer(target, name=name)
        else:
            app.command(name=name)(target)
    if len(names) == 1:
        # Typer runs a lone command as the app itself; a callback keeps `cxr NAME ...` a group, as in the full app.
        app.callback()(_group)
    return app


def _group() -> None:
    """Chest X-ray retrieval by image similarity."""


def command_named(argv: list[str]) -> str | None:
    """The command `argv` runs (its first word, when that is a command's name); None for anything else."""
    return argv[0] if argv and argv[0] in COMMANDS else None


def main() -> None:
    name = command_named(sys.argv[1:])
    build_app([name] if name else COMMANDS)()


def __getattr__(name: str) -> Any:
    if name == "app":  # the whole app, built on first use (tests, typer.main.get_command)
        app = globals()["app"] = build_app()
        return app
    raise AttributeError(f"module 'cli.main' has no attribute {name!r}")


if __name__ == "__main__":
    main()

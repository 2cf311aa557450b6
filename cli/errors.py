"""The one place that maps domain errors to one line plus a hint (exit 1); tracebacks only with CXR_DEBUG=1."""

from __future__ import annotations

import os
import sys
from typing import Any

import click
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from services.errors import CxrError

stderr = Console(stderr=True, highlight=False)

# Exit codes: 0 ok, 1 domain error, 2 usage, and this one: some items failed while the rest went through.
EXIT_PARTIAL = 3


def printable(text: object) -> str:
    """`text` safe to print: control characters (a file name's ESC sequences, CR, newlines) shown escaped, so a
    crafted name cannot rewrite the terminal or forge lines."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def cell(text: object) -> Text:
    """`printable(text)` as a Rich cell, taken literally (a name holding `[bold]` is not markup)."""
    return Text(printable(text))


def _debug() -> bool:
    return os.environ.get("CXR_DEBUG", "").lower() in {"1", "true", "yes"}


class CxrGroup(TyperGroup):
    """A Typer group whose invoke turns CxrError (and bad CXR_* settings) into exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CxrError as exc:
            _report(f"error: {exc.message}", exc.hint)
        except ValidationError as exc:  # a CXR_* variable that does not parse
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "settings"
            _report(
                f"error: invalid setting {where}: {first.get('msg')}",
                "Check the CXR_* environment variables.",
            )
        except KeyboardInterrupt:
            stderr.print("interrupted")
            raise typer.Exit(130) from None


def _report(message: str, hint: str | None) -> None:
    if _debug():
        import traceback

        traceback.print_exc(file=sys.stderr)
    stderr.print(f"[bold red]{message}[/]", markup=True, soft_wrap=True)
    if hint:
        stderr.print(f"hint: {hint}", markup=False, soft_wrap=True)
    raise typer.Exit(1)

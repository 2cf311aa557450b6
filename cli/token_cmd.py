"""`cxr token add|list|revoke`: the named, scoped API tokens of CXR_API_TOKENS_FILE (services.api.tokens).

`cxr serve` rereads the file when it changes, so each change holds from the API's next request, with no restart.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cli.errors import stderr
from cli.options import JsonOpt, load_settings
from services.api.tokens import (
    SCOPES,
    TokenFile,
    add_token,
    check_name,
    parse_scopes,
    read_token_file,
    revoke_token,
    tokens_path,
)
from services.governance.audit import record_cli

token_app = typer.Typer(
    help="Named API tokens with scopes, kept in CXR_API_TOKENS_FILE (only a hash of each secret).",
    no_args_is_help=True,
)

NameArg = Annotated[str, typer.Argument(help="The token's name, as the audit trail records it.", show_default=False)]


@token_app.command()
def add(
    name: NameArg,
    scope: Annotated[
        list[str],
        typer.Option(
            "--scope",
            "-s",
            help=f"Scopes, comma-separated or repeated: {', '.join(SCOPES)} (admin implies the others).",
            show_default=False,
        ),
    ],
) -> None:
    """Add a token; print its secret once.

    The secret is printed alone on stdout (for scripts) and kept nowhere: the file holds only its SHA-256. The
    name: 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit.

    Example: CXR_API_TOKENS_FILE=/etc/cxr/tokens.jsonl cxr token add ward-viewer --scope search
    """
    try:
        check_name(name)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="NAME") from None
    try:
        scopes = parse_scopes(scope)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--scope") from None
    settings = load_settings()
    path = tokens_path(settings)
    token, secret = add_token(path, name, scopes)
    record_cli(settings, "token.add", token=token.name, scopes=list(token.scopes))
    typer.echo(secret)
    stderr.print(
        f"added token {token.name!r} ({', '.join(token.scopes)}) to {path}; keep the secret printed above now: "
        "it is stored nowhere and cannot be shown again",
        markup=False,
        soft_wrap=True,
    )
    _warn(read_token_file(path))


@token_app.command(name="list")
def list_(as_json: JsonOpt = False) -> None:
    """List the tokens: name, scopes, created.

    Never a secret or its hash. Lines of the file that the API skips are named on stderr.

    Example: cxr token list --json
    """
    path = tokens_path(load_settings())
    current = read_token_file(path)
    rows = [{"name": t.name, "scopes": list(t.scopes), "created_at": t.created_at} for t in current.tokens]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    elif not rows:
        typer.echo(f"no tokens in {path}" + ("" if path.exists() else " (it does not exist yet)"))
    else:
        width = max(len(r["name"]) for r in rows)
        typer.echo(f"{'name':<{width}}  {'scopes':<19}  created")
        for r in rows:
            typer.echo(f"{r['name']:<{width}}  {','.join(r['scopes']):<19}  {r['created_at'] or '-'}")
    _warn(current)


@token_app.command()
def revoke(name: NameArg) -> None:
    """Remove a token; the API refuses it at once.

    `cxr serve` rereads the file on its next request: no restart.

    Example: cxr token revoke ward-viewer
    """
    settings = load_settings()
    path = tokens_path(settings)
    revoke_token(path, name)
    record_cli(settings, "token.revoke", token=name)
    typer.echo(f"revoked {name}")
    _warn(read_token_file(path))


def _warn(current: TokenFile) -> None:
    for problem in current.problems:
        stderr.print(
            f"warning: {current.path}, {problem}: the API skips this line; fix or remove it",
            markup=False,
            soft_wrap=True,
        )

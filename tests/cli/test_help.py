"""Help that can be read: in an 80-column terminal every command's help names every option in full."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from cli.main import COMMANDS as TOP_LEVEL
from cli.main import app, build_app

WIDTH = 80


def _commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    # Typer's command objects (its own copy of click's): a group has `commands`
    yield path, group
    if hasattr(group, "commands"):
        for name, sub in group.commands.items():
            yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(typer.main.get_command(app)))


def test_every_command_is_walked() -> None:
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"index", "search", "eval", "train", "worker", "serve", "pacs pull", "dicom-listen"} <= names


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) or "cxr" for p, _ in COMMANDS])
def test_help_at_80_columns_shows_every_option_name_in_full(path: tuple[str, ...], command: Any) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": str(WIDTH)}, terminal_width=WIDTH)
    assert result.exit_code == 0, result.output
    text = result.output
    assert "…" not in text, text
    too_wide = [line for line in text.splitlines() if len(line) > WIDTH]
    assert not too_wide, too_wide
    for param in command.params:
        for name in [*param.opts, *param.secondary_opts]:
            whole = re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text)
            assert not name.startswith("-") or whole, f"{name} is cut in `cxr {' '.join(path)} --help`:\n{text}"


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS if p], ids=[" ".join(p) for p, _ in COMMANDS if p])
def test_a_command_built_alone_helps_as_in_the_whole_app(path: tuple[str, ...]) -> None:
    # `cxr NAME` builds an app of NAME's module only (cli.main.main); it must read and parse the same
    runner, env = CliRunner(), {"COLUMNS": str(WIDTH)}
    want = runner.invoke(app, [*path, "--help"], env=env, terminal_width=WIDTH)
    got = runner.invoke(build_app([path[0]]), [*path, "--help"], env=env, terminal_width=WIDTH)
    assert got.exit_code == want.exit_code == 0, got.output
    assert got.output == want.output


def test_the_command_table_names_every_command() -> None:
    assert set(TOP_LEVEL) == {p[0] for p, _ in COMMANDS if len(p) == 1}

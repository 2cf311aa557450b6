"""File names are data, not terminal commands: `cxr index` and `cxr failures` print a name holding ESC sequences,
a carriage return or Rich markup escaped, through the real CLI on real files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NAMES = ("\x1b[31mred\x1b[0m.png", "over\rwrite.png", "[bold]loud[red].png")


def test_failure_lines_show_control_characters_and_markup_escaped(tmp_path: Path, tiny_checkpoint: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in NAMES:
        (folder / name).write_bytes(b"not an image")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env |= {"CXR_DATA_DIR": str(tmp_path / "data"), "CXR_MODEL": str(tiny_checkpoint), "CXR_TORCH_THREADS": "1"}

    def cxr(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, cwd=REPO, capture_output=True)
        return (proc.stdout + proc.stderr).decode()

    printed = cxr("index", str(folder))
    assert "\x1b" not in printed and "\r" not in printed
    assert "\\x1b[31mred\\x1b[0m.png" in printed and "over\\rwrite.png" in printed and "[bold]loud[red].png" in printed

"""Where a test saves the screenshots the README shows: into docs/img/ when CXR_UPDATE_SCREENSHOTS=1 (remake them on
purpose, then commit), else beside the test's other temporary files, so that running the suite never rewrites a
tracked file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

DOCS_IMG = Path(__file__).resolve().parents[1] / "docs" / "img"


def screenshot_path(name: str) -> Path:
    scratch = Path(tempfile.gettempdir()) / f"cxr-screenshots-{os.getpid()}"
    folder = DOCS_IMG if os.environ.get("CXR_UPDATE_SCREENSHOTS") == "1" else scratch
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name

"""A checkpoint's config.json and id, read without torch (so `cxr info` and other light commands stay fast).

The folder layout and format constants live here; services.embedding.checkpoint saves and loads the weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from services.errors import ModelError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "cxr-encoder"
FORMAT_VERSION = 1


def checkpoint_id(path: str | Path) -> str:
    """A stable short id, `<folder>-<sha256 of the weights, 12 hex>`; read from config.json when recorded."""
    folder = checkpoint_folder(path)
    sha = read_checkpoint_config(folder).get("weights_sha256")
    if not isinstance(sha, str):
        weights_path = folder / WEIGHTS_FILE
        try:
            sha = _sha256_file(weights_path)
        except OSError as exc:
            raise ModelError(f"{weights_path}: unreadable ({exc})") from exc
    return f"{folder.resolve().name}-{sha[:12]}"


def checkpoint_folder(path: str | Path) -> Path:
    """The checkpoint folder named by `path` (the folder, or its config.json / model.safetensors)."""
    folder = Path(path)
    if folder.is_file() and folder.name in (CONFIG_FILE, WEIGHTS_FILE):
        folder = folder.parent
    if not folder.is_dir():
        raise ModelError(f"{folder}: no checkpoint folder there")
    return folder


def read_checkpoint_config(folder: Path) -> dict[str, Any]:
    """The checked contents of `folder/config.json`; ModelError when missing, unreadable or of another format."""
    path = folder / CONFIG_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path}: missing; {folder} is not a cxr checkpoint") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("encoder"), dict):
        raise ModelError(f"{path}: not a cxr encoder checkpoint (format is not {FORMAT!r})")
    version = doc.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelError(
            f"{path}: checkpoint format version {version!r} is not supported (this cxr reads {FORMAT_VERSION})",
            "Upgrade cxr to read this checkpoint.",
        )
    return doc


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

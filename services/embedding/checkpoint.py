"""Checkpoints: one folder holding config.json (the EncoderConfig) and model.safetensors.

Saves are atomic (temporary files, then rename) and config.json records the weights' sha256, so a load can
tell a torn or corrupt checkpoint from a good one and `checkpoint_id` never has to re-hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from services.durable import write_atomically
from services.errors import ModelError

from .checkpoint_meta import (
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    checkpoint_folder,
    checkpoint_id,
    read_checkpoint_config,
)
from .model import CxrEncoder
from .registry import EncoderConfig

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "checkpoint_id", "load_checkpoint", "save_checkpoint"]


def save_checkpoint(encoder: CxrEncoder, out_dir: str | Path, *, recipe: dict[str, Any] | None = None) -> Path:
    """Write `encoder` to the folder `out_dir` and return it; `recipe` is merged into the config's record.

    A new folder appears whole (built beside it, then renamed). An existing folder gets its two files
    replaced, weights first and config.json last; its other files (logs, metrics) are kept.
    """
    out_dir = Path(out_dir)
    config = encoder.config
    if recipe is not None:
        config = dataclasses.replace(config, recipe={**config.recipe, **recipe})
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in encoder.state_dict().items()}
    # One metadata key only: safetensors writes metadata in hash-map order, so several keys would make the
    # bytes (and so the checkpoint id) differ between saves of the same weights.
    weights = save_safetensors(tensors, metadata={"format": "pt"})
    sha = hashlib.sha256(weights).hexdigest()
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "weights_sha256": sha,
        "encoder": config.to_dict(),
    }
    try:
        config_bytes = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    except TypeError as exc:
        raise ModelError(f"the training recipe is not JSON-serialisable ({exc})") from exc

    if out_dir.exists() and not out_dir.is_dir():
        raise ModelError(f"{out_dir}: exists and is not a folder", "Choose another output path.")
    if out_dir.is_dir():
        write_atomically(out_dir / WEIGHTS_FILE, weights)
        write_atomically(out_dir / CONFIG_FILE, config_bytes)
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        _write_synced(staging / WEIGHTS_FILE, weights)
        _write_synced(staging / CONFIG_FILE, config_bytes)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_dir(out_dir.parent)
    return out_dir


def load_checkpoint(path: str | Path) -> CxrEncoder:
    """Rebuild the encoder saved in the folder `path`, in eval mode; ModelError names the file and reason."""
    folder = checkpoint_folder(path)
    doc = read_checkpoint_config(folder)
    config = EncoderConfig.from_dict(doc["encoder"])
    weights_path = folder / WEIGHTS_FILE
    try:
        weights = weights_path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{weights_path}: missing") from None
    except OSError as exc:
        raise ModelError(f"{weights_path}: unreadable ({exc})") from exc
    expected = doc.get("weights_sha256")
    if expected is not None and hashlib.sha256(weights).hexdigest() != expected:
        raise ModelError(
            f"{weights_path}: does not match {CONFIG_FILE} (sha256 differs); the file is corrupt "
            "or a save was interrupted",
            "Save the checkpoint again or restore it from a copy.",
        )
    try:
        state = load_safetensors(weights)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{weights_path}: not a readable safetensors file ({exc})") from exc
    with torch.device("meta"):  # skip the random init that the weights overwrite
        encoder = CxrEncoder(config)
    try:
        encoder.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0:3]
        raise ModelError(f"{weights_path}: weights do not fit {CONFIG_FILE} ({' '.join(reason)})") from exc
    return encoder.eval()


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

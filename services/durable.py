"""Writing a file so that it is either wholly there or not at all, and survives a crash once written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes, *, tmp_dir: Path | None = None, tmp_prefix: str | None = None) -> None:
    """Write `data` to a temporary file in `tmp_dir` (default: beside `path`; it must be on the same file system),
    fsync it, and rename it over `path` in one step: a reader sees the old file or the new one, never half of
    either. The temporary file (`tmp_prefix`...`.tmp`) is removed on any failure, which propagates."""
    fd, tmp = tempfile.mkstemp(
        prefix=tmp_prefix if tmp_prefix is not None else f".{path.name}.", suffix=".tmp", dir=tmp_dir or path.parent
    )
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_atomically(path: Path, data: bytes, *, mode: int = 0o600) -> bool:
    """Create `path` holding `data` with permissions `mode`, only if it does not exist yet: written and fsynced
    under a temporary name, then hard-linked into place, so a reader never sees it empty or half written and two
    first-time creators agree on one file. True when this call created it, False when it was already there."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # 0600 whatever the umask
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # fails if `path` exists, unlike a rename
        except FileExistsError:
            return False
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)

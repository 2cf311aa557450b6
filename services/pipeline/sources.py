"""Find stage: turn paths (files, folders) and an optional manifest into labelled ingest items."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from services.errors import DataError
from services.imaging.files import not_regular_reason
from services.labels import LabelError, check_label
from services.manifest import ManifestRow

LabelFrom = Literal["manifest", "folder", "none"]


@dataclass(frozen=True)
class IngestItem:
    """One file to ingest, with what we know of it before decoding."""

    path: Path
    label: str | None = None
    row: ManifestRow | None = None
    ref: str | None = None  # the payload's source_ref when not `file:<hmac of path>` (e.g. `spool:<SOP UID>`)


@dataclass(frozen=True)
class Unfound:
    """A path argument that could not be walked."""

    path: str
    reason: str


def _entry(path: Path, *, walking: bool) -> Path | Unfound:
    """A regular file (or a symlink to one) as itself; anything else as an Unfound with its reason.

    Only stat is used: a FIFO, socket or device is never opened (opening a FIFO blocks until a writer comes).
    """
    reason = not_regular_reason(path)
    if reason is None:
        return path
    if walking and reason == "file not found":
        reason = "vanished while walking"
    return Unfound(str(path), reason)


def walk_files(paths: Sequence[Path]) -> Iterator[Path | Unfound]:
    """Yield regular files under each path (sorted, recursive, hidden entries skipped) or an Unfound record.

    Named pipes, sockets, devices, broken symlinks, unreadable files and files that vanish mid-walk each become
    an Unfound ("named pipe (FIFO)", "socket", "device", "broken symlink", "permission denied", "vanished while
    walking"); none of them is ever opened. Symlinked folders are not followed.
    """
    for root in paths:
        root = Path(root)
        if root.is_dir():
            errors: list[OSError] = []
            for dirpath, dirnames, filenames in os.walk(root, onerror=errors.append):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if not name.startswith("."):
                        yield _entry(Path(dirpath) / name, walking=True)
            for err in errors:
                yield Unfound(str(err.filename or root), f"cannot list folder: {err.strerror or err}")
        elif root.exists() or root.is_symlink():
            yield _entry(root, walking=False)
        else:
            yield Unfound(str(root), "no such file or folder")


def build_items(
    paths: Sequence[Path], *, manifest: Sequence[ManifestRow] | None = None, label_from: LabelFrom = "none"
) -> tuple[list[IngestItem], list[Unfound]]:
    """Pair files with labels: from the manifest (matched by resolved path), the parent folder, or none.

    With a manifest and no paths, every manifest row is an item.
    """
    if label_from == "manifest" and manifest is None:
        raise DataError("labels from a manifest were asked for, but no --manifest was given")
    by_path = {row.path.resolve(): row for row in manifest or ()}
    if manifest is not None and not paths:
        return [IngestItem(row.path, row.label, row) for row in manifest], []
    items: list[IngestItem] = []
    unfound: list[Unfound] = []
    for entry in walk_files(paths):
        if isinstance(entry, Unfound):
            unfound.append(entry)
            continue
        row = by_path.get(entry.resolve())
        if row is not None:
            label: str | None = row.label
        elif label_from == "folder":
            try:
                label = check_label(entry.parent.name)
            except LabelError as exc:
                unfound.append(Unfound(str(entry), f"its folder name cannot be a label: {exc.message}"))
                continue
        else:
            label = None
        items.append(IngestItem(entry, label, row))
    return items, unfound

"""Read a labelled image manifest (CSV: path,label,patient_id,... as in cxr-public/manifest.csv)."""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.ages import top_code
from services.errors import DataError
from services.labels import LabelError, check_label

REQUIRED_COLUMNS = ("path", "label")
KNOWN_COLUMNS = ("path", "label", "patient_id", "view", "sex", "age", "source", "origin_dataset")


@dataclass(frozen=True)
class ManifestRow:
    """One labelled image. `path` is absolute; `patient_id` is raw PHI and must only ever be hashed; `age` is
    top-coded on reading (90 = 90 or over, services.ages)."""

    path: Path
    label: str
    patient_id: str | None = None
    view: str | None = None
    sex: str | None = None
    age: int | None = None
    source: str | None = None
    origin_dataset: str | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


def source_of(origin_dataset: str | None, source: str | None) -> str:
    """The source an image is balanced, split and audited by: origin_dataset, else source, else "unknown"."""
    return str(origin_dataset or source or "unknown")


def _opt(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


def _age(value: str | None, where: str) -> int | None:
    value = _opt(value)
    if value is None:
        return None
    try:
        years = int(float(value))
    except (ValueError, OverflowError):
        raise DataError(f"{where}: age {value!r} is not a number") from None
    return top_code(years)  # 90 and over are one band; an implausible age (negative, over 130) is dropped


def read_manifest(path: Path, refused: list[tuple[str, str]] | None = None) -> list[ManifestRow]:
    """Parse the manifest; relative image paths resolve against the manifest's folder.

    A row whose label is not a valid label (services.labels) is left out and noted in `refused` as
    ("manifest:line", reason), so the other rows go on; without `refused` it is a DataError naming the line."""
    path = Path(path)
    try:
        fh = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read manifest {path}: {exc.strerror or exc}") from exc
    with fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise DataError(f"manifest {path} lacks column(s) {', '.join(missing)}; it has {columns}")
        rows = []
        for lineno, rec in enumerate(reader, start=2):
            where = f"{path}:{lineno}"
            rel, label = _opt(rec.get("path")), _opt(rec.get("label"))
            if rel is None or label is None:
                raise DataError(f"{where}: empty path or label")
            try:
                label = check_label(label)
            except LabelError as exc:
                if refused is None:
                    raise DataError(f"{where}: {exc.message}", exc.hint) from None
                refused.append((where, f"row {lineno - 1} refused: {exc.message}"))
                continue
            rows.append(
                ManifestRow(
                    path=(path.parent / rel).resolve(),
                    label=label,
                    patient_id=_opt(rec.get("patient_id")),
                    view=_opt(rec.get("view")),
                    sex=_opt(rec.get("sex")),
                    age=_age(rec.get("age"), where),
                    source=_opt(rec.get("source")),
                    origin_dataset=_opt(rec.get("origin_dataset")),
                    extra={k: v for k, v in rec.items() if k and k not in KNOWN_COLUMNS and v},
                )
            )
    if not rows and not refused:
        raise DataError(f"manifest {path} has no rows")
    return rows


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (manifest and split hashes, content-derived point ids)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ManifestSet:
    """The union of one or more manifests, as training, evaluation and indexing read it.

    `root` is the deepest folder holding every manifest: split files name images relative to it, so one
    manifest keeps today's paths (relative to its own folder) and several get paths like
    `cxr-adult/images/...`. `sha256` is the file's hash for one manifest; for several, a hash over their hashes
    (order-independent), so a split records which union it was made from. `hashes` maps each manifest, named
    relative to `root`, to its own hash.
    """

    paths: tuple[Path, ...]
    rows: list[ManifestRow]
    root: Path
    sha256: str
    hashes: dict[str, str]
    manifest_of: dict[Path, str] = field(default_factory=dict)  # image path -> its manifest's name (in `hashes`)
    refused: tuple[tuple[str, str], ...] = ()  # ("manifest:line", reason) of rows left out for a bad label

    def name_of(self, manifest: Path) -> str:
        """The name (relative to `root`) of one of the joined manifests; DataError when it is not one of them."""
        path = Path(manifest).resolve()
        name = path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else None
        if name not in self.hashes:
            raise DataError(
                f"{manifest} is not one of the joined manifests", hint=f"Use one of: {', '.join(self.hashes)}."
            )
        return name


def as_paths(value: Path | Sequence[Path]) -> tuple[Path, ...]:
    """One manifest path or several, as a tuple (the configs' `manifests`)."""
    return (Path(value),) if isinstance(value, str | Path) else tuple(Path(p) for p in value)


def read_manifests(paths: Path | Sequence[Path]) -> ManifestSet:
    """Read and join manifests; each one's relative image paths resolve against its own folder.

    DataError when none is given, one is listed twice, two manifests name the same image file, or no row is left.
    Rows with a bad label are left out and listed in `refused`.
    """
    given = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    if not given:
        raise DataError("no manifest given", hint="Pass --manifest CSV (more than once to join several).")
    resolved = [p.resolve() for p in given]
    if len(set(resolved)) != len(resolved):
        raise DataError("the same manifest is given twice", hint="Pass each --manifest once.")
    root = Path(os.path.commonpath([p.parent for p in resolved]))
    rows: list[ManifestRow] = []
    hashes: dict[str, str] = {}
    seen: dict[Path, str] = {}  # image path -> the name of the manifest that lists it
    refused: list[tuple[str, str]] = []
    for path in given:
        name = path.resolve().relative_to(root).as_posix()
        for row in read_manifest(path, refused):
            if seen.setdefault(row.path, name) != name:
                raise DataError(
                    f"{row.path} is listed by both {root / seen[row.path]} and {path}",
                    hint="An image may belong to one manifest only; remove it from one of them.",
                )
            rows.append(row)
        hashes[name] = file_sha256(path)
    if len(given) == 1:
        sha = next(iter(hashes.values()))
    else:
        sha = hashlib.sha256("".join(f"{h}\n" for h in sorted(hashes.values())).encode()).hexdigest()
    if not rows:
        raise DataError(f"no usable row in {', '.join(map(str, given))}: every label was refused", refused[0][1])
    return ManifestSet(
        paths=tuple(given), rows=rows, root=root, sha256=sha, hashes=hashes, manifest_of=seen, refused=tuple(refused)
    )

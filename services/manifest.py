"""Read a labelled image manifest (CSV: path,label,patient_id,... as in cxr-public/manifest.csv)."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from services.ages import top_code
from services.errors import DataError

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


def read_manifest(path: Path) -> list[ManifestRow]:
    """Parse the manifest; relative image paths resolve against the manifest's folder."""
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
    if not rows:
        raise DataError(f"manifest {path} has no rows")
    return rows


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (manifest and split hashes, content-derived point ids)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()

"""Patient-level train/val/test splits stratified by label and source, saved as portable JSON, and label merging.

Every image of a patient lands in one split, so no patient is both queried and retrieved across splits. A row
without a patient_id is treated as its own patient (we cannot know better; it may leak if the source reuses a
patient). Split files name images by their manifest `path` (relative to the manifest folder) so they travel.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services.errors import DataError
from services.manifest import ManifestRow, ManifestSet, source_of

SPLIT_FORMAT = "cxr-split/1"
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """Image paths per split (relative to the manifest folder, as in the CSV), plus how they were made."""

    train: list[str]
    val: list[str]
    test: list[str]
    seed: int
    fractions: tuple[float, float, float]
    holdout_source: str | None
    manifest_sha256: str | None
    manifests: dict[str, str] = field(default_factory=dict)  # each joined manifest (relative name) -> sha256

    def parts(self) -> dict[str, list[str]]:
        """The three path lists by name, in train/val/test order."""
        return {"train": self.train, "val": self.val, "test": self.test}


def _relative_path(row: ManifestRow, root: Path) -> str:
    try:
        return Path(row.path).resolve().relative_to(root).as_posix()
    except ValueError:
        raise DataError(f"{row.path} is not under the manifest folder {root}") from None


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or any(not np.isfinite(f) or f < 0 for f in values) or abs(sum(values) - 1) > 1e-6:
        raise DataError(
            f"split fractions {fractions!r} are not three non-negative numbers summing to 1",
            hint="Pass train,val,test fractions such as 0.7,0.1,0.2.",
        )
    if values[0] == 0:
        raise DataError("the train fraction must be positive", hint="Pass e.g. 0.7,0.1,0.2.")
    return (values[0], values[1], values[2])


def _matches_source(row: ManifestRow, needle: str) -> bool:
    return any(needle in (value or "").lower() for value in (row.source, row.origin_dataset))


def _assign_groups(counts: np.ndarray, fractions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Greedy stratified assignment of patient groups (rows of `counts`, images per stratum) to splits.

    Groups go largest first (ties in a seeded random order); each goes to the split whose per-label targets
    are least filled, weighting each label by the group's images of it relative to the label's size, so rare
    labels are balanced too. Returns the split index per group.
    """
    n_groups = counts.shape[0]
    label_totals = counts.sum(axis=0).astype(np.float64)
    target = fractions[:, None] * label_totals[None, :]  # (3, L)
    filled = np.zeros_like(target)
    order = rng.permutation(n_groups)
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    open_splits = fractions > 0
    weights = counts / np.maximum(label_totals, 1.0)  # each group's share of each label
    assignment = np.empty(n_groups, dtype=np.int64)
    for g in order:
        share = weights[g]
        # Remaining room as a fraction of each split's target, averaged over the group's labels.
        room = np.divide(target - filled, target, out=np.zeros_like(target), where=target > 0)
        score = np.where(open_splits, room @ share, -np.inf)
        best = int(np.argmax(score))
        assignment[g] = best
        filled[best] += counts[g]
    return assignment


def make_split(
    rows: Sequence[ManifestRow],
    *,
    root: Path,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    holdout_source: str | None = None,
    manifest_sha256: str | None = None,
    manifests: dict[str, str] | None = None,
) -> Split:
    """Split manifest rows by patient into train/val/test, stratified by label and source (each (label, source)
    pair is a stratum, so every split holds each source's share of each label) and deterministic for a seed.

    `holdout_source` (a case-insensitive substring of `source` or `origin_dataset`) sends every image of the
    matching source to test, together with any patient that has an image there; everything else is split by
    `fractions` as usual. `root` is the manifest folder, against which paths are made relative.
    """
    fracs = _check_fractions(fractions)
    root = Path(root).resolve()
    if not rows:
        raise DataError("cannot split an empty manifest")
    paths = [_relative_path(row, root) for row in rows]
    if len(set(paths)) != len(paths):
        dup = next(p for p in paths if paths.count(p) > 1)
        raise DataError(f"the manifest lists {dup} more than once", hint="Remove duplicate rows.")

    # A row without patient_id is its own patient, keyed by its path so it cannot collide with a real id.
    keys = [
        row.patient_id if row.patient_id is not None else f"\0image:{path}"
        for row, path in zip(rows, paths, strict=True)
    ]
    group_ids: dict[str, int] = {}
    group_of = np.array([group_ids.setdefault(key, len(group_ids)) for key in keys], dtype=np.int64)
    row_strata = [(row.label, source_of(row.origin_dataset, row.source)) for row in rows]
    strata = sorted(set(row_strata))
    stratum_index = {stratum: i for i, stratum in enumerate(strata)}
    label_of = np.array([stratum_index[stratum] for stratum in row_strata], dtype=np.int64)
    counts = np.zeros((len(group_ids), len(strata)), dtype=np.int64)
    np.add.at(counts, (group_of, label_of), 1)

    held = np.zeros(len(group_ids), dtype=bool)
    if holdout_source is not None:
        needle = holdout_source.strip().lower()
        hit = np.array([bool(needle) and _matches_source(row, needle) for row in rows])
        if not hit.any():
            raise DataError(
                f"no image has a source or origin_dataset containing {holdout_source!r}",
                hint="Check the source column of the manifest for the exact name.",
            )
        held[group_of[hit]] = True  # the whole patient follows its held-out images

    rng = np.random.default_rng(seed)
    assignment = np.full(len(group_ids), SPLIT_NAMES.index("test"), dtype=np.int64)
    free = np.flatnonzero(~held)
    if free.size:
        assignment[free] = _assign_groups(counts[free], np.array(fracs), rng)

    parts: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    for path, group in zip(paths, group_of, strict=True):
        parts[SPLIT_NAMES[assignment[group]]].append(path)
    return Split(
        train=sorted(parts["train"]),
        val=sorted(parts["val"]),
        test=sorted(parts["test"]),
        seed=int(seed),
        fractions=fracs,
        holdout_source=holdout_source,
        manifest_sha256=manifest_sha256,
        manifests=dict(manifests or {}),
    )


def write_split(split: Split, path: Path) -> str:
    """Write the split as JSON (sorted, stable bytes) and return the file's SHA-256 hex digest."""
    payload = {
        "format": SPLIT_FORMAT,
        "seed": split.seed,
        "fractions": list(split.fractions),
        "holdout_source": split.holdout_source,
        "manifest_sha256": split.manifest_sha256,
        "manifests": split.manifests,
        "counts": {name: len(items) for name, items in split.parts().items()},
        **split.parts(),
    }
    data = (json.dumps(payload, indent=1) + "\n").encode("utf-8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def split_of(manifests: ManifestSet, *, seed: int = 0, holdout_source: str | None = None) -> Split:
    """A new split of the manifests' union, recording the union's hash and each manifest's."""
    return make_split(
        manifests.rows,
        root=manifests.root,
        seed=seed,
        holdout_source=holdout_source,
        manifest_sha256=manifests.sha256,
        manifests=manifests.hashes,
    )


def load_or_make_split(
    path: Path, manifests: ManifestSet, *, seed: int = 0, holdout_source: str | None = None
) -> tuple[Split, bool]:
    """The split at `path` if it was made from these manifests (and holdout), else a new one written there.

    A split.json left in a run folder by another manifest would otherwise be reused silently, and fail later
    with a misleading message (or quietly train on the wrong images). So a split whose recorded manifest hash
    differs is refused, naming both hashes; so is one made with another --holdout-source. A split that records
    no manifest hash (written by hand) is used as it is. Returns (split, newly made).
    """
    path = Path(path)
    manifest_sha256 = manifests.sha256
    if not path.exists():
        split = split_of(manifests, seed=seed, holdout_source=holdout_source)
        write_split(split, path)
        return split, True
    split = read_split(path)
    fix = f"Train into a new --out, delete {path} to re-split, or pass --split with a split of this manifest."
    if split.manifest_sha256 and split.manifest_sha256 != manifest_sha256:
        raise DataError(
            f"{path} was made from another manifest (sha256 {split.manifest_sha256[:12]}); this manifest's "
            f"sha256 is {manifest_sha256[:12]}",
            hint=fix,
        )
    if (split.holdout_source or None) != (holdout_source or None):
        raise DataError(
            f"{path} was made with holdout source {split.holdout_source!r}, this run asks for {holdout_source!r}",
            hint=fix,
        )
    return split, False


def _path_list(payload: dict, name: str, where: Path) -> list[str]:
    items = payload.get(name)
    if not isinstance(items, list) or not all(isinstance(item, str) and item for item in items):
        raise DataError(f"split file {where}: {name!r} must be a list of non-empty path strings")
    return list(items)


def _fractions(payload: dict, where: Path) -> tuple[float, float, float]:
    values = payload.get("fractions")
    if (
        not isinstance(values, list)
        or len(values) != 3
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    ):
        raise DataError(f"split file {where}: 'fractions' must be a list of three numbers")
    return (float(values[0]), float(values[1]), float(values[2]))


def read_split(path: Path) -> Split:
    """Read a split written by `write_split`; DataError if unreadable, malformed or overlapping."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"cannot read split file {path}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"split file {path} is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != SPLIT_FORMAT:
        raise DataError(f"split file {path} is not a {SPLIT_FORMAT} file", hint="Write it with write_split.")
    parts = {name: _path_list(payload, name, path) for name in SPLIT_NAMES}
    every = [item for items in parts.values() for item in items]
    if len(set(every)) != len(every):
        raise DataError(f"split file {path}: an image appears twice (within or across splits)")
    seed = payload.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise DataError(f"split file {path}: 'seed' must be an integer")
    holdout = payload.get("holdout_source")
    manifest_hash = payload.get("manifest_sha256")
    if not isinstance(holdout, str | None) or not isinstance(manifest_hash, str | None):
        raise DataError(f"split file {path}: holdout_source and manifest_sha256 must be strings or null")
    manifests = payload.get("manifests") or {}
    if not isinstance(manifests, dict) or not all(isinstance(v, str) for v in manifests.values()):
        raise DataError(f"split file {path}: 'manifests' must map manifest names to sha256 strings")
    return Split(
        train=parts["train"],
        val=parts["val"],
        test=parts["test"],
        seed=seed,
        fractions=_fractions(payload, path),
        holdout_source=holdout,
        manifest_sha256=manifest_hash,
        manifests=manifests,
    )


def split_rows(rows: Sequence[ManifestRow], split: Split, root: Path) -> dict[str, list[ManifestRow]]:
    """Manifest rows per split name, in split order; DataError if the split names a path the CSV lacks."""
    root = Path(root).resolve()
    by_path = {_relative_path(row, root): row for row in rows}
    out: dict[str, list[ManifestRow]] = {}
    for name, items in split.parts().items():
        missing = [item for item in items if item not in by_path]
        if missing:
            raise DataError(
                f"the {name} split names {len(missing)} image(s) not in the manifest, e.g. {missing[0]}",
                hint="Use the split with the manifest it was made from (compare manifest_sha256).",
            )
        out[name] = [by_path[item] for item in items]
    return out


def parse_merges(merges: Sequence[str]) -> dict[str, str]:
    """Parse `--merge a,b=c` specs into {old label: new label}; DataError on bad syntax or conflicts."""
    mapping: dict[str, str] = {}
    for spec in merges:
        sources, sep, target = spec.partition("=")
        names = [name.strip() for name in sources.split(",")]
        target = target.strip()
        if not sep or "=" in target or not target or not all(names):
            raise DataError(
                f"bad label merge {spec!r}",
                hint="Write it as old1,old2=new, e.g. pneumonia_bacterial,pneumonia_viral=pneumonia.",
            )
        for name in names:
            if mapping.get(name, target) != target:
                raise DataError(f"label {name!r} is merged into both {mapping[name]!r} and {target!r}")
            mapping[name] = target
    return mapping


def merge_labels(labels: Sequence[str], merges: Sequence[str]) -> list[str]:
    """Relabel with `--merge` specs like "pneumonia_bacterial,pneumonia_viral=pneumonia"; others unchanged.

    Each label is mapped once (merges do not chain), so `a=b` and `b=c` send a to b, not to c.
    """
    mapping = parse_merges(merges)
    return [mapping.get(label, label) for label in labels]


def merges_present(labels: Sequence[str], merges: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """For each merge target, which of its named labels the data had and which it did not.

    A merge names labels that may be absent (3-class specs list `lung_opacity` whether or not a manifest
    brings it); the report says which were merged, so a figure is never read as covering a label it lacked.
    """
    present = set(labels)
    out: dict[str, dict[str, list[str]]] = {}
    for old, new in parse_merges(merges).items():
        entry = out.setdefault(new, {"merged": [], "absent": []})
        entry["merged" if old in present else "absent"].append(old)
    return out

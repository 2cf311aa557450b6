"""The two sides of an evaluation as RetrievalSets: the gallery, indexed through the real pipeline and read back
from the store, and the queries, embedded in memory.

Gallery points are matched to manifest rows by the SHA-256 of the file bytes (`content_sha256`, in every
payload), never by path: a gallery survives the data folder moving, and payloads need not name their files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from services.ages import age_years
from services.config import Settings
from services.embedding import BatchEncoder
from services.errors import DataError, StoreError
from services.evaluation.types import EvalConfig, RetrievalSet
from services.index import PointRecord, VectorStore
from services.index.payload import patient_hash
from services.index.store import COLLECTION_NAME_MAX
from services.manifest import ManifestRow, source_of
from services.pipeline import IngestItem, IngestOptions, Ingestor
from services.pipeline.stages import ensure_same_model

Say = Callable[[str], None]


def default_collection(model_id: str, tag: str) -> str:
    """eval-<model id>-<tag>: one gallery per model and split (tag: split sha) or manifest (tag: all<sha>)."""
    safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in model_id)
    room = COLLECTION_NAME_MAX - len("eval--") - len(tag)
    return f"eval-{safe[-room:]}-{tag}"


def age_of(*values: object) -> float:
    """The first known age among `values` in whole years (top-coded, services.ages), else NaN."""
    for value in values:
        years = age_years(value)
        if years is not None:
            return float(years)
    return float("nan")


def relative(path: Path, root: Path) -> str:
    """`path` relative to `root` (POSIX), or the path itself when it lies elsewhere."""
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


def query_set(rows: Sequence[ManifestRow], salt: bytes, emb: np.ndarray, root: Path) -> RetrievalSet:
    """Rows as queries: each patient hashed with the store's salt, exactly as the gallery payloads are."""
    groups = [patient_hash(row.patient_id, salt) or f"\0query:{i}" for i, row in enumerate(rows)]
    return RetrievalSet(
        emb=np.asarray(emb, dtype=np.float32),
        labels=np.array([row.label for row in rows]),
        groups=np.array(groups),
        sources=np.array([source_of(r.origin_dataset, r.source) for r in rows]),
        paths=tuple(relative(row.path, root) for row in rows),
        ages=np.array([age_of(row.age) for row in rows], dtype=np.float64),
    )


def ensure_gallery(
    store: VectorStore,
    encoder: BatchEncoder,
    collection: str,
    rows: Sequence[ManifestRow],
    shas: Sequence[str],
    settings: Settings,
    cfg: EvalConfig,
    say: Say,
) -> dict:
    """Index the gallery rows whose file hash the collection lacks, through the real ingest pipeline."""
    present: set[str] = set()
    if store.has_collection(collection):
        ensure_same_model(store, collection, encoder.model_id)
        present = {str(p.payload.get("content_sha256")) for p in store.scroll(collection)}
    missing: dict[str, ManifestRow] = {}
    for row, sha in zip(rows, shas, strict=True):
        if sha not in present:
            missing.setdefault(sha, row)  # two rows with the same bytes are one point
    info = {"collection": collection, "reused": not missing, "indexed": 0, "skipped": 0, "failed": 0}
    if not missing:
        say(f"reusing gallery collection {collection!r} ({len(present)} images)")
        return info
    say(f"indexing {len(missing)} gallery images into {collection!r}")
    opts = IngestOptions.from_settings(settings, collection=collection, batch_size=cfg.batch_size)
    items = [IngestItem(r.path, r.label, r) for r in missing.values()]
    ingest = Ingestor(encoder, store, opts, salt=settings.salt).run(items)
    for err in ingest.failed:
        say(f"gallery image not indexed: {err.path} ({err.stage}: {err.reason})")
    info.update(indexed=ingest.indexed, skipped=ingest.skipped, failed=len(ingest.failed))
    info["reused"] = ingest.indexed == 0 and bool(present)
    info["seconds"] = round(ingest.seconds, 2)
    return info


def read_gallery(
    store: VectorStore,
    collection: str,
    rows: Sequence[ManifestRow],
    shas: Sequence[str],
    salt: bytes,
    root: Path,
) -> tuple[RetrievalSet, list[int], int]:
    """The gallery as stored (vectors, labels, patient hashes, sources), restricted to `rows`; ages come from
    the manifest row, else the payload (which may carry a DICOM header age).

    Returns the set (sorted by path), the position in `rows` of each gallery image, and the number of store
    points that match no row (a shared collection), which are ignored. A patient hash that matches none of its
    rows under the current salt would silently disable same-patient exclusion, so it is refused.
    """
    by_sha: dict[str, list[int]] = {}
    for i, sha in enumerate(shas):
        by_sha.setdefault(sha, []).append(i)
    points: list[tuple[PointRecord, int]] = []
    ignored = 0
    for point in store.scroll(collection, with_vectors=True):
        candidates = by_sha.get(str(point.payload.get("content_sha256")), [])
        if not candidates or point.vector is None:
            ignored += 1
            continue
        stored = point.payload.get("patient_hash")
        match = [i for i in candidates if stored == patient_hash(rows[i].patient_id, salt)]
        if not match:
            raise StoreError(
                f"collection {collection!r} holds patient hashes made with another salt",
                "Evaluate into a new --collection (or delete this one) so same-patient exclusion works.",
            )
        points.append((point, match[0]))
    if not points:
        raise DataError(f"collection {collection!r} holds none of the gallery images", hint="Check the index run.")
    points.sort(key=lambda pr: str(rows[pr[1]].path))
    groups = [p.payload.get("patient_hash") or f"\0gallery:{p.id}" for p, _ in points]
    gallery = RetrievalSet(
        emb=np.stack([np.asarray(p.vector, dtype=np.float32) for p, _ in points]),
        labels=np.array([str(p.payload.get("label")) for p, _ in points]),
        groups=np.array(groups),
        sources=np.array([source_of(p.payload.get("origin_dataset"), p.payload.get("source")) for p, _ in points]),
        paths=tuple(relative(rows[i].path, root) for _, i in points),
        ids=tuple(p.id for p, _ in points),
        ages=np.array([age_of(rows[i].age, p.payload.get("age")) for p, i in points], dtype=np.float64),
    )
    return gallery, [i for _, i in points], ignored

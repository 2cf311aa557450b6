"""The evaluation job: index the train split through the real pipeline, query it with the test split, report.

The gallery is read back from the store (the store is the source of truth), the full ranking is exact numpy
with the query's own patient removed, and a sample of queries is re-run through the store's own search to
check that both agree. Scoring (`score_retrieval`) takes embeddings directly, so the ablation benchmark scores
its rows with exactly the same definitions without going through a store.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from services.config import Settings
from services.embedding import BatchEncoder
from services.errors import DataError, StoreError
from services.evaluation.audit import shortcut_audit, store_agreement
from services.evaluation.baselines import LENIENT_K, RAW_PIXEL_SIZE, chance_summary, raw_pixel_embeddings
from services.evaluation.metrics import (
    average_precision,
    hit_at_k,
    lenient_map_at_k,
    map_at_r,
    precision_at_k,
    r_precision,
    recall_at_k,
    valid_queries,
)
from services.evaluation.ranking import rank_relevance
from services.evaluation.splits import Split, make_split, merge_labels, read_split, split_rows, write_split
from services.evaluation.summary import summarize
from services.imaging import decode_image, to_model_input
from services.index import PointRecord, VectorStore, open_store
from services.index.payload import patient_hash
from services.manifest import ManifestRow, file_sha256, read_manifest
from services.pipeline import IngestItem, IngestOptions, Ingestor
from services.pipeline.ingest import ensure_same_model

Say = Callable[[str], None]
AUDIT_K = 10


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation run of a checkpoint on a manifest's patient-level split."""

    model: Path  # checkpoint folder
    manifest: Path
    out_dir: Path
    split_file: Path | None = None  # default: the model's own split, else out_dir/split.json (made if missing)
    merges: tuple[str, ...] = ()  # e.g. ("pneumonia_bacterial,pneumonia_viral=pneumonia",)
    ks: tuple[int, ...] = (1, 5, 10)
    collection: str | None = None  # gallery collection; default eval-<model id>-<split sha>
    n_boot: int = 1000
    seed: int = 0
    batch_size: int = 64
    min_class_queries: int = 1  # classes with fewer test queries are reported but flagged
    baselines: bool = True  # also score raw pixels in the same run


@dataclass(frozen=True)
class RetrievalSet:
    """Images as scoring sees them: unit embeddings plus label, patient group and source per image."""

    emb: np.ndarray  # (N, D) float32, L2-normalised
    labels: np.ndarray  # (N,) str
    groups: np.ndarray  # (N,) str: salted patient hash, or a unique stand-in when the patient is unknown
    sources: np.ndarray  # (N,) str: origin_dataset, else source, else "unknown"
    paths: tuple[str, ...]
    ids: tuple[str, ...] = ()  # store point ids (gallery only)

    def relabelled(self, merges: Sequence[str]) -> RetrievalSet:
        """The same set with `--merge` specs applied to its labels."""
        if not merges:
            return self
        return replace(self, labels=np.array(merge_labels(self.labels.tolist(), merges)))

    def with_emb(self, emb: np.ndarray) -> RetrievalSet:
        """The same images under another embedding (the raw-pixel baseline reuses labels and patients)."""
        return replace(self, emb=np.asarray(emb, dtype=np.float32))


@dataclass(frozen=True)
class Scored:
    """One method's exact ranking of the gallery for every query, and its metrics on the valid queries."""

    order: np.ndarray  # (Q, N) gallery indices, best first; the query's own patient last
    rel: np.ndarray  # (Q, N) bool
    n_relevant: np.ndarray  # (Q,) R after exclusion
    n_eligible: np.ndarray  # (Q,) gallery size after exclusion
    valid: np.ndarray  # (Q,) R > 0
    per_query: dict[str, np.ndarray]  # metric -> values over valid queries
    summary: dict  # `summarize` output over valid queries
    audit: dict


def per_query_metrics(rel: np.ndarray, n_relevant: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Every reported metric per query, keyed "map", "map_at_r", "r_precision", "precision_at_<k>", ..."""
    out = {
        "map": average_precision(rel, n_relevant),
        "map_at_r": map_at_r(rel, n_relevant),
        "r_precision": r_precision(rel, n_relevant),
    }
    for k in ks:
        out[f"precision_at_{k}"] = precision_at_k(rel, k)
        out[f"recall_at_{k}"] = recall_at_k(rel, n_relevant, k)
        out[f"hit_at_{k}"] = hit_at_k(rel, k)
    out[f"lenient_map_at_{LENIENT_K}"] = lenient_map_at_k(rel, min(LENIENT_K, rel.shape[1]))
    return out


def score_retrieval(
    query: RetrievalSet, gallery: RetrievalSet, *, ks: Sequence[int], n_boot: int = 1000, seed: int = 0
) -> Scored:
    """Rank the whole gallery for each query (exact cosine, own patient excluded) and score it.

    Queries with no relevant gallery item (R = 0) have no defined AP; they are dropped from the metrics.
    """
    if len(gallery.labels) < max(ks):
        raise DataError(f"the gallery has {len(gallery.labels)} images, fewer than k={max(ks)}")
    order, rel, n_rel = rank_relevance(
        query.emb, gallery.emb, query.labels, gallery.labels, query.groups, gallery.groups
    )
    n_eligible = (query.groups[:, None] != gallery.groups[None, :]).sum(axis=1)
    valid = valid_queries(n_rel)
    if not valid.any():
        raise DataError("no test query has a relevant gallery image", hint="Check the split and the labels.")
    per_query = per_query_metrics(rel[valid], n_rel[valid], ks)
    summary = summarize(per_query, query.labels[valid], n_boot=n_boot, seed=seed)
    audit = shortcut_audit(
        order[valid],
        query.labels[valid],
        query.sources[valid],
        query.groups[valid],
        gallery.labels,
        gallery.sources,
        gallery.groups,
        k=AUDIT_K,
    )
    return Scored(order, rel, n_rel, n_eligible, valid, per_query, summary, audit)


def resolve_split(cfg: EvalConfig, rows: list[ManifestRow], recipe: dict, say: Say) -> tuple[Split, Path, bool]:
    """The split to use: --split, else the model's own (its folder, or the file its recipe names), else an
    earlier eval's, else a new seeded one written to out_dir. Returns (split, file, newly made)."""
    if cfg.split_file:
        candidates = [Path(cfg.split_file)]
        if not candidates[0].exists():
            raise DataError(f"split file {cfg.split_file} does not exist", hint="Drop --split to make a new one.")
    else:
        named = recipe.get("split_file")
        candidates = [Path(cfg.model) / "split.json", *([Path(named)] if named else [])]
        candidates.append(Path(cfg.out_dir) / "split.json")
    for path in candidates:
        if path.exists():
            say(f"using split {path}")
            return read_split(path), path, False
    path = Path(cfg.out_dir) / "split.json"
    split = make_split(rows, root=Path(cfg.manifest).parent, seed=cfg.seed, manifest_sha256=file_sha256(cfg.manifest))
    write_split(split, path)
    say(f"wrote a new patient-level split to {path} (the model's own split was not found)")
    return split, path, True


# ---- gallery and queries -----------------------------------------------------------------------------------


def default_collection(model_id: str, split_sha: str) -> str:
    """eval-<model id>-<split sha, 8 hex>: one gallery per model and split, within the store's name rules."""
    safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in model_id)
    return f"eval-{safe[-50:]}-{split_sha[:8]}"


def _uri(row: ManifestRow) -> str:
    return Path(row.path).resolve().as_uri()


def _source(values: dict) -> str:
    return str(values.get("origin_dataset") or values.get("source") or "unknown")


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


def decode_rows(
    rows: Sequence[ManifestRow], sizes: Sequence[int], settings: Settings, *, keep_failed: bool = False
) -> tuple[dict[int, np.ndarray], list[ManifestRow], list[tuple[str, str]]]:
    """Decode each row's image once and resize it to every size in `sizes` (the query path, also used for the
    raw-pixel gallery). Failures are listed and dropped, or kept as black images with `keep_failed`."""
    from concurrent.futures import ThreadPoolExecutor

    def one(row: ManifestRow) -> list[np.ndarray] | str:
        try:
            px = decode_image(row.path, max_pixels=settings.max_pixels, min_side=settings.min_side).pixels
            return [to_model_input(px, size) for size in sizes]
        except Exception as exc:  # noqa: BLE001 - one bad file must not end the run; the reason is kept
            return str(getattr(exc, "reason", exc))

    with ThreadPoolExecutor(max(1, settings.decode_workers), thread_name_prefix="cxr-eval-decode") as pool:
        results = list(pool.map(one, rows))
    errors = [(str(row.path), res) for row, res in zip(rows, results, strict=True) if isinstance(res, str)]
    use = [i for i, res in enumerate(results) if keep_failed or not isinstance(res, str)]
    out = {}
    for j, size in enumerate(sizes):
        blank = np.zeros((size, size), np.float32)
        tiles = [blank if isinstance(results[i], str) else results[i][j] for i in use]
        out[size] = np.stack(tiles) if tiles else np.zeros((0, size, size), np.float32)
    return out, [rows[i] for i in use], errors


def query_set(rows: Sequence[ManifestRow], salt: bytes, emb: np.ndarray, root: Path) -> RetrievalSet:
    """Test rows as queries: each patient hashed with the store's salt, exactly as the gallery payloads are."""
    groups = [patient_hash(row.patient_id, salt) or f"\0query:{i}" for i, row in enumerate(rows)]
    return RetrievalSet(
        emb=np.asarray(emb, dtype=np.float32),
        labels=np.array([row.label for row in rows]),
        groups=np.array(groups),
        sources=np.array([_source({"origin_dataset": r.origin_dataset, "source": r.source}) for r in rows]),
        paths=tuple(_relative(row.path, root) for row in rows),
    )


def ensure_gallery(
    store: VectorStore,
    encoder: BatchEncoder,
    collection: str,
    train: Sequence[ManifestRow],
    settings: Settings,
    cfg: EvalConfig,
    say: Say,
) -> dict:
    """Index the train rows the collection lacks through the real ingest pipeline; reuse what is there."""
    present: set[str] = set()
    if store.has_collection(collection):
        ensure_same_model(store, collection, encoder.model_id)
        present = {str(p.payload.get("source_uri")) for p in store.scroll(collection)}
    missing = [row for row in train if _uri(row) not in present]
    info = {"collection": collection, "reused": not missing, "indexed": 0, "skipped": 0, "failed": 0}
    if not missing:
        say(f"reusing gallery collection {collection!r} ({len(present)} images)")
        return info
    say(f"indexing {len(missing)} train images into {collection!r}")
    opts = IngestOptions(
        collection=collection,
        batch_size=cfg.batch_size,
        decode_workers=settings.decode_workers,
        max_pixels=settings.max_pixels,
        min_side=settings.min_side,
    )
    ingest = Ingestor(encoder, store, opts, salt=settings.salt).run([IngestItem(r.path, r.label, r) for r in missing])
    for err in ingest.failed:
        say(f"gallery image not indexed: {err.path} ({err.stage}: {err.reason})")
    info.update(indexed=ingest.indexed, skipped=ingest.skipped, failed=len(ingest.failed))
    info["reused"] = ingest.indexed == 0 and bool(present)
    info["seconds"] = round(ingest.seconds, 2)
    return info


def read_gallery(
    store: VectorStore, collection: str, train: Sequence[ManifestRow], salt: bytes, root: Path
) -> tuple[RetrievalSet, list[ManifestRow], int]:
    """The gallery as stored (vectors, labels, patient hashes, sources), restricted to the train split.

    Points outside the train split (a shared collection) are ignored and counted. A patient hash that does
    not match the current salt would silently disable same-patient exclusion, so it is refused.
    """
    by_uri = {_uri(row): row for row in train}
    points: list[tuple[PointRecord, ManifestRow]] = []
    ignored = 0
    for point in store.scroll(collection, with_vectors=True):
        row = by_uri.get(str(point.payload.get("source_uri")))
        if row is None or point.vector is None:
            ignored += 1
            continue
        if point.payload.get("patient_hash") != patient_hash(row.patient_id, salt):
            raise StoreError(
                f"collection {collection!r} holds patient hashes made with another salt",
                "Evaluate into a new --collection (or delete this one) so same-patient exclusion works.",
            )
        points.append((point, row))
    if not points:
        raise DataError(f"collection {collection!r} holds none of the train images", hint="Check the index run.")
    points.sort(key=lambda pr: str(pr[1].path))
    groups = [p.payload.get("patient_hash") or f"\0gallery:{p.id}" for p, _ in points]
    gallery = RetrievalSet(
        emb=np.stack([np.asarray(p.vector, dtype=np.float32) for p, _ in points]),
        labels=np.array([str(p.payload.get("label")) for p, _ in points]),
        groups=np.array(groups),
        sources=np.array([_source(p.payload) for p, _ in points]),
        paths=tuple(_relative(row.path, root) for _, row in points),
        ids=tuple(p.id for p, _ in points),
    )
    return gallery, [row for _, row in points], ignored


def run_eval(cfg: EvalConfig, settings: Settings, *, on_event: Say | None = None) -> dict:
    """Evaluate `cfg.model`; writes report.json, report.md, rankings.jsonl and plots to out_dir; returns the
    report dict."""
    from services.evaluation.plots import write_plots
    from services.evaluation.report import build_report, write_rankings, write_report

    say: Say = on_event or (lambda msg: None)
    t0 = time.perf_counter()
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = read_manifest(cfg.manifest)
    root = Path(cfg.manifest).parent
    encoder = BatchEncoder.from_checkpoint(cfg.model, batch_size=cfg.batch_size, bf16=settings.bf16)
    recipe = dict(encoder.encoder.config.recipe)
    split, split_path, split_new = resolve_split(cfg, rows, recipe, say)
    parts = split_rows(rows, split, root)
    if not parts["train"] or not parts["test"]:
        raise DataError("the split needs both train (gallery) and test (query) images")
    split_sha = file_sha256(split_path)
    trained_on = recipe.get("split_sha256")
    if trained_on and trained_on != split_sha:
        say(f"WARNING: the model was trained on another split (sha256 {trained_on[:12]}): test images may leak")
    collection = cfg.collection or default_collection(encoder.model_id or "model", split_sha)

    say(f"decoding {len(parts['test'])} test queries")
    sizes = (encoder.image_size, RAW_PIXEL_SIZE)
    pixels, q_rows, q_errors = decode_rows(parts["test"], sizes, settings)
    for path, reason in q_errors:
        say(f"skipped query {path}: {reason}")
    query = query_set(q_rows, settings.salt, encoder.encode(pixels[encoder.image_size]), root)

    store = open_store(settings)
    try:
        indexing = ensure_gallery(store, encoder, collection, parts["train"], settings, cfg, say)
        gallery, g_rows, n_ignored = read_gallery(store, collection, parts["train"], settings.salt, root)
        say(f"gallery: {len(gallery.labels)} images read back from {collection!r}")
        query, gallery = query.relabelled(cfg.merges), gallery.relabelled(cfg.merges)
        scored = score_retrieval(query, gallery, ks=cfg.ks, n_boot=cfg.n_boot, seed=cfg.seed)
        agreement = store_agreement(store, collection, query, gallery, scored, n_ignored=n_ignored)
    finally:
        store.close()
    say(f"store agreement on {agreement['n_checked']} queries: {agreement['rate']:.3f}")

    chance = chance_summary(scored, query.labels, ks=cfg.ks, n_boot=cfg.n_boot, seed=cfg.seed)
    baselines: dict[str, tuple[dict, dict]] = {}
    if cfg.baselines:
        say("scoring the raw-pixel baseline")
        thumbs, _, g_errors = decode_rows(g_rows, (RAW_PIXEL_SIZE,), settings, keep_failed=True)
        raw_scored = score_retrieval(
            query.with_emb(raw_pixel_embeddings(pixels[RAW_PIXEL_SIZE])),
            gallery.with_emb(raw_pixel_embeddings(thumbs[RAW_PIXEL_SIZE])),
            ks=cfg.ks,
            n_boot=cfg.n_boot,
            seed=cfg.seed,
        )
        baselines["raw_pixels"] = (raw_scored.summary, raw_scored.audit)
        indexing["raw_pixel_decode_errors"] = len(g_errors)

    meta = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "collection": collection,
        "model_id": encoder.model_id,
        "model_recipe": recipe,
        "split": {
            "file": str(split_path),
            "sha256": split_sha,
            "created": split_new,
            "matches_training_split": None if not trained_on else trained_on == split_sha,
            "seed": split.seed,
            "counts": {name: len(items) for name, items in split.parts().items()},
        },
        "n_queries": int(scored.valid.sum()),
        "n_queries_without_relevant": int((~scored.valid).sum()),
        "n_query_decode_errors": len(q_errors),
        "n_gallery": len(gallery.labels),
        "n_gallery_ignored": n_ignored,
        "indexing": indexing,
        "store_agreement": agreement,
    }
    report = build_report(scored.summary, scored.audit, chance, baselines, meta, ks=cfg.ks, cfg=cfg)
    write_rankings(out_dir / "rankings.jsonl", query, gallery, scored, k=AUDIT_K)
    say("drawing plots")
    figures = write_plots(out_dir, report, query, gallery, scored, root, settings, seed=cfg.seed)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    write_report(report, out_dir, figures)
    say(f"wrote {out_dir / 'report.json'} and {out_dir / 'report.md'}")
    return json.loads((out_dir / "report.json").read_text(encoding="utf-8"))

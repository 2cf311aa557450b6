"""The evaluation job: index a gallery through the real pipeline, query it, check for leaks, score, report.

In-split, the train split of the manifest is the gallery and its test split the queries. With `queries`, every
row of another manifest queries the train split (or, with `gallery="all"`, the whole manifest). The gallery is
read back from the store (the store is the source of truth), the full ranking is exact numpy with the query's
own patient removed, and a sample of queries is re-run through the store's own search to check that both
agree. Every report counts and lists the queries whose file, or a near-duplicate of it, is in the gallery.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from services.config import Settings
from services.embedding import BatchEncoder
from services.errors import ConfigError, DataError
from services.evaluation.audit import store_agreement
from services.evaluation.baselines import RAW_PIXEL_SIZE, chance_summary, raw_pixel_embeddings
from services.evaluation.decoding import decode_rows
from services.evaluation.gallery import default_collection, ensure_gallery, query_set, read_gallery
from services.evaluation.imagenet import IMAGENET, ImagenetBaseline
from services.evaluation.leakage import find_leaks, leak_summary
from services.evaluation.scoring import AUDIT_K, score_retrieval
from services.evaluation.types import EvalConfig
from services.index import open_store
from services.manifest import ManifestRow, ManifestSet, file_sha256, read_manifest, read_manifests
from services.splits import Split, merges_present, read_split, split_of, split_rows, write_split

Say = Callable[[str], None]


def resolve_split(cfg: EvalConfig, manifests: ManifestSet, recipe: dict, say: Say) -> tuple[Split, Path, bool]:
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
    split = split_of(manifests, seed=cfg.seed)
    write_split(split, path)
    say(f"wrote a new patient-level split to {path} (the model's own split was not found)")
    return split, path, True


def check_training_split(cfg: EvalConfig, split_path: Path, split_sha: str, trained_on: str | None, say: Say) -> bool:
    """True when the split is the one the model was trained on; refuses another one unless allowed.

    A checkpoint that records no training split (not made by `cxr train`) cannot be checked: that is allowed
    and said. Returns False only when a mismatch was allowed by `allow_split_mismatch`.
    """
    if not trained_on:
        say("the model records no training split, so its training images cannot be checked against the gallery")
        return True
    if trained_on == split_sha:
        return True
    fact = (
        f"the model was trained on another split (sha256 {trained_on[:12]}) than {split_path} "
        f"(sha256 {split_sha[:12]}): test images may be in its training data"
    )
    if not cfg.allow_split_mismatch:
        raise ConfigError(
            fact,
            "Drop --split to use the model's own split, or pass --allow-split-mismatch to evaluate anyway "
            "(report.md then says so).",
        )
    say(f"WARNING: {fact}; evaluating anyway (--allow-split-mismatch)")
    return False


def _select(cfg: EvalConfig, manifests: ManifestSet, recipe: dict, say: Say) -> tuple[list, list, Path, dict, str]:
    """(gallery rows, query rows, query root, split block for the report, collection tag)."""
    rows, manifest_sha = manifests.rows, manifests.sha256
    recorded = recipe.get("split_sha256")
    if cfg.gallery == "all":
        split_meta = {"file": None, "sha256": None, "gallery": "all", "model_split_sha256": recorded}
        gallery_rows, tag = rows, f"all{manifest_sha[:8]}"
        test_rows: list[ManifestRow] = []
    else:
        split, split_path, created = resolve_split(cfg, manifests, recipe, say)
        parts = split_rows(rows, split, manifests.root)
        split_sha = file_sha256(split_path)
        matches = check_training_split(cfg, split_path, split_sha, recorded, say)
        split_meta = {
            "file": str(split_path),
            "sha256": split_sha,
            "gallery": "train",
            "created": created,
            "model_split_sha256": recorded,
            "matches_training_split": None if not recorded else matches,
            "mismatch_allowed": not matches,
            "manifest_matches": None if not split.manifest_sha256 else split.manifest_sha256 == manifest_sha,
            "manifests": split.manifests or manifests.hashes,
            "seed": split.seed,
            "holdout_source": split.holdout_source,
            "counts": {name: len(items) for name, items in split.parts().items()},
        }
        gallery_rows, test_rows, tag = parts["train"], parts["test"], split_sha[:8]
    if cfg.queries is not None:
        query_rows, query_root = read_manifest(cfg.queries), Path(cfg.queries).parent
    else:
        query_rows, query_root = test_rows, manifests.root
    if cfg.query_manifests:
        names = {manifests.name_of(path) for path in cfg.query_manifests}
        query_rows = [row for row in query_rows if manifests.manifest_of.get(row.path) in names]
        say(f"queries: the {len(query_rows)} test images of {', '.join(sorted(names))}")
    if not gallery_rows or not query_rows:
        raise DataError("the evaluation needs both gallery (train) and query (test) images")
    return gallery_rows, query_rows, query_root, split_meta, tag


def run_eval(cfg: EvalConfig, settings: Settings, *, on_event: Say | None = None) -> dict:
    """Evaluate `cfg.model`; writes report.json, report.md, rankings.jsonl and plots to out_dir; returns the
    report dict."""
    from services.evaluation.plots import write_plots
    from services.evaluation.report import build_report, write_rankings, write_report

    say: Say = on_event or (lambda msg: None)
    t0 = time.perf_counter()
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifests = read_manifests(cfg.manifests)
    root = manifests.root
    encoder = BatchEncoder.from_checkpoint(cfg.model, batch_size=cfg.batch_size, bf16=settings.bf16)
    recipe = dict(encoder.encoder.config.recipe)
    g_rows, q_rows, q_root, split_meta, tag = _select(cfg, manifests, recipe, say)
    collection = cfg.collection or default_collection(encoder.model_id or "model", tag)

    say(f"decoding {len(q_rows)} queries and {len(g_rows)} gallery images")
    dq = decode_rows(q_rows, (encoder.image_size, RAW_PIXEL_SIZE), settings)
    dg = decode_rows(g_rows, (RAW_PIXEL_SIZE,), settings)
    for path, reason in dq.errors:
        say(f"skipped query {path}: {reason}")
    for path, reason in dg.errors:
        say(f"gallery image not indexed: {path} ({reason})")
    if not dq.rows:
        raise DataError("none of the query images could be decoded", hint="See the skipped files above.")
    query = query_set(dq.rows, settings.salt, encoder.encode(dq.pixels[encoder.image_size]), q_root)

    store = open_store(settings)
    try:
        indexing = ensure_gallery(store, encoder, collection, dg.rows, dg.sha256, settings, cfg, say)
        gallery, g_idx, n_ignored = read_gallery(store, collection, dg.rows, dg.sha256, settings.salt, root)
        say(f"gallery: {len(gallery.labels)} images read back from {collection!r}")
        leaks = find_leaks(
            dq.sha256,
            dq.dhash,
            [dg.sha256[i] for i in g_idx],
            dg.dhash[g_idx],
            max_bits=cfg.near_duplicate_bits,
        )
        leakage = leak_summary(
            leaks,
            query.paths,
            gallery.paths,
            excluded=cfg.exclude_leaks,
            queries_without_patient=sum(r.patient_id is None for r in dq.rows),
            gallery_without_patient=sum(dg.rows[i].patient_id is None for i in g_idx),
            queries_sharing_gallery_patient=int(np.isin(query.groups, gallery.groups).sum()),
        )
        say(
            f"leakage: {leakage['exact']['n_queries']} queries are byte-identical to a gallery image, "
            f"{leakage['near_duplicate']['n_queries']} near-duplicates"
            + (" (excluded)" if cfg.exclude_leaks and leaks.any.any() else "")
        )
        keep = ~leaks.any if cfg.exclude_leaks else np.ones(len(query.labels), dtype=bool)
        query_labels_before, gallery_labels_before = query.labels.tolist(), gallery.labels.tolist()
        query = query.subset(keep).relabelled(cfg.merges)
        gallery = gallery.relabelled(cfg.merges)
        score_args = {"ks": cfg.ks, "n_boot": cfg.n_boot, "seed": cfg.seed, "min_class_queries": cfg.min_class_queries}
        scored = score_retrieval(query, gallery, **score_args)
        agreement = store_agreement(store, collection, query, gallery, scored, n_ignored=n_ignored)
    finally:
        store.close()
    say(f"store agreement on {agreement['n_checked']} queries: {agreement['rate']:.3f}")

    chance = chance_summary(scored, query.labels, **score_args)
    baselines: dict[str, tuple[dict, dict]] = {}
    if cfg.baselines:
        say("scoring the raw-pixel baseline")
        raw_scored = score_retrieval(
            query.with_emb(raw_pixel_embeddings(dq.pixels[RAW_PIXEL_SIZE][keep])),
            gallery.with_emb(raw_pixel_embeddings(dg.pixels[RAW_PIXEL_SIZE][g_idx])),
            **score_args,
        )
        baselines["raw_pixels"] = (raw_scored.summary, raw_scored.audit)
        lite, why = ImagenetBaseline.load(settings, batch_size=cfg.batch_size)
        if lite is None:
            say(f"no ImageNet baseline: {why}")
        else:
            say("scoring the frozen ImageNet EfficientNet-Lite0 baseline (224 px, no training)")
            lite_scored = score_retrieval(
                query.with_emb(lite.embed([r for r, k in zip(dq.rows, keep, strict=True) if k], settings)),
                gallery.with_emb(lite.embed([dg.rows[i] for i in g_idx], settings)),
                **score_args,
            )
            baselines[IMAGENET] = (lite_scored.summary, lite_scored.audit)

    meta = {
        "config": {
            **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
            "manifest": [str(p) for p in cfg.manifests],
        },
        "merges": merges_present([*gallery_labels_before, *query_labels_before], cfg.merges),
        "collection": collection,
        "model_id": encoder.model_id,
        "model_recipe": recipe,
        "split": split_meta,
        "queries": {
            "manifest": str(cfg.queries) if cfg.queries else None,
            "from": "query manifest" if cfg.queries else "test split",
            "only_from_manifests": [str(p) for p in cfg.query_manifests],
            "n_rows": len(q_rows),
        },
        "gallery_from": "all rows of the manifest" if cfg.gallery == "all" else "train split",
        "leakage": leakage,
        "n_queries": int(scored.valid.sum()),
        "n_queries_without_relevant": int((~scored.valid).sum()),
        "n_queries_excluded_as_leaks": int((~keep).sum()),
        "n_query_decode_errors": len(dq.errors),
        "n_gallery": len(gallery.labels),
        "n_gallery_decode_errors": len(dg.errors),
        "n_gallery_ignored": n_ignored,
        "indexing": indexing,
        "store_agreement": agreement,
    }
    report = build_report(scored.summary, scored.audit, chance, baselines, meta, ks=cfg.ks, cfg=cfg)
    write_rankings(out_dir / "rankings.jsonl", query, gallery, scored, k=AUDIT_K)
    say("drawing plots")
    figures = write_plots(out_dir, report, query, gallery, scored, (q_root, root), settings, seed=cfg.seed)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    write_report(report, out_dir, figures)
    say(f"wrote {out_dir / 'report.json'} and {out_dir / 'report.md'}")
    return json.loads((out_dir / "report.json").read_text(encoding="utf-8"))

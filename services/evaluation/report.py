"""Report writer: report.json (every number, with its definition) and report.md (the honest reading order).

The markdown leads with the metrics that cannot be gamed by a lucky first hit or a common class: full mAP,
MAP@R, R-Precision and P@K, each beside raw pixels and the exact chance level. True Recall@K, Hit@K and the
lenient AP@10/hits that prior work called "mAP" come later, with the reason they mislead.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.evaluation.audit import AUDIT_FIELDS
from services.evaluation.types import EvalConfig, RetrievalSet, Scored

LENIENT_KEY = "lenient_map_at_10"
RANKED_KEYS = ("map", "map_at_r", "r_precision")
AT_K_KEYS = ("precision_at_k", "recall_at_k", "hit_at_k")
NAMES = {
    "map": "full mAP",
    "map_at_r": "MAP@R",
    "r_precision": "R-Precision",
    "precision_at_k": "P@{k}",
    "recall_at_k": "Recall@{k}",
    "hit_at_k": "Hit@{k}",
    LENIENT_KEY: "lenient AP@10/hits",
}
DEFINITIONS = {
    "relevant": "a gallery image is relevant to a query when their labels are equal (after any --merge); "
    "gallery images of the query's own patient are removed before ranking and never count",
    "map": "full mAP: mean over queries of AP = (1/R) * sum of precision@i over every rank i holding a relevant "
    "image, over the whole ranked gallery; R = relevant gallery images for that query",
    "map_at_r": "MAP@R (Musgrave et al. 2020): (1/R) * sum of precision@i over relevant ranks i <= R",
    "r_precision": "R-Precision: relevant images among the top R, divided by R",
    "precision_at_k": "P@K: relevant images among the top K, divided by K",
    "recall_at_k": "Recall@K (true recall): relevant images among the top K, divided by R; at most K/R",
    "hit_at_k": "Hit@K: 1 if any of the top K is relevant, else 0 (what prior work called recall@K)",
    LENIENT_KEY: "lenient AP@10/hits: sum of precision@i over relevant ranks i <= 10, divided by the number of "
    "relevant images in the top 10 instead of R; for comparison with prior work only, never an mAP",
    "micro": "mean over queries (common classes weigh more)",
    "macro": "mean of the per-class means over the classes with at least N scored queries (every such class "
    "weighs the same); N is stated with the table, the other classes are listed apart",
    "ci": "95% percentile bootstrap interval over queries; per-class and macro resample within each class",
    "chance": "exact expectation of each metric under a uniformly random ranking of the same gallery with the "
    "query's own patient removed (P@K and R-Precision: prevalence R/N; Recall@K: K/N)",
    "raw_pixels": "cosine on images downsampled to 32x32, flattened and L2-normalised, scored identically",
    "imagenet_lite0": "cosine on frozen ImageNet-1k EfficientNet-Lite0 features (grey repeated to RGB, 224 px, "
    "global average pool of the 1280-d head, L2-normalised), no training: what one would try first",
    "dropped_queries": "queries whose class has no gallery image after exclusion (R = 0) have no AP; dropped",
    "ties": "gallery images with equal cosine are ordered by a hash of (seed, store point id), not by gallery "
    "order (which is sorted by path, and paths often begin with the label)",
    "leak_exact": "a query whose file bytes have the same SHA-256 as a gallery image's",
    "leak_near_duplicate": "a query whose 256-bit difference hash (dHash of the image shrunk to 17x16) is within "
    "the stated number of bits of a gallery image's, and that has no exact copy there; catches re-encoded, "
    "resized and re-windowed copies, not crops",
}
CAVEAT = (
    "**Label is confounded with source.** In cxr-public, normal and pneumonia images are almost all Kermany "
    "pediatric films from one hospital, while COVID-19 images are adult: figures from papers (often with arrows "
    "or text) and Hannover ICU AP films. A model can score well by recognising the source rather than the "
    "disease (DeGrave et al., Nature Machine Intelligence 2021); see the shortcut audit. Kermany `personN` ids "
    "may merge patients, which makes patient exclusion conservative. Read per-class numbers, and never call a "
    "number here diagnostic."
)


def _interval(d: Mapping[str, Any]) -> dict:
    return {"mean": d["mean"], "ci_low": d["ci_low"], "ci_high": d["ci_high"]}


def _block(metric: Mapping[str, Any]) -> dict:
    """Micro mean with its CI at the top level, the macro mean beside it."""
    return {**_interval(metric["micro"]), "macro": _interval(metric["macro"])}


def shape_summary(summary: Mapping[str, Any], ks: Sequence[int], *, min_class_queries: int = 1) -> dict:
    """Re-key a `summarize` result into the report layout: map, map_at_r, ..., precision_at_k {"1": ...},
    lenient_map_at_10 and per_class {label: {same keys, n_queries, few_queries}}."""
    metrics = summary["metrics"]
    out: dict[str, Any] = {key: _block(metrics[key]) for key in RANKED_KEYS}
    for key in AT_K_KEYS:
        stem = key.removesuffix("_k")
        out[key] = {str(k): _block(metrics[f"{stem}_{k}"]) for k in ks}
    out[LENIENT_KEY] = _block(metrics[LENIENT_KEY])
    per_class: dict[str, dict] = {}
    for cls in summary["classes"]:
        entry: dict[str, Any] = {key: _interval(metrics[key]["per_class"][cls]) for key in RANKED_KEYS}
        for key in AT_K_KEYS:
            stem = key.removesuffix("_k")
            entry[key] = {str(k): _interval(metrics[f"{stem}_{k}"]["per_class"][cls]) for k in ks}
        entry[LENIENT_KEY] = _interval(metrics[LENIENT_KEY]["per_class"][cls])
        n = int(metrics["map"]["per_class"][cls]["n_queries"])
        entry["n_queries"] = n
        entry["few_queries"] = n < min_class_queries
        per_class[cls] = entry
    out["per_class"] = per_class
    return out


def build_report(
    model: Mapping[str, Any],
    model_audit: Mapping[str, Any],
    chance: Mapping[str, Any],
    baselines: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Any]]],
    meta: Mapping[str, Any],
    *,
    ks: Sequence[int],
    cfg: EvalConfig,
) -> dict:
    """The report dict (JSON-ready): model metrics at the top level, then chance, baselines, audit, meta."""
    few = cfg.min_class_queries
    report = shape_summary(model, ks, min_class_queries=few)
    report[LENIENT_KEY]["note"] = "LENIENT, for comparison with prior work only: divides by hits, not by R"
    report["chance"] = shape_summary(chance, ks, min_class_queries=few)
    report["baselines"] = {name: shape_summary(s, ks, min_class_queries=few) for name, (s, _) in baselines.items()}
    report["audit"] = {"k": model_audit["k"], "model": dict(model_audit)}
    report["audit"].update({name: dict(a) for name, (_, a) in baselines.items()})
    report["definitions"] = dict(DEFINITIONS)
    report["bootstrap"] = {"n_boot": model["n_boot"], "seed": model["seed"], "alpha": model["alpha"]}
    report["classes"] = list(model["classes"])
    in_macro = list(model.get("macro_classes", model["classes"]))
    counts = {c: report["per_class"][c]["n_queries"] for c in model["classes"]}
    report["macro"] = {
        "min_class_queries": few,
        "classes": in_macro,
        "left_out": [c for c in model["classes"] if c not in in_macro],
        "fallback_all_classes": any(counts[c] < few for c in in_macro),  # no class had N queries
    }
    report.update(meta)
    return report


def write_rankings(path: Path, query: RetrievalSet, gallery: RetrievalSet, scored: Scored, *, k: int) -> None:
    """One JSON line per query: its path and label, and its top k gallery images (path, label, cosine)."""
    with Path(path).open("w", encoding="utf-8") as fh:
        for q in range(len(query.labels)):
            top = scored.order[q, : min(k, int(scored.n_eligible[q]))]
            scores = gallery.emb[top] @ query.emb[q]
            hits = [
                {"path": gallery.paths[i], "label": str(gallery.labels[i]), "score": round(float(s), 6)}
                for i, s in zip(top.tolist(), scores.tolist(), strict=True)
            ]
            line = {"query": query.paths[q], "label": str(query.labels[q]), "scored": bool(scored.valid[q])}
            fh.write(json.dumps({**line, "top": hits}) + "\n")


def write_report(report: Mapping[str, Any], out_dir: Path, figures: Mapping[str, str]) -> tuple[Path, Path]:
    """Write report.json and report.md into `out_dir`; return both paths."""
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    json_path.write_text(json.dumps(report, indent=1, default=_jsonable) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(report, figures), encoding="utf-8")
    return json_path, md_path


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


# ---- markdown ----------------------------------------------------------------------------------------------


def _ci(d: Mapping[str, Any]) -> str:
    return f"{d['mean']:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}]"


def _headline_ks(ks: Sequence[str]) -> list[str]:
    wanted = [k for k in ("1", "10") if k in ks]
    return wanted or sorted({ks[0], ks[-1]}, key=int)


def _rows(report: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    rows = [("model", report)]
    rows += [(name.replace("_", " "), block) for name, block in report["baselines"].items()]
    return [*rows, ("chance", report["chance"])]


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(x) + " |" for x in lines)]


def _headline(report: Mapping[str, Any], scope: str) -> list[str]:
    pk = _headline_ks(list(report["precision_at_k"]))
    header = ["", *(NAMES[k] for k in RANKED_KEYS), *(NAMES["precision_at_k"].format(k=k) for k in pk)]
    lines = []
    for name, block in _rows(report):
        cells = [block[k] if scope == "micro" else block[k]["macro"] for k in RANKED_KEYS]
        cells += [block["precision_at_k"][k] if scope == "micro" else block["precision_at_k"][k]["macro"] for k in pk]
        lines.append([name, *(_ci(c) for c in cells)])
    return _table(header, lines)


def _per_class(report: Mapping[str, Any], block: Mapping[str, Any]) -> list[str]:
    pk = _headline_ks(list(report["precision_at_k"]))
    header = ["class", "queries", *(NAMES[k] for k in RANKED_KEYS), *(f"P@{k}" for k in pk), "chance full mAP"]
    lines = []
    for cls, entry in block["per_class"].items():
        flag = " (few queries, not in macro)" if entry["few_queries"] else ""
        cells = [_ci(entry[k]) for k in RANKED_KEYS] + [_ci(entry["precision_at_k"][k]) for k in pk]
        chance = report["chance"]["per_class"][cls]["map"]["mean"]
        lines.append([f"{cls}{flag}", str(entry["n_queries"]), *cells, f"{chance:.3f}"])
    return _table(header, lines)


def _secondary(report: Mapping[str, Any]) -> list[str]:
    ks = list(report["recall_at_k"])
    header = ["", *(f"Recall@{k}" for k in ks), *(f"Hit@{k}" for k in ks), NAMES[LENIENT_KEY]]
    lines = []
    for name, block in _rows(report):
        cells = [block["recall_at_k"][k] for k in ks] + [block["hit_at_k"][k] for k in ks] + [block[LENIENT_KEY]]
        lines.append([name, *(_ci(c) for c in cells)])
    return _table(header, lines)


def _audit(report: Mapping[str, Any]) -> list[str]:
    audit = report["audit"]
    header = ["method", "class", "queries", *(f.replace("_", " ") for f in AUDIT_FIELDS)]
    lines = []
    for method, result in audit.items():
        if method == "k":
            continue
        for cls, entry in [("all", result["overall"]), *result["per_class"].items()]:
            lines.append(
                [method.replace("_", " "), cls, str(entry["n_queries"]), *(f"{entry[f]:.3f}" for f in AUDIT_FIELDS)]
            )
    return _table(header, lines)


def _macro_line(report: Mapping[str, Any]) -> str:
    macro = report["macro"]
    if macro.get("fallback_all_classes"):
        return (
            f"Macro (mean of per-class means): no class has N = {macro['min_class_queries']} scored queries, so "
            f"it averages all {len(macro['classes'])} classes; read it with care:"
        )
    line = (
        f"Macro (mean of per-class means over the {len(macro['classes'])} classes with at least "
        f"N = {macro['min_class_queries']} scored queries: {', '.join(macro['classes'])})"
    )
    if macro["left_out"]:
        line += f"; left out, listed per class below: {', '.join(macro['left_out'])}"
    return line + ":"


def _provenance(report: Mapping[str, Any]) -> list[str]:
    """Which queries against which gallery, and whether the split is the model's own (stated, not hidden)."""
    split, queries = report["split"], report["queries"]
    source = f"the query manifest `{queries['manifest']}`" if queries["manifest"] else "the test split"
    if split["gallery"] == "all":
        gallery = "every image of the manifest"
    else:
        gallery = f"the train split `{split['file']}` (sha256 {split['sha256'][:12]})"
    out = [
        f"{report['n_queries']} queries from {source} against a gallery of {report['n_gallery']} images, "
        f"{gallery}, collection `{report['collection']}`.",
        "",
    ]
    if split.get("matches_training_split") is False:
        out += [
            f"**Split mismatch.** This split is not the one the model was trained on (model: sha256 "
            f"{split['model_split_sha256'][:12]}). Evaluated anyway with --allow-split-mismatch: test images "
            "may be in the model's training data, so these numbers may be inflated.",
            "",
        ]
    elif split.get("gallery") == "train" and not split.get("model_split_sha256"):
        out += ["The model records no training split, so the split could not be checked against it.", ""]
    if split.get("manifest_matches") is False:
        out += ["The split was made from another version of the manifest (its manifest_sha256 differs).", ""]
    return out


def _leakage(report: Mapping[str, Any]) -> list[str]:
    leak = report["leakage"]
    exact, near = leak["exact"], leak["near_duplicate"]
    action = "excluded from scoring" if leak["excluded"] else "kept in scoring (pass --exclude-leaks to drop them)"
    out = [
        "## Leakage checks",
        "",
        f"Of {leak['n_queries_checked']} queries, {exact['n_queries']} are byte-identical to a gallery image "
        f"(same SHA-256) and {near['n_queries']} more are near-duplicates (256-bit dHash within "
        f"{near['max_bits']} bits); these {leak['n_leaking_queries']} are {action}. "
        f"{leak['queries_without_patient_id']} queries and {leak['gallery_without_patient_id']} gallery images "
        "have no patient id (each counts as its own patient, so same-patient exclusion cannot reach them); "
        f"{leak['queries_sharing_a_gallery_patient']} queries share a patient with gallery images (those are "
        "excluded from their rankings).",
    ]
    pairs = [("exact", p) for p in exact["pairs"]] + [(f"{p['bits']} bits", p) for p in near["pairs"]]
    if pairs:
        out += ["", *_table(["kind", "query", "gallery image"], [[k, p["query"], p["gallery"]] for k, p in pairs[:20]])]
        if leak["n_leaking_queries"] > 20:
            out.append(f"(first 20 of {leak['n_leaking_queries']}; report.json lists up to 200 of each kind)")
    return out


def render_markdown(report: Mapping[str, Any], figures: Mapping[str, str]) -> str:
    """The human report: headline table first, then per class, secondary metrics, audit, definitions."""
    split, agree = report["split"], report["store_agreement"]
    lenient_chance = report["chance"][LENIENT_KEY]["mean"]
    hit_k = list(report["hit_at_k"])[-1]
    md = [
        f"# Retrieval evaluation: {report['model_id']}",
        "",
        *_provenance(report),
        f"Gallery images of the query's own patient are excluded. "
        f"{report['n_queries_without_relevant']} queries had no relevant gallery image and were dropped. "
        f"Store search agreed with the exact ranking on {agree['n_agree']}/{agree['n_checked']} sampled queries.",
        "",
        *_leakage(report),
        "",
        "## Headline: micro mean over queries, 95% bootstrap CI",
        "",
        *_headline(report, "micro"),
        "",
        _macro_line(report),
        "",
        *_headline(report, "macro"),
        "",
        "## Per class (model)",
        "",
        *_per_class(report, report),
    ]
    for name, block in report["baselines"].items():
        md += ["", f"## Per class ({name.replace('_', ' ')})", "", *_per_class(report, block)]
    md += [
        "",
        "## Secondary metrics (do not lead with these)",
        "",
        *_secondary(report),
        "",
        f"True Recall@K is at most K/R, and R is every gallery image of the class, so it stays near zero for any "
        f"method. Hit@K is near 1 whenever the class is common in the gallery, even for a collapsed model "
        f"(chance Hit@{hit_k} here: {report['chance']['hit_at_k'][hit_k]['mean']:.3f}). The lenient AP@10/hits "
        f"divides by the hits instead of R, so one lucky hit at rank 1 scores 1.0; its chance level here is "
        f'{lenient_chance:.3f}. Prior work reported Hit@K as "recall@K" and the lenient figure as "mAP".',
        "",
        f"## Shortcut audit (top {report['audit']['k']})",
        "",
        "Share of each query's top results from the query's own source (origin dataset) and with its own label, "
        "beside the same shares in the whole eligible gallery (chance). Same-source results of another label "
        "mean the ranking follows the source, not the disease.",
        "",
        *_audit(report),
        "",
        "## Figures",
        "",
        *(f"![{name}]({file})\n" for name, file in figures.items()),
        "## Definitions",
        "",
        *(f"- **{key}**: {text}" for key, text in report["definitions"].items()),
        "",
        "## Caveats",
        "",
        CAVEAT,
        "",
        "## Run",
        "",
        f"- model recipe: `{json.dumps(report['model_recipe'], default=str)}`",
        f"- split counts: {split.get('counts', '-')}; indexing: `{json.dumps(report['indexing'])}`",
        f"- bootstrap: {report['bootstrap']}",
        "",
    ]
    return "\n".join(md)

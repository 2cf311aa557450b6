"""Report writer: report.json (every number, with its definition) and report.md (the honest reading order).

The markdown (services.evaluation.markdown) leads with the metrics that cannot be gamed by a lucky first hit or
a common class: full mAP, MAP@R, R-Precision and P@K, each beside raw pixels and the exact chance level. True
Recall@K, Hit@K and the lenient AP@10/hits that prior work called "mAP" come later, with the reason they
mislead. Every method's block carries per-class and per (label, source) means with patient-bootstrap CIs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.evaluation.definitions import (
    AT_K_KEYS,
    AUDIT_MEANINGS,
    CI_BY_RESAMPLE,
    DEFINITIONS,
    LENIENT_KEY,
    NAMES,
    RANKED_KEYS,
)
from services.evaluation.markdown import render_markdown
from services.evaluation.types import EvalConfig, RetrievalSet, Scored

__all__ = ["NAMES", "build_report", "render_markdown", "shape_summary", "write_rankings", "write_report"]


def _interval(d: Mapping[str, Any]) -> dict:
    return {"mean": d["mean"], "ci_low": d["ci_low"], "ci_high": d["ci_high"]}


def _block(metric: Mapping[str, Any]) -> dict:
    """Micro mean with its CI at the top level, the macro mean and the micro mean over the macro classes beside
    it."""
    out = {**_interval(metric["micro"]), "macro": _interval(metric["macro"])}
    if "micro_in_macro_classes" in metric:
        out["micro_in_macro_classes"] = _interval(metric["micro_in_macro_classes"])
    return out


def shape_summary(summary: Mapping[str, Any], ks: Sequence[int], *, min_class_queries: int = 1) -> dict:
    """Re-key a `summarize` result into the report layout: map, map_at_r, ..., precision_at_k {"1": ...},
    lenient_map_at_10, per_class {label: {same keys, n_queries, n_patients, few_queries}} and, when the summary
    has one, per_source {label: {source: {metric: {mean, ci_low, ci_high}, n_queries, n_patients}}}."""
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
        entry["n_patients"] = metrics["map"]["per_class"][cls].get("n_patients")
        entry["few_queries"] = n < min_class_queries
        per_class[cls] = entry
    out["per_class"] = per_class
    if "per_source" in summary:
        out["per_source"] = summary["per_source"]
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
    report["audit_definitions"] = dict(AUDIT_MEANINGS)
    resample = model.get("resample", "queries")
    report["definitions"] = {**DEFINITIONS, "ci": CI_BY_RESAMPLE[resample]}
    report["bootstrap"] = {
        "n_boot": model["n_boot"],
        "seed": model["seed"],
        "alpha": model["alpha"],
        "resample": resample,
        "n_patients": model.get("n_patients"),
    }
    report["classes"] = list(model["classes"])
    in_macro = list(model.get("macro_classes", model["classes"]))
    counts = {c: report["per_class"][c]["n_queries"] for c in model["classes"]}
    report["macro"] = {
        "min_class_queries": few,
        "classes": in_macro,
        "left_out": [c for c in model["classes"] if c not in in_macro],
        "fallback_all_classes": any(counts[c] < few for c in in_macro),  # no class had N queries
        "n_queries": sum(counts[c] for c in in_macro),  # what micro_in_macro_classes averages over
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

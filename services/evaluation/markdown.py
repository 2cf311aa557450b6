"""report.md: the honest reading order. Headline metrics beside raw pixels and chance, then per class, per label
and source, the secondary metrics with the reason they mislead, the shortcut audit, definitions and caveats.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from services.evaluation.audit import AUDIT_PAIRS
from services.evaluation.definitions import AUDIT_MEANINGS, CAVEAT, LENIENT_KEY, NAMES, RANKED_KEYS


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


def _count(value: Any) -> str:
    return "-" if value is None else str(value)


def _metric_name(key: str) -> str:
    k = key.removeprefix("precision_at_")
    return NAMES["precision_at_k"].format(k=k) if k.isdigit() else NAMES.get(key, key)


def _headline(report: Mapping[str, Any], scope: str) -> list[str]:
    """One row per method; `scope` is "micro", "macro" or "micro_in_macro_classes"."""
    pk = _headline_ks(list(report["precision_at_k"]))
    header = ["", *(NAMES[k] for k in RANKED_KEYS), *(NAMES["precision_at_k"].format(k=k) for k in pk)]
    lines = []
    for name, block in _rows(report):
        cells = [block[k] for k in RANKED_KEYS] + [block["precision_at_k"][k] for k in pk]
        lines.append([name, *(_ci(c if scope == "micro" else c[scope]) for c in cells)])
    return _table(header, lines)


def _bootstrap_phrase(report: Mapping[str, Any]) -> str:
    boot = report.get("bootstrap", {})
    if boot.get("resample") == "patients":
        return f"95% bootstrap CI over {boot['n_patients']} patients (a patient's queries are drawn together)"
    return "95% bootstrap CI over queries"


def _micro_in_macro(report: Mapping[str, Any]) -> list[str]:
    """The micro mean over only the macro classes, or why it equals the micro mean above."""
    macro = report["macro"]
    if not macro["left_out"]:
        return ["The macro mean covers every class, so the micro mean over its classes is the micro mean above.", ""]
    if "micro_in_macro_classes" not in report["map"]:
        return []
    return [
        f"Micro mean over the {_count(macro.get('n_queries'))} queries of the macro classes only "
        f"({', '.join(macro['classes'])}; without {', '.join(macro['left_out'])}):",
        "",
        *_headline(report, "micro_in_macro_classes"),
        "",
    ]


def _per_class(report: Mapping[str, Any], block: Mapping[str, Any]) -> list[str]:
    pk = _headline_ks(list(report["precision_at_k"]))
    header = ["class", "queries", "patients", *(NAMES[k] for k in RANKED_KEYS), *(f"P@{k}" for k in pk)]
    lines = []
    for cls, entry in block["per_class"].items():
        flag = " (few queries, not in macro)" if entry["few_queries"] else ""
        cells = [_ci(entry[k]) for k in RANKED_KEYS] + [_ci(entry["precision_at_k"][k]) for k in pk]
        chance = report["chance"]["per_class"][cls]["map"]["mean"]
        counts = [str(entry["n_queries"]), _count(entry.get("n_patients"))]
        lines.append([f"{cls}{flag}", *counts, *cells, f"{chance:.3f}"])
    return _table([*header, "chance full mAP"], lines)


def _per_source(report: Mapping[str, Any]) -> list[str]:
    """Every method's per (label, source) means, one row per method under each cell, chance last."""
    blocks = [(name, block["per_source"]) for name, block in _rows(report) if "per_source" in block]
    if not blocks:
        return ["(no per-source block in this report)"]
    cells = [cell for by_source in blocks[0][1].values() for cell in by_source.values()]
    keys = [k for k in cells[0] if k not in ("n_queries", "n_patients")] if cells else []
    header = ["class", "source", "queries", "patients", "method", *(_metric_name(k) for k in keys)]
    lines = []
    for label, by_source in blocks[0][1].items():
        for source, first in by_source.items():
            for name, per_source in blocks:
                cell = per_source.get(label, {}).get(source)
                if cell is not None:
                    counts = [str(first["n_queries"]), _count(first.get("n_patients"))]
                    lines.append([label, source, *counts, name, *(_ci(cell[k]) for k in keys)])
    return _table(header, lines)


def _secondary(report: Mapping[str, Any]) -> list[str]:
    ks = list(report["recall_at_k"])
    header = ["", *(f"Recall@{k}" for k in ks), *(f"Hit@{k}" for k in ks), NAMES[LENIENT_KEY]]
    lines = []
    for name, block in _rows(report):
        cells = [block["recall_at_k"][k] for k in ks] + [block["hit_at_k"][k] for k in ks] + [block[LENIENT_KEY]]
        lines.append([name, *(_ci(c) for c in cells)])
    return _table(header, lines)


def _share(entry: Mapping[str, Any], field: str) -> str:
    value = entry.get(field)
    return "-" if value is None else f"{value:.3f}"


def _audit(report: Mapping[str, Any], *, by_source: bool) -> list[str]:
    """The shortcut audit per class (overall first), or per (label, source); each share beside its chance."""
    header = ["method", "class", *(["source"] if by_source else []), "queries"]
    for share, _ in AUDIT_PAIRS:
        header += [*(["with age"] if share == "other_age_group" else []), share.replace("_", " "), "chance"]
    lines = []
    for method, result in report["audit"].items():
        if not isinstance(result, Mapping) or "overall" not in result:
            continue
        if by_source:
            rows = [([c, s], e) for c, by in result.get("per_source", {}).items() for s, e in by.items()]
        else:
            rows = [(["all"], result["overall"]), *(([c], e) for c, e in result["per_class"].items())]
        for keys, entry in rows:
            cells = []
            for share, chance in AUDIT_PAIRS:
                if share == "other_age_group":
                    cells.append(_count(entry.get("n_queries_with_age")))
                cells += [_share(entry, share), _share(entry, chance)]
            lines.append([method.replace("_", " "), *keys, str(entry["n_queries"]), *cells])
    return _table(header, lines) if lines else ["(not in this report)"]


def _age_coverage(report: Mapping[str, Any]) -> list[str]:
    """How much of the gallery the age shares can see: they skip every image without an age."""
    model = report["audit"].get("model", {})
    if "n_gallery_with_age" not in model:
        return []
    overall = model["overall"]
    return [
        f"Ages are known for {model['n_gallery_with_age']} of {model['n_gallery']} gallery images and "
        f"{_count(overall.get('n_queries_with_age'))} of {overall['n_queries']} queries (with a known-age image "
        "in their top K); the age shares describe only those.",
        "",
    ]


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
    manifests = split.get("manifests") or {}
    if len(manifests) > 1:
        joined = ", ".join(f"`{name}` (sha256 {sha[:12]})" for name, sha in manifests.items())
        out += [f"Manifests joined and split by patient as one set: {joined}.", ""]
    if queries.get("only_from_manifests"):
        out += [f"Only test images of {', '.join(queries['only_from_manifests'])} query.", ""]
    for target, labels in (report.get("merges") or {}).items():
        absent = f"; named but not in the data: {', '.join(labels['absent'])}" if labels["absent"] else ""
        out += [f"Label `{target}` merges {', '.join(labels['merged']) or 'nothing present'}{absent}.", ""]
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
    audit_text = report.get("audit_definitions", AUDIT_MEANINGS)
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
        f"## Headline: micro mean over all {report['n_queries']} scored queries, {_bootstrap_phrase(report)}",
        "",
        f"The micro mean covers every class: {', '.join(report['classes'])}.",
        "",
        *_headline(report, "micro"),
        "",
        _macro_line(report),
        "",
        *_headline(report, "macro"),
        "",
        *_micro_in_macro(report),
        "## Per class (model)",
        "",
        *_per_class(report, report),
    ]
    for name, block in report["baselines"].items():
        md += ["", f"## Per class ({name.replace('_', ' ')})", "", *_per_class(report, block)]
    md += [
        "",
        "## Per label and source",
        "",
        "The same headline metrics within each (label, source) of the queries, with CIs over that cell's "
        "patients: a class scored well on one source only is scored by its source. report.json: "
        "per_source[label][source] for the model, each baseline and chance.",
        "",
        *_per_source(report),
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
        "Shares of each query's top results, each beside its chance level, averaged over the queries:",
        "",
        *(f"- **{key.replace('_', ' ')}**: {text}" for key, text in audit_text.items()),
        "",
        *_age_coverage(report),
        *_audit(report, by_source=False),
        "",
        "By label and source of the query:",
        "",
        *_audit(report, by_source=True),
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

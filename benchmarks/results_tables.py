"""The README's Results tables, generated from committed JSON, never typed.

Each table sits in README.md between `<!-- generated: NAME -->` and `<!-- end generated: NAME -->`;
`python -m benchmarks.results_tables --write` rewrites every block from its JSON, and
`tests/test_results_tables.py` fails when a block differs from what its JSON gives.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
README = REPO / "README.md"
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end generated: (?P=name) -->)", re.S)


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def vit_tiny_ablation() -> str:
    """The vit-tiny recipe ablation (benchmarks/results/ablation.json): chosen on val MAP@R; the test columns
    are that run's, scored on the test split before the validation rule, and marked so."""
    doc = _load("ablation.json")
    variants = list(doc["variants"])
    scored_on = doc.get("scored_on", "test")
    head = ["method", "lr", "steps", "val MAP@R (chooses)"]
    head += [f"{v} full mAP ({scored_on})" for v in variants] + [f"{variants[0]} P@1 ({scored_on})", "mean cosine"]
    rows = []
    for row in doc["rows"]:
        training = row["training"]
        lr = training.get("lr", doc["config"]["lr"] if training.get("steps") else None)
        rows.append(
            [
                row["title"],
                "-" if lr is None else f"{lr:g}",
                str(training.get("steps", "-")),
                _f(training.get("best_val_map_at_r")),
                *(_f(row["metrics"][v]["map"]["mean"]) for v in variants),
                _f(row["metrics"][variants[0]]["precision_at_k"]["1"]["mean"]),
                _f(row["mean_cosine"], 2),
            ]
        )
    chance = doc["chance"]
    rows.append(
        [
            "chance",
            "-",
            "-",
            "-",
            *(_f(chance[v]["map"]["mean"]) for v in variants),
            _f(chance[variants[0]]["precision_at_k"]["1"]["mean"]),
            "-",
        ]  # fmt: skip
    )
    return _table(head, rows)


def _ci(row: dict) -> str:
    low, high = row.get("ci") or (None, None)
    return _f(row["full_map"]) + ("" if low is None else f" [{low:.3f}, {high:.3f}]")


def headline_validation(doc: dict | None = None) -> str:
    """Every candidate recipe with its validation MAP@R; the best one is the default and the only one tested."""
    doc = doc or _load("headline.json")
    head = ["candidate", "shape", "minutes", "sampler", "steps", "best val MAP@R (step)", "default"]
    rows = []
    for name, row in doc["validation"].items():
        if row["status"] != "trained":
            rows.append([name, row["model"], f"{row['minutes']:g}", row["sampler"], "-", "not run", ""])
            continue
        val = f"{row['best_val_map_at_r']:.3f} ({row['best_step']})"
        chosen = "**chosen**" if name == doc["chosen"] else ""
        rows.append([name, row["model"], f"{row['minutes']:g}", row["sampler"], str(row["steps"]), val, chosen])
    return _table(head, rows)


def headline_test(doc: dict | None = None) -> str:
    """The chosen recipe on the test split, beside the baselines and chance of the same run."""
    doc = doc or _load("headline.json")
    head = ["setting (queries)", "method", "full mAP [95% CI]", "macro full mAP", "MAP@R", "R-Prec", "P@1", "P@10"]
    rows = []
    for setting, block in doc["test"].items():
        for method in ("model", "frozen ImageNet Lite0", "raw pixels", "chance"):
            if method not in block:
                continue
            r = block[method]
            name = f"**{setting}** ({block.get('n_queries', '?')})" if method == "model" else setting
            full = f"**{_ci(r)}**" if method == "model" else _f(r["full_map"])
            rows.append([name, method, full, _f(r["macro_full_map"]), _f(r["map_at_r"]), _f(r["r_precision"]),
                         _f(r["p_at_1"]), _f(r["p_at_10"])])  # fmt: skip
    return _table(head, rows)


def headline_per_class(doc: dict | None = None, setting: str = "all labels") -> str:
    """Per label: the model's full mAP and P@1 beside chance, with n queries."""
    doc = doc or _load("headline.json")
    block = doc["test"][setting]
    model, chance = block["model"]["per_class"], block["chance"]["per_class"]
    head = ["label", "n queries", "full mAP", "chance full mAP", "x chance", "P@1", "chance P@1"]
    rows = []
    for label, r in model.items():
        c = chance[label]
        ratio = r["full_map"] / c["full_map"] if c["full_map"] else None
        rows.append([label, str(r["n"]), _f(r["full_map"]), _f(c["full_map"]), _f(ratio, 1) + "x" if ratio else "-",
                     _f(r["p_at_1"]), _f(c["p_at_1"])])  # fmt: skip
    return _table(head, rows)


def headline_targets(doc: dict | None = None) -> str:
    """Issue 17's targets against the measured values."""
    doc = doc or _load("headline.json")
    head = ["target", "measured", "threshold", "met", "n"]
    mark = {True: "yes", False: "**no**", None: "-"}
    rows = [[t["target"], _f(t["value"]), _f(t["threshold"]), mark[t["met"]], str(t["n"])] for t in doc["targets"]]
    return _table(head, rows)


def headline_per_source(doc: dict | None = None, setting: str = "all labels") -> str:
    """Per (label, source) of the queries: full mAP with its patient-bootstrap CI, MAP@R and P@1, beside chance."""
    doc = doc or _load("headline.json")
    block = doc["test"][setting]
    model, chance = block["model"]["per_source"], block["chance"]["per_source"]
    head = ["label", "source", "n queries (patients)", "full mAP [95% CI]", "chance", "MAP@R", "P@1", "chance P@1"]
    rows = []
    for label, sources in model.items():
        for source, r in sources.items():
            c = chance[label][source]
            m = r["map"]
            rows.append([label, source, f"{r['n_queries']} ({r['n_patients']})",
                         f"{m['mean']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]", _f(c["map"]["mean"]),
                         _f(r["map_at_r"]["mean"]), _f(r["precision_at_1"]["mean"]),
                         _f(c["precision_at_1"]["mean"])])  # fmt: skip
    return _table(head, rows)


def headline_audit(doc: dict | None = None, setting: str = "all labels") -> str:
    """The shortcut audit: each query's top 10 from its own source, and from the other age group where both ages
    are known, beside what a random ranking gives."""
    doc = doc or _load("headline.json")
    audit = doc["test"][setting]["audit"]["model"]
    head = ["queries", "n", "same source", "chance", "same source, other label", "chance", "other age group",
            "chance", "n with age"]  # fmt: skip
    scopes = [("all", audit["overall"]), *audit["per_class"].items()]
    rows = []
    for name, a in scopes:
        pairs = ("same_source", "same_source_other_label", "other_age_group")
        cells = [_f(a[key]) for pair in pairs for key in (pair, f"chance_{pair}")]
        rows.append([name, str(a["n_queries"]), *cells, str(a["n_queries_with_age"])])
    return _table(head, rows)


def headline_tables(doc: dict) -> str:
    """Every headline table, for the benchmark's printout."""
    parts = (headline_validation, headline_test, headline_per_class, headline_per_source, headline_audit,
             headline_targets)  # fmt: skip
    return "\n".join(part(doc) for part in parts)


GENERATORS: dict[str, Callable[[], str]] = {
    "vit-tiny-ablation": vit_tiny_ablation,
    "headline-validation": headline_validation,
    "headline-test": headline_test,
    "headline-per-class": headline_per_class,
    "headline-per-source": headline_per_source,
    "headline-audit": headline_audit,
    "headline-targets": headline_targets,
}


def blocks(text: str) -> dict[str, str]:
    """The generated blocks of a document, by name."""
    return {m["name"]: m["body"] for m in BLOCK.finditer(text)}


def regenerate(text: str) -> str:
    """`text` with every generated block rewritten from its JSON."""

    def one(m: re.Match) -> str:
        return m.group(1) + GENERATORS[m["name"]]() + m.group(4)

    return BLOCK.sub(one, text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="rewrite README.md's generated blocks")
    args = p.parse_args()
    text = README.read_text()
    new = regenerate(text)
    if args.write:
        README.write_text(new)
    for name in blocks(new):
        print(f"## {name}\n{GENERATORS[name]()}")


if __name__ == "__main__":
    main()


def decode_row() -> str:
    """The README benchmarks row of benchmarks/decode.py, from decode.json."""
    doc = _load("decode.json")
    rows, eq, idx = dict(doc["decode"]), doc["equivalence_min_cosine"], doc["index"]

    def speed(name: str) -> str:
        r = rows[name]
        return f"{r['images_per_s']['today']:.1f} -> {r['images_per_s']['reduced']:.1f} img/s (x{r['speedup']:.2f})"

    png = rows["PNG 8-bit 8900x8900"]["peak_rss_mb_first_file"]
    kept = [v for k, v in eq.items() if isinstance(v, float) and not k.startswith(("rejected", "share"))]
    crs = {"uncompressed": "RG1 CR 1841x1955, explicit VR", "JPEG 2000": "RG1 CR 1841x1955, JPEG 2000"}
    cr_speedups = {kind: rows[name]["speedup"] for kind, name in crs.items()}
    verdict = "met" if min(cr_speedups.values()) >= 3 else "missed"
    return (
        f"load {doc['load_avg_1min_at_start']}-{doc['load_avg_1min_at_end']}: "
        f"explicit-VR CR {speed(crs['uncompressed'])}, peak RSS x{rows[crs['uncompressed']]['peak_ratio']:.3f}; "
        f"JPEG 2000 CR {speed(crs['JPEG 2000'])}, RG3 JPEG 2000 "
        f"{speed('RG3 x1.5 (2640x2640), JPEG 2000')}; JPEG-LS {speed('RG1 x1.45, JPEG-LS')}; 8,900 px PNG "
        f"{speed('PNG 8-bit 8900x8900')}, peak RSS {png['today']:.0f} -> {png['reduced']:.0f} MB; cxr-public JPEG "
        f"{speed('cxr-public JPEG')}; lowest embedding cosine to today's {min(kept):.6f}; inline `cxr index` "
        f"{idx['inline / encoder']:.3f} of the encoder alone (target {idx['target']}). Target DICOM CR decode >= 3x: "
        f"{verdict} (" + ", ".join(f"x{v:.2f} {kind}" for kind, v in cr_speedups.items()) + ")"
    )


def cli_startup_row() -> str:
    """The README benchmarks row of benchmarks/cli_startup.py, from cli_startup.json."""
    doc = _load("cli_startup.json")
    rows = doc["rows"]

    def cell(name: str) -> str:
        r = rows[name]
        met = "" if r["target_s"] is None else f" (target {r['target_s']} s: {'met' if r['target_met'] else 'missed'})"
        return f"{name} {r['p50_s']:.2f} s{met}"

    names = ("cxr collections", "cxr status", "cxr failures", "cxr search (warm cache)", "cxr search (cold cache)")
    return (
        f"pinned to one core, load {min(doc['load_avg_1min_at_round_start'])}-"
        f"{max(doc['load_avg_1min_at_round_start'])}, p50 of {doc['rounds'] * doc['per_round']} runs: floor "
        f"`import torch` {doc['floor_p50_s']:.2f} s; " + "; ".join(cell(n) for n in names)
    )

"""Report figures (matplotlib, Agg, no pyplot state): per-class PR curves, per-class bars, example queries.

Figures are drawn on bare `Figure` objects, which render with the Agg canvas and never touch a display or
pyplot's global figure list, so the job is safe in workers and tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from services.config import Settings
from services.evaluation.types import RetrievalSet, Scored
from services.imaging import decode_image, to_model_input

RECALL_LEVELS = np.linspace(0.0, 1.0, 101)
THUMB = 128


def interpolated_pr(rel: np.ndarray, n_relevant: np.ndarray, levels: np.ndarray = RECALL_LEVELS) -> np.ndarray:
    """Interpolated precision (max precision at any recall >= r) at each recall level, per query; (Q, L).

    Recall is hits / R; a level the ranking never reaches gets precision 0.
    """
    rel = np.asarray(rel, dtype=bool)
    ranks = np.arange(1, rel.shape[1] + 1, dtype=np.float64)
    out = np.zeros((len(rel), len(levels)))
    for q in range(len(rel)):
        hits = np.cumsum(rel[q])
        precision = hits / ranks
        best_after = np.maximum.accumulate(precision[::-1])[::-1]
        recall = hits / max(int(n_relevant[q]), 1)
        idx = np.searchsorted(recall, levels - 1e-12, side="left")
        reached = idx < len(recall)
        out[q, reached] = best_after[idx[reached]]
    return out


def plot_pr_curves(
    rel: np.ndarray, n_relevant: np.ndarray, labels: np.ndarray, prevalence: Mapping[str, float], path: Path
) -> None:
    """One interpolated PR curve per class (mean over its queries), with its chance precision dashed."""
    curves = interpolated_pr(rel, n_relevant)
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    for i, cls in enumerate(sorted(set(labels.tolist()))):
        color = f"C{i % 10}"
        mask = labels == cls
        ax.plot(RECALL_LEVELS, curves[mask].mean(axis=0), color=color, label=f"{cls} (n={int(mask.sum())})")
        if cls in prevalence:
            ax.axhline(prevalence[cls], color=color, linestyle=":", linewidth=1)
    ax.set(xlabel="recall", ylabel="interpolated precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title("Precision-recall per class (dotted: chance)")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_per_class(report: Mapping[str, Any], path: Path) -> None:
    """Bars of full mAP and MAP@R per class with 95% CI error bars; chance full mAP marked per class."""
    classes = list(report["per_class"])
    x = np.arange(len(classes))
    width = 0.38
    fig = Figure(figsize=(max(5.0, 1.4 * len(classes) + 2), 4.5))
    ax = fig.add_subplot()
    for j, (key, name) in enumerate((("map", "full mAP"), ("map_at_r", "MAP@R"))):
        means = np.array([report["per_class"][c][key]["mean"] for c in classes])
        low = means - np.array([report["per_class"][c][key]["ci_low"] for c in classes])
        high = np.array([report["per_class"][c][key]["ci_high"] for c in classes]) - means
        ax.bar(x + (j - 0.5) * width, means, width, yerr=[low, high], capsize=3, label=name, color=f"C{j}")
    for i, cls in enumerate(classes):
        chance = report["chance"]["per_class"][cls]["map"]["mean"]
        ax.hlines(
            chance, i - width, i + width, colors="k", linestyles="--", label="chance full mAP" if i == 0 else None
        )
    ax.set_xticks(x, [c.replace("_", "\n") for c in classes], fontsize=8)
    ax.set(ylabel="score", ylim=(0, 1.05))
    ax.set_title("Per-class retrieval (95% bootstrap CI)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _thumbnail(path: Path, settings: Settings) -> np.ndarray | None:
    try:
        pixels = decode_image(path, max_pixels=settings.max_pixels, min_side=settings.min_side).pixels
    except Exception:  # noqa: BLE001 - a figure must not fail the report; the tile says so instead
        return None
    return to_model_input(pixels, THUMB)


def pick_examples(labels: np.ndarray, valid: np.ndarray, *, seed: int, max_rows: int = 8) -> list[int]:
    """One or two scored queries per class (two when the classes leave room), at most `max_rows`, seeded."""
    rng = np.random.default_rng(seed)
    classes = sorted(set(labels[valid].tolist()))
    per_class = 2 if 2 * len(classes) <= max_rows else 1
    picks: list[int] = []
    for cls in classes:
        members = np.flatnonzero((labels == cls) & valid)
        picks += rng.choice(members, size=min(per_class, len(members)), replace=False).tolist()
    return picks[:max_rows]


def plot_examples(
    query_paths: Sequence[Path],
    query_labels: np.ndarray,
    gallery_paths: Sequence[Path],
    gallery_labels: np.ndarray,
    top: Sequence[Sequence[int]],
    path: Path,
    settings: Settings,
) -> None:
    """A grid: each row a query and its top results; a result's title is green when its label matches."""
    n_cols = 1 + max((len(t) for t in top), default=0)
    fig = Figure(figsize=(1.7 * n_cols, 1.9 * max(len(top), 1)))
    for r, (qpath, qlabel, hits) in enumerate(zip(query_paths, query_labels, top, strict=True)):
        tiles = [(qpath, f"query\n{qlabel}", "black")]
        tiles += [
            (gallery_paths[i], f"#{j + 1} {gallery_labels[i]}", "green" if gallery_labels[i] == qlabel else "red")
            for j, i in enumerate(hits)
        ]
        for c, (tile_path, title, color) in enumerate(tiles):
            ax = fig.add_subplot(len(top), n_cols, r * n_cols + c + 1)
            image = _thumbnail(tile_path, settings)
            if image is None:
                ax.text(0.5, 0.5, "unreadable", ha="center", va="center")
            else:
                ax.imshow(image, cmap="gray", vmin=0, vmax=1)
            ax.set_title(title, color=color, fontsize=7, fontweight="bold" if c == 0 else "normal")
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_plots(
    out_dir: Path,
    report: Mapping[str, Any],
    query: RetrievalSet,
    gallery: RetrievalSet,
    scored: Scored,
    roots: tuple[Path, Path],
    settings: Settings,
    *,
    seed: int = 0,
    top_k: int = 5,
) -> dict[str, str]:
    """Draw the three figures into `out_dir`; returns {caption: file name} for the markdown report.

    `roots` are the folders the query and the gallery paths are relative to (their manifests' folders)."""
    query_root, gallery_root = (Path(r) for r in roots)
    out_dir = Path(out_dir)
    v = scored.valid
    prevalence = {c: e["r_precision"]["mean"] for c, e in report["chance"]["per_class"].items()}
    plot_pr_curves(scored.rel[v], scored.n_relevant[v], query.labels[v], prevalence, out_dir / "pr_curves.png")
    plot_per_class(report, out_dir / "per_class.png")
    picks = pick_examples(query.labels, v, seed=seed)
    top = [scored.order[q, : min(top_k, int(scored.n_eligible[q]))].tolist() for q in picks]
    plot_examples(
        [query_root / query.paths[q] for q in picks],
        query.labels[picks],
        [gallery_root / p for p in gallery.paths],
        gallery.labels,
        top,
        out_dir / "examples.png",
        settings,
    )
    return {
        "Precision-recall per class": "pr_curves.png",
        "Full mAP and MAP@R per class": "per_class.png",
        f"Example queries and their top {top_k}": "examples.png",
    }

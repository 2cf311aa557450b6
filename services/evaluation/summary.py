"""Summarise per-query metric arrays: micro, macro and per-class means with percentile bootstrap CIs.

Micro weights every query equally, so big classes dominate; macro averages the per-class means, so a rare
class counts as much as a common one. Report both. A class with a handful of queries has a mean too noisy to
weigh as much as the others, so the macro mean counts only classes with at least `min_class_queries` queries
(the rest are still reported per class). Callers drop queries without a defined score (R == 0) first.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# Bootstrap draws are built in blocks of about this many gathered values to bound memory.
_BLOCK_VALUES = 2_000_000


def _boot_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `values` (n, m) over n_boot resamples of its rows with replacement; shape (n_boot, m)."""
    n, m = values.shape
    out = np.empty((n_boot, m), dtype=np.float64)
    block = max(1, _BLOCK_VALUES // max(1, n * m))
    for start in range(0, n_boot, block):
        stop = min(n_boot, start + block)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = values[idx].mean(axis=1)
    return out


def _interval(mean: float, boots: np.ndarray, alpha: float) -> dict[str, float]:
    low, high = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return {"mean": float(mean), "ci_low": float(low), "ci_high": float(high)}


def summarize(
    per_query: Mapping[str, np.ndarray],
    labels: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    min_class_queries: int = 1,
) -> dict:
    """Micro, macro and per-class means of each metric with (1 - alpha) percentile bootstrap CIs.

    Micro resamples all queries with replacement; per-class and macro resample within each class (a stratified
    bootstrap, so every resample keeps every class). All metrics share the same resamples, so their CIs are
    paired. The macro mean averages the classes with >= `min_class_queries` queries (all classes when none has
    that many; `macro_classes` names the ones used). The result holds only str, int, float and lists, ready
    for `json.dumps`: `{"n_queries", "n_boot", "seed", "alpha", "classes", "macro_classes",
    "macro_min_queries", "metrics": {name: {"micro", "macro", "per_class": {label: {"mean", "ci_low",
    "ci_high", "n_queries"}}}}}`.
    """
    labels = np.asarray(labels).astype(str)
    names = list(per_query)
    if not names:
        raise ValueError("per_query holds no metrics")
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError("labels must be a non-empty 1-D array")
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError("need n_boot >= 1 and 0 < alpha < 1")
    if min_class_queries < 1:
        raise ValueError(f"min_class_queries must be >= 1, got {min_class_queries}")
    columns = []
    for name in names:
        col = np.asarray(per_query[name], dtype=np.float64)
        if col.shape != labels.shape:
            raise ValueError(f"metric {name!r} has shape {col.shape}, labels {labels.shape}")
        if not np.all(np.isfinite(col)):
            raise ValueError(f"metric {name!r} has non-finite values; drop invalid queries first")
        columns.append(col)
    values = np.stack(columns, axis=1)  # (Q, M)

    rng = np.random.default_rng(seed)
    micro_boot = _boot_means(values, n_boot, rng)
    classes = sorted(set(labels.tolist()))
    class_means, class_boots, class_sizes = [], [], []
    for cls in classes:
        rows = values[labels == cls]
        class_means.append(rows.mean(axis=0))
        class_boots.append(_boot_means(rows, n_boot, rng))
        class_sizes.append(len(rows))
    in_macro = [i for i, size in enumerate(class_sizes) if size >= min_class_queries] or list(range(len(classes)))
    macro_mean = np.mean([class_means[i] for i in in_macro], axis=0)
    macro_boot = np.mean([class_boots[i] for i in in_macro], axis=0)
    micro_mean = values.mean(axis=0)

    metrics: dict[str, dict] = {}
    for j, name in enumerate(names):
        metrics[name] = {
            "micro": _interval(micro_mean[j], micro_boot[:, j], alpha),
            "macro": _interval(macro_mean[j], macro_boot[:, j], alpha),
            "per_class": {
                cls: {**_interval(mean[j], boots[:, j], alpha), "n_queries": int(size)}
                for cls, mean, boots, size in zip(classes, class_means, class_boots, class_sizes, strict=True)
            },
        }
    return {
        "n_queries": int(len(labels)),
        "n_boot": int(n_boot),
        "seed": int(seed),
        "alpha": float(alpha),
        "classes": classes,
        "macro_classes": [classes[i] for i in in_macro],
        "macro_min_queries": int(min_class_queries),
        "metrics": metrics,
    }

"""Summarise per-query metric arrays: micro, macro and per-class means with percentile bootstrap CIs.

Micro weights every query equally, so big classes dominate; macro averages the per-class means, so a rare
class counts as much as a common one. Report both. A class with a handful of queries has a mean too noisy to
weigh as much as the others, so the macro mean counts only classes with at least `min_class_queries` queries
(the rest are still reported per class). Callers drop queries without a defined score (R == 0) first.

Queries of one patient are not independent (one patient's films look alike and score alike), so with `groups`
the bootstrap resamples patients, each with all of their queries (a cluster bootstrap); resampling queries as
if independent gives intervals that are too narrow when patients have several images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# Bootstrap draws are built in blocks of about this many gathered values to bound memory.
_BLOCK_VALUES = 2_000_000
SOURCE_METRICS = ("map", "map_at_r")  # per (label, source), with P@k at the smallest k


def first_seen_codes(keys: np.ndarray) -> np.ndarray:
    """Integer codes 0..G-1 for `keys`, numbered in order of first appearance (so one key per row gives
    0..n-1, and a cluster bootstrap of singletons draws exactly what a row bootstrap draws)."""
    _, first, inverse = np.unique(np.asarray(keys), return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


def _boot_means(
    values: np.ndarray, n_boot: int, rng: np.random.Generator, codes: np.ndarray | None = None
) -> np.ndarray:
    """Means of `values` (n, m) over n_boot resamples; shape (n_boot, m).

    Without `codes` the rows are resampled with replacement. With `codes` (per-row cluster numbers from
    `first_seen_codes`) the clusters are resampled with replacement and every row of a drawn cluster is taken;
    the mean is over all drawn rows. Memory stays near _BLOCK_VALUES gathered values either way.
    """
    if codes is None:
        sums, counts = values, None
    else:
        codes = first_seen_codes(codes)
        sums = np.zeros((int(codes.max()) + 1, values.shape[1]), dtype=np.float64)
        np.add.at(sums, codes, values)
        counts = np.bincount(codes)
    n, m = sums.shape
    out = np.empty((n_boot, m), dtype=np.float64)
    block = max(1, _BLOCK_VALUES // max(1, n * m))
    for start in range(0, n_boot, block):
        stop = min(n_boot, start + block)
        idx = rng.integers(0, n, size=(stop - start, n))
        if counts is None:
            out[start:stop] = values[idx].mean(axis=1)
        else:
            out[start:stop] = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)[:, None]
    return out


def _n_units(codes: np.ndarray | None) -> int | None:
    return None if codes is None else len(np.unique(codes))


def source_metrics(names: Sequence[str]) -> list[str]:
    """The metrics reported per (label, source): full mAP, MAP@R and P@k at the smallest k present (P@1 with
    the default ks), of those in `names`."""
    out = [name for name in SOURCE_METRICS if name in names]
    ks = sorted(int(n.removeprefix("precision_at_")) for n in names if n.removeprefix("precision_at_").isdigit())
    if ks:
        out.append(f"precision_at_{ks[0]}")
    return out


def _interval(mean: float, boots: np.ndarray, alpha: float) -> dict[str, float]:
    low, high = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return {"mean": float(mean), "ci_low": float(low), "ci_high": float(high)}


def summarize(
    per_query: Mapping[str, np.ndarray],
    labels: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    sources: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    min_class_queries: int = 1,
) -> dict:
    """Micro, macro and per-class means of each metric with (1 - alpha) percentile bootstrap CIs.

    With `groups` (one patient key per query) every resample draws patients with replacement and takes all of
    their queries; without, it draws queries. Micro resamples over all queries; per-class and macro resample
    within each class (the patients with queries of that class, and only those queries), so every resample
    keeps every class. All metrics share the same resamples, so their CIs are paired. The macro mean averages
    the classes with >= `min_class_queries` queries (all classes when none has that many; `macro_classes`
    names them), and `micro_in_macro_classes` is the micro mean over only those classes' queries. With
    `sources`, "per_source" holds `summarize_by_source` over `source_metrics`. The result holds only str, int,
    float, None and lists, ready for `json.dumps`: `{"n_queries", "n_patients", "resample", "n_boot", "seed",
    "alpha", "classes", "macro_classes", "macro_min_queries", "n_queries_in_macro_classes", "metrics": {name:
    {"micro", "macro", "micro_in_macro_classes", "per_class": {label: {"mean", "ci_low", "ci_high",
    "n_queries", "n_patients"}}}}, ["per_source"]}`; n_patients is None without groups.
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
    codes = None
    if groups is not None:
        groups = np.asarray(groups).astype(str)
        if groups.shape != labels.shape:
            raise ValueError(f"groups has shape {groups.shape}, labels {labels.shape}")
        codes = first_seen_codes(groups)
    values = _stack(per_query, names, labels.shape)  # (Q, M)

    rng = np.random.default_rng(seed)
    micro_boot = _boot_means(values, n_boot, rng, codes)
    classes = sorted(set(labels.tolist()))
    class_means, class_boots, class_sizes, class_patients = [], [], [], []
    for cls in classes:
        mask = labels == cls
        sub = None if codes is None else codes[mask]
        class_means.append(values[mask].mean(axis=0))
        class_boots.append(_boot_means(values[mask], n_boot, rng, sub))
        class_sizes.append(int(mask.sum()))
        class_patients.append(_n_units(sub))
    in_macro = [i for i, size in enumerate(class_sizes) if size >= min_class_queries] or list(range(len(classes)))
    macro_mean = np.mean([class_means[i] for i in in_macro], axis=0)
    macro_boot = np.mean([class_boots[i] for i in in_macro], axis=0)
    micro_mean = values.mean(axis=0)
    scoped = np.isin(labels, [classes[i] for i in in_macro])
    if scoped.all():  # the same queries: the same mean and resamples as micro
        scoped_mean, scoped_boot = micro_mean, micro_boot
    else:  # drawn last, so the other intervals do not depend on whether this one exists
        scoped_mean = values[scoped].mean(axis=0)
        scoped_boot = _boot_means(values[scoped], n_boot, rng, None if codes is None else codes[scoped])

    metrics: dict[str, dict] = {}
    per_class = list(zip(classes, class_means, class_boots, class_sizes, class_patients, strict=True))
    for j, name in enumerate(names):
        metrics[name] = {
            "micro": _interval(micro_mean[j], micro_boot[:, j], alpha),
            "macro": _interval(macro_mean[j], macro_boot[:, j], alpha),
            "micro_in_macro_classes": _interval(scoped_mean[j], scoped_boot[:, j], alpha),
            "per_class": {
                cls: {**_interval(mean[j], boots[:, j], alpha), "n_queries": size, "n_patients": patients}
                for cls, mean, boots, size, patients in per_class
            },
        }
    out = {
        "n_queries": int(len(labels)),
        "n_patients": _n_units(codes),
        "resample": "queries" if codes is None else "patients",
        "n_boot": int(n_boot),
        "seed": int(seed),
        "alpha": float(alpha),
        "classes": classes,
        "macro_classes": [classes[i] for i in in_macro],
        "macro_min_queries": int(min_class_queries),
        "n_queries_in_macro_classes": int(scoped.sum()),
        "metrics": metrics,
    }
    if sources is not None:
        out["per_source"] = summarize_by_source(
            {name: per_query[name] for name in source_metrics(names)},
            labels,
            sources,
            groups,
            n_boot=n_boot,
            seed=seed,
            alpha=alpha,
        )
    return out


def summarize_by_source(
    per_query: Mapping[str, np.ndarray],
    labels: np.ndarray,
    sources: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, dict[str, dict]]:
    """Each metric's mean and bootstrap CI per (label, source) of the queries, nested as
    {label: {source: {metric: {"mean", "ci_low", "ci_high"}, "n_queries", "n_patients"}}}.

    Each cell resamples its own patients (its own queries without `groups`), like a class in `summarize`; the
    draws come from their own stream of `seed`, so adding cells changes no other interval.
    """
    labels = np.asarray(labels).astype(str)
    sources = np.asarray(sources).astype(str)
    if sources.shape != labels.shape:
        raise ValueError(f"sources has shape {sources.shape}, labels {labels.shape}")
    names = list(per_query)
    values = _stack(per_query, names, labels.shape)
    codes = None if groups is None else first_seen_codes(np.asarray(groups).astype(str))
    rng = np.random.default_rng([int(seed), 1])
    out: dict[str, dict[str, dict]] = {}
    for label in sorted(set(labels.tolist())):
        out[label] = {}
        for source in sorted(set(sources[labels == label].tolist())):
            mask = (labels == label) & (sources == source)
            sub = None if codes is None else codes[mask]
            means = values[mask].mean(axis=0)
            boots = _boot_means(values[mask], n_boot, rng, sub)
            cell: dict = {name: _interval(means[j], boots[:, j], alpha) for j, name in enumerate(names)}
            cell.update(n_queries=int(mask.sum()), n_patients=_n_units(sub))
            out[label][source] = cell
    return out


def _stack(per_query: Mapping[str, np.ndarray], names: list[str], shape: tuple[int, ...]) -> np.ndarray:
    """The metrics as columns of one (Q, M) float array, after checking shape and finiteness."""
    columns = []
    for name in names:
        col = np.asarray(per_query[name], dtype=np.float64)
        if col.shape != shape:
            raise ValueError(f"metric {name!r} has shape {col.shape}, labels {shape}")
        if not np.all(np.isfinite(col)):
            raise ValueError(f"metric {name!r} has non-finite values; drop invalid queries first")
        columns.append(col)
    return np.stack(columns, axis=1)

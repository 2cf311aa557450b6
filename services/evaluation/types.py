"""The evaluation's shared types: the run's config, a set of images as scoring sees them, and a scored ranking.

They live apart from the job so that the audit, the plots and the report can use them without importing the job
(which imports all three).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from services.errors import ConfigError
from services.manifest import as_paths
from services.splits import merge_labels

GALLERIES = ("train", "all")


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation run of a checkpoint.

    In-split (the default): the train split of `manifest` is the gallery and its test split the queries. With
    `queries`, every row of that other manifest queries the gallery instead; the gallery is then the train split
    (`gallery="train"`) or every row of `manifest` (`gallery="all"`).
    """

    model: Path  # checkpoint folder
    manifest: Path | tuple[Path, ...]  # the gallery's manifest(s) (and, in-split, the queries'), joined
    out_dir: Path
    split_file: Path | None = None  # default: the model's own split, else out_dir/split.json (made if missing)
    queries: Path | None = None  # another manifest whose every row is a query
    query_manifests: tuple[Path, ...] = ()  # in-split: only test images from these joined manifests query
    gallery: str = "train"  # "train" (the split's train part) or "all" (every row of `manifest`; needs queries)
    merges: tuple[str, ...] = ()  # e.g. ("pneumonia_bacterial,pneumonia_viral=pneumonia",)
    ks: tuple[int, ...] = (1, 5, 10)
    collection: str | None = None  # gallery collection; default eval-<model id>-<split or manifest sha>
    n_boot: int = 1000
    seed: int = 0  # bootstrap, plots, tie-breaking and a newly made split
    batch_size: int = 64
    min_class_queries: int = 10  # the macro average counts only classes with at least this many queries
    baselines: bool = True  # also score raw pixels in the same run
    exclude_leaks: bool = False  # drop queries whose file or near-duplicate is in the gallery before scoring
    near_duplicate_bits: int = 10  # 256-bit dHash distance at or below which two images are near-duplicates
    allow_split_mismatch: bool = False  # evaluate on a split other than the model's training split

    @property
    def manifests(self) -> tuple[Path, ...]:
        """The manifest(s) as a tuple of paths."""
        return as_paths(self.manifest)

    def __post_init__(self) -> None:
        if self.gallery not in GALLERIES:
            raise ConfigError(f"unknown gallery {self.gallery!r}", f"Use one of: {', '.join(GALLERIES)}.")
        if self.gallery == "all" and self.queries is None:
            raise ConfigError(
                "--gallery all puts the test split into its own gallery",
                "Pass --queries OTHER_MANIFEST.csv with --gallery all, or keep the train-split gallery.",
            )
        if self.min_class_queries < 1:
            raise ConfigError(f"min_class_queries must be >= 1, got {self.min_class_queries}")
        if not 0 <= self.near_duplicate_bits < 256:
            raise ConfigError(f"near_duplicate_bits must be in [0, 255], got {self.near_duplicate_bits}")


@dataclass(frozen=True)
class RetrievalSet:
    """Images as scoring sees them: unit embeddings plus label, patient group, source and age per image."""

    emb: np.ndarray  # (N, D) float32, L2-normalised
    labels: np.ndarray  # (N,) str
    groups: np.ndarray  # (N,) str: salted patient hash, or a unique stand-in when the patient is unknown
    sources: np.ndarray  # (N,) str: origin_dataset, else source, else "unknown"
    paths: tuple[str, ...]
    ids: tuple[str, ...] = ()  # store point ids (gallery only); ties are broken by a seeded hash of these
    ages: np.ndarray | None = None  # (N,) float years (top-coded), NaN when unknown; None means all unknown

    def __post_init__(self) -> None:
        n = len(self.labels)
        ages = np.full(n, np.nan) if self.ages is None else np.asarray(self.ages, dtype=np.float64)
        if ages.shape != (n,):
            raise ValueError(f"ages has shape {ages.shape}, labels ({n},)")
        object.__setattr__(self, "ages", ages)  # frozen: normalised once, here

    def relabelled(self, merges: Sequence[str]) -> RetrievalSet:
        """The same set with `--merge` specs applied to its labels."""
        if not merges:
            return self
        return replace(self, labels=np.array(merge_labels(self.labels.tolist(), merges)))

    def with_emb(self, emb: np.ndarray) -> RetrievalSet:
        """The same images under another embedding (the raw-pixel baseline reuses labels and patients)."""
        return replace(self, emb=np.asarray(emb, dtype=np.float32))

    def subset(self, keep: np.ndarray) -> RetrievalSet:
        """Only the images where the boolean mask `keep` is true (e.g. queries without a gallery leak)."""
        keep = np.asarray(keep, dtype=bool)
        idx = np.flatnonzero(keep).tolist()
        return RetrievalSet(
            emb=self.emb[keep],
            labels=self.labels[keep],
            groups=self.groups[keep],
            sources=self.sources[keep],
            paths=tuple(self.paths[i] for i in idx),
            ids=tuple(self.ids[i] for i in idx) if self.ids else (),
            ages=self.ages[keep],
        )

    @property
    def tie_ids(self) -> tuple[str, ...]:
        """What ties are broken by: the store ids, else the paths."""
        return self.ids or self.paths


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
    queries: RetrievalSet | None = None  # the query set scored (all Q rows; `valid` picks the scored ones)

"""Training data: every image decoded once into an in-memory uint8 cache, and a label- and source-balanced
batch sampler.

Decoding a radiograph costs far more than a training step's share of it, so the trainer decodes each file
once, at model resolution. The result can be kept on disk: a second run with the same files and size then
loads in about a second.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from services.config import Settings
from services.errors import DataError, DecodeError
from services.imaging import decode_image, to_model_input
from services.manifest import ManifestRow, source_of

CACHE_VERSION = 1  # bump when the decoder or the stored layout changes, to invalidate old disk caches
_DEFAULT_MAX_PIXELS: int = Settings.model_fields["max_pixels"].default
_DEFAULT_MIN_SIDE: int = Settings.model_fields["min_side"].default


@dataclass
class ImageCache:
    """Decoded training images: `images[i]` is the (S, S) uint8 picture of `paths[i]`, labelled `labels[i]`.

    `patient_ids` are raw PHI, kept in memory only for patient-level grouping and never written to disk;
    `groups` numbers the patients (an image without a patient id is its own patient), for leave-one-patient-out
    validation. `errors` lists the (path, reason) pairs of files that could not be decoded and were skipped.
    """

    images: np.ndarray
    paths: list[str]
    labels: list[str]
    patient_ids: list[str | None]
    errors: list[tuple[str, str]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # per image, as `splits.source_of` names it

    def __post_init__(self) -> None:
        self.classes: list[str] = sorted(set(self.labels))
        index = {c: i for i, c in enumerate(self.classes)}
        self.label_ids: np.ndarray = np.array([index[c] for c in self.labels], dtype=np.int64)
        patients: dict[str, int] = {}
        groups = np.empty(len(self.patient_ids), dtype=np.int64)
        for i, pid in enumerate(self.patient_ids):
            if pid is None:
                groups[i] = len(patients)
                patients[f"\0image:{i}"] = groups[i]  # its own patient; NUL keeps it apart from real ids
            else:
                groups[i] = patients.setdefault(pid, len(patients))
        self.groups: np.ndarray = groups

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def batch(self, idx: np.ndarray) -> Tensor:
        """Images `idx` as a float (B, 1, S, S) tensor in [0, 1]."""
        pixels = torch.from_numpy(self.images[np.asarray(idx)])
        return pixels.unsqueeze(1).float().div_(255.0)


def _decode_one(path: Path, image_size: int, max_pixels: int, min_side: int) -> np.ndarray | str:
    """The (S, S) uint8 image, or the reason it could not be made."""
    try:
        decoded = decode_image(path, max_pixels=max_pixels, min_side=min_side)
        pixels = to_model_input(decoded.pixels, image_size)
    except DecodeError as exc:
        return exc.reason
    except Exception as exc:  # noqa: BLE001 - one bad file must not end a bulk decode; the reason is kept
        return f"{type(exc).__name__}: {exc}"
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.shape != (image_size, image_size):
        return f"decoder returned shape {pixels.shape}, expected {(image_size, image_size)}"
    return np.rint(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)


def cache_key(rows: Sequence[ManifestRow], image_size: int) -> str:
    """SHA-256 over the image size and every file's path, size and mtime: any change means a fresh decode."""
    digest = hashlib.sha256(f"cxr-train-cache v{CACHE_VERSION} size={image_size}\n".encode())
    for row in rows:
        try:
            st = os.stat(row.path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        digest.update(f"{row.path}\t{stamp}\n".encode())
    return digest.hexdigest()


def _cache_files(cache_dir: Path, key: str) -> tuple[Path, Path]:
    stem = f"train-cache-{key[:24]}"
    return cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"


def _from_rows(rows: Sequence[ManifestRow], images: np.ndarray, kept: list[int], errors: list) -> ImageCache:
    return ImageCache(
        images=images,
        paths=[str(rows[i].path) for i in kept],
        labels=[rows[i].label for i in kept],
        patient_ids=[rows[i].patient_id for i in kept],
        errors=[(str(p), str(r)) for p, r in errors],
        sources=[source_of(rows[i].origin_dataset, rows[i].source) for i in kept],
    )


def _load_disk_cache(rows: Sequence[ManifestRow], image_size: int, npy: Path, meta: Path) -> ImageCache | None:
    try:
        info = json.loads(meta.read_text())
        images = np.load(npy)
    except (OSError, ValueError):
        return None
    kept = info.get("kept")
    if (
        info.get("version") != CACHE_VERSION
        or info.get("n_rows") != len(rows)
        or not isinstance(kept, list)
        or images.dtype != np.uint8
        or images.shape != (len(kept), image_size, image_size)
    ):
        return None
    return _from_rows(rows, images, kept, info.get("errors", []))


def _save_disk_cache(cache: ImageCache, kept: list[int], n_rows: int, npy: Path, meta: Path) -> None:
    # Write beside the target and rename, so that a killed run never leaves a half-written cache.
    # Only pixels, row indices and errors are stored: labels and patient ids come back from the manifest.
    npy.parent.mkdir(parents=True, exist_ok=True)
    tmp_npy = npy.with_name(npy.name + f".{os.getpid()}.tmp")
    with tmp_npy.open("wb") as fh:
        np.save(fh, cache.images)
    os.replace(tmp_npy, npy)
    tmp_meta = meta.with_name(meta.name + f".{os.getpid()}.tmp")
    info = {"version": CACHE_VERSION, "n_rows": n_rows, "kept": kept, "errors": cache.errors}
    tmp_meta.write_text(json.dumps(info))
    os.replace(tmp_meta, meta)


def load_image_cache(
    rows: Sequence[ManifestRow],
    image_size: int,
    *,
    workers: int = 2,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    max_pixels: int = _DEFAULT_MAX_PIXELS,
    min_side: int = _DEFAULT_MIN_SIDE,
) -> ImageCache:
    """Decode every row's image once, at `image_size`, skipping (and recording) files that fail.

    `workers` decoder threads run in parallel (0 decodes inline). With `cache_dir`, the result is kept there,
    keyed by `cache_key`. `progress(done, total)` is called after each file. Raises DataError only when
    nothing at all could be decoded.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if not rows:
        raise DataError("no images to load: the manifest selection is empty")
    if cache_dir is not None:
        npy, meta = _cache_files(Path(cache_dir), cache_key(rows, image_size))
        cached = _load_disk_cache(rows, image_size, npy, meta)
        if cached is not None:
            if progress is not None:
                progress(len(rows), len(rows))
            return cached

    total = len(rows)
    images = np.empty((total, image_size, image_size), dtype=np.uint8)
    ok = np.zeros(total, dtype=bool)
    errors: list[tuple[str, str]] = []

    def decode(i: int) -> np.ndarray | str:
        return _decode_one(rows[i].path, image_size, max_pixels, min_side)

    def results() -> Iterator[np.ndarray | str]:
        if workers <= 0:
            yield from map(decode, range(total))
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cxr-decode") as pool:
            yield from pool.map(decode, range(total))

    for i, result in enumerate(results()):
        if isinstance(result, str):
            errors.append((str(rows[i].path), result))
        else:
            images[i] = result
            ok[i] = True
        if progress is not None:
            progress(i + 1, total)

    kept = np.flatnonzero(ok).tolist()
    if not kept:
        first = f" (first: {errors[0][0]}: {errors[0][1]})" if errors else ""
        raise DataError(f"none of the {total} images could be decoded{first}")
    cache = _from_rows(rows, images[ok] if len(kept) < total else images, kept, errors)
    if cache_dir is not None:
        _save_disk_cache(cache, kept, total, npy, meta)
    return cache


class ClassBalancedBatchSampler:
    """An endless, seeded stream of index batches with `m_per_class` images from each of several classes.

    Contrastive losses need positives in every batch. Like pml's MPerClassSampler, each batch takes
    batch_size // m classes at random (uniformly, whatever their size) and m distinct images from each. A
    class smaller than m gives all of its images. The slots left over go to extra images of the chosen
    classes. So every class present in a batch has at least two images there, unless the class has only
    one (or, in a tiny data set, the chosen classes run out of images). Batches always hold exactly
    `batch_size` distinct indices.

    With `sources`, a class's images in a batch are spread evenly over its sources (round robin, in a random
    order), so the positives of a label come from more than one source wherever the data has them, and a
    source cannot stand in for the label. A source with fewer than `min_source_images` images of a class is
    drawn with the class's largest source instead of getting its own share (a handful of films shown in every
    batch would be memorised).
    """

    def __init__(
        self,
        labels: Sequence[str] | np.ndarray,
        batch_size: int,
        m_per_class: int | None = None,
        seed: int = 0,
        *,
        sources: Sequence[str] | None = None,
        min_source_images: int = 20,
    ) -> None:
        labels = np.asarray(labels)
        classes, inverse = np.unique(labels, return_inverse=True)
        if batch_size < 2:
            raise ValueError(f"batch_size must be >= 2, got {batch_size}")
        if batch_size > len(labels):
            raise DataError(f"batch_size {batch_size} exceeds the {len(labels)} training images")
        self.batch_size = batch_size
        self.m_per_class = m_per_class or max(2, batch_size // len(classes))
        if not 2 <= self.m_per_class <= batch_size:
            raise ValueError(f"m_per_class must be in [2, batch_size] to form positives, got {self.m_per_class}")
        self.members = [np.flatnonzero(inverse == c) for c in range(len(classes))]
        self.pools = [self._source_pools(m, sources, min_source_images) for m in self.members]
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    @staticmethod
    def _source_pools(members: np.ndarray, sources: Sequence[str] | None, min_images: int) -> list[np.ndarray]:
        """A class's images grouped by source, small sources folded into the largest (one pool without sources)."""
        if sources is None:
            return [members]
        names = np.asarray(sources)[members]
        found, counts = np.unique(names, return_counts=True)
        big = [s for s, n in zip(found, counts, strict=True) if n >= min_images] or [found[np.argmax(counts)]]
        largest = max(big, key=dict(zip(found, counts, strict=True)).__getitem__)
        home = np.array([s if s in big else largest for s in names])  # each image's pool
        return [members[home == s] for s in big]

    def _pick(self, c: int, k: int, rng: np.random.Generator) -> np.ndarray:
        """k distinct images of class c, spread evenly over its source pools."""
        pools = self.pools[c]
        if len(pools) == 1:
            return rng.choice(pools[0], size=k, replace=False)
        take = np.zeros(len(pools), dtype=np.int64)
        order = rng.permutation(len(pools)).tolist()
        left = k
        while left:
            for s in order:
                if left and take[s] < len(pools[s]):
                    take[s] += 1
                    left -= 1
        return np.concatenate(
            [rng.choice(pool, size=n, replace=False) for pool, n in zip(pools, take, strict=True) if n]
        )

    def __iter__(self) -> Iterator[np.ndarray]:
        """Batches continue from the sampler's current state (after `load_state_dict`, where a run left off)."""
        while True:
            yield self._one_batch(self._rng)

    def state_dict(self) -> dict[str, Any]:
        """The random stream's position, for resuming a run (plain Python values)."""
        return {"seed": self.seed, "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self._rng = np.random.default_rng(self.seed)
        self._rng.bit_generator.state = state["rng"]

    def _one_batch(self, rng: np.random.Generator) -> np.ndarray:
        counts: dict[int, int] = {}
        remaining = self.batch_size
        sizes = [len(m) for m in self.members]
        for c in rng.permutation(len(self.members)).tolist():
            take = min(self.m_per_class, sizes[c], remaining)
            if take == 1 and sizes[c] > 1:
                break  # a lone slot would give this class a singleton; it goes to the top-up instead
            counts[c] = take
            remaining -= take
            if remaining == 0:
                break
        while remaining > 0:
            # Top up chosen classes that still have unused images; only when none has, open a new class.
            room = [c for c, k in counts.items() if k < sizes[c]]
            if not room:
                room = [c for c in range(len(sizes)) if c not in counts]
            c = int(room[rng.integers(len(room))])
            counts[c] = counts.get(c, 0) + 1
            remaining -= 1
        picks = [self._pick(c, k, rng) for c, k in counts.items()]
        return np.concatenate(picks).astype(np.int64)

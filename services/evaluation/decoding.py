"""Read and decode the evaluation's images once: pixels at every size scoring needs, plus the file's SHA-256
and a perceptual hash, so leakage checks and the raw-pixel baseline cost no second read."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from services.config import Settings
from services.evaluation.leakage import DHASH_BYTES, dhash
from services.imaging import decode_bytes, max_file_bytes, read_regular_file, to_model_input
from services.manifest import ManifestRow


@dataclass(frozen=True)
class DecodedRows:
    """The rows that decoded, in input order, with their pixels per size, file hashes and dHashes."""

    rows: list[ManifestRow]
    pixels: dict[int, np.ndarray]  # size -> (N, size, size) float32 in [0, 1]
    sha256: tuple[str, ...]  # hex SHA-256 of each file's bytes
    dhash: np.ndarray  # (N, 32) uint8: the packed 256-bit difference hash of each decoded image
    errors: list[tuple[str, str]]  # (path, reason) of every row that could not be read or decoded

    def take(self, idx: Sequence[int]) -> DecodedRows:
        """The same data for rows `idx` (positions into this object), in that order."""
        idx = list(idx)
        return DecodedRows(
            rows=[self.rows[i] for i in idx],
            pixels={size: arr[idx] for size, arr in self.pixels.items()},
            sha256=tuple(self.sha256[i] for i in idx),
            dhash=self.dhash[idx],
            errors=self.errors,
        )


def decode_rows(rows: Sequence[ManifestRow], sizes: Sequence[int], settings: Settings) -> DecodedRows:
    """Read each row's file once: hash its bytes, decode it, resize it to every size in `sizes` and dHash it.

    A file that cannot be read or decoded is listed in `errors` with its reason and dropped; the rest go on.
    """

    def one(row: ManifestRow) -> tuple[str, list[np.ndarray], np.ndarray] | str:
        try:
            data = read_regular_file(row.path, max_file_bytes(settings.max_pixels))  # never blocks on a FIFO
            px = decode_bytes(data, str(row.path), max_pixels=settings.max_pixels, min_side=settings.min_side).pixels
            tiles = [to_model_input(px, size) for size in sizes]
            phash = dhash(px)
        except Exception as exc:  # noqa: BLE001 - one bad file must not end the run; the reason is kept
            return str(getattr(exc, "reason", exc))
        return hashlib.sha256(data).hexdigest(), tiles, phash

    with ThreadPoolExecutor(max(1, settings.decode_workers), thread_name_prefix="cxr-eval-decode") as pool:
        results = list(pool.map(one, rows))
    errors = [(str(row.path), res) for row, res in zip(rows, results, strict=True) if isinstance(res, str)]
    ok = [(row, res) for row, res in zip(rows, results, strict=True) if not isinstance(res, str)]
    pixels = {
        size: np.stack([res[1][j] for _, res in ok]) if ok else np.zeros((0, size, size), np.float32)
        for j, size in enumerate(sizes)
    }
    return DecodedRows(
        rows=[row for row, _ in ok],
        pixels=pixels,
        sha256=tuple(res[0] for _, res in ok),
        dhash=np.stack([res[2] for _, res in ok]) if ok else np.zeros((0, DHASH_BYTES), np.uint8),
        errors=errors,
    )

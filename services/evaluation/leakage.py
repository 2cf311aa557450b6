"""Leakage checks: queries whose image is also in the gallery, byte for byte or as a near-duplicate.

A query that is its own gallery image (another file name, another split, another manifest) is retrieved at rank
1 and inflates every metric. Exact copies share the SHA-256 of their file bytes. Near-duplicates (re-encoded,
resized, re-exported copies) share a 256-bit difference hash (dHash) up to a few bits: the image is shrunk to
17x16 and each bit says whether a pixel is brighter than its right neighbour.

Why 256 bits: chest films all share one coarse layout, so the common 64-bit dHash (9x8) cannot tell them apart.
On cxr-public's seed-0 split, 983 of 1248 test films had a different train film within 4 of 64 bits (118 at 0).
With 256 bits the nearest different film was 14 bits away (1st percentile 18), while copies of 60 test films
re-encoded as JPEG q60, halved in size or gamma-shifted stayed within 8 bits. The default threshold is 10 bits.
A crop of even 4% of the border moves the hash by 22 bits or more, so cropped copies are not caught.
Listed pairs are for a person to check; `--exclude-leaks` drops both kinds from scoring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

LIST_LIMIT = 200  # leaking pairs listed in report.json (all are counted)
DHASH_SIDE = 16  # 16 x 16 = 256 bits
DHASH_BYTES = DHASH_SIDE * DHASH_SIDE // 8
NEAR_DUPLICATE_BITS = 10


def dhash(pixels: np.ndarray) -> np.ndarray:
    """The 256-bit difference hash of a grey image as 32 bytes: box-shrunk to 17x16, bit = brighter than the
    pixel to its right."""
    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32), mode="F")
    small = np.asarray(image.resize((DHASH_SIDE + 1, DHASH_SIDE), Image.Resampling.BOX), dtype=np.float32)
    return np.packbits((small[:, :-1] > small[:, 1:]).ravel())


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) bit distances between two (N, bytes) arrays of packed hashes."""
    a = np.asarray(a, dtype=np.uint8)
    b = np.asarray(b, dtype=np.uint8)
    return np.bitwise_count(a[:, None, :] ^ b[None, :, :]).sum(axis=2, dtype=np.int64)


@dataclass(frozen=True)
class Leaks:
    """Per query: the gallery index of an exact copy (-1: none), else of its nearest near-duplicate (-1: none)."""

    exact: np.ndarray  # (Q,) int
    near: np.ndarray  # (Q,) int; -1 where there is an exact copy or nothing within the threshold
    near_bits: np.ndarray  # (Q,) int distance to `near` (-1 where none)
    max_bits: int

    @property
    def any(self) -> np.ndarray:
        """Queries with an exact or near-duplicate copy in the gallery."""
        return (self.exact >= 0) | (self.near >= 0)


def find_leaks(
    query_sha: Sequence[str],
    query_dhash: np.ndarray,
    gallery_sha: Sequence[str],
    gallery_dhash: np.ndarray,
    *,
    max_bits: int = NEAR_DUPLICATE_BITS,
    chunk: int = 64,
) -> Leaks:
    """Match every query against the whole gallery by file hash, then by dHash distance <= `max_bits`."""
    first_with_sha: dict[str, int] = {}
    for i, sha in enumerate(gallery_sha):
        first_with_sha.setdefault(sha, i)
    exact = np.array([first_with_sha.get(sha, -1) for sha in query_sha], dtype=np.int64)
    n_q = len(query_sha)
    near = np.full(n_q, -1, dtype=np.int64)
    near_bits = np.full(n_q, -1, dtype=np.int64)
    g_hash = np.asarray(gallery_dhash, dtype=np.uint8)
    if len(g_hash):
        for start in range(0, n_q, chunk):
            dist = hamming(np.asarray(query_dhash)[start : start + chunk], g_hash)
            best = dist.argmin(axis=1)
            bits = dist[np.arange(len(best)), best]
            hit = (bits <= max_bits) & (exact[start : start + chunk] < 0)
            near[start : start + chunk] = np.where(hit, best, -1)
            near_bits[start : start + chunk] = np.where(hit, bits, -1)
    return Leaks(exact=exact, near=near, near_bits=near_bits, max_bits=int(max_bits))


def leak_summary(
    leaks: Leaks,
    query_paths: Sequence[str],
    gallery_paths: Sequence[str],
    *,
    excluded: bool,
    queries_without_patient: int,
    gallery_without_patient: int,
    queries_sharing_gallery_patient: int,
) -> dict:
    """The report's leakage block: counts, the listed pairs (up to LIST_LIMIT each), and patient-id gaps."""

    def pairs(index: np.ndarray, bits: np.ndarray | None) -> list[dict]:
        out = []
        for q in np.flatnonzero(index >= 0)[:LIST_LIMIT].tolist():
            item = {"query": query_paths[q], "gallery": gallery_paths[int(index[q])]}
            if bits is not None:
                item["bits"] = int(bits[q])
            out.append(item)
        return out

    return {
        "n_queries_checked": len(query_paths),
        "exact": {"n_queries": int((leaks.exact >= 0).sum()), "pairs": pairs(leaks.exact, None)},
        "near_duplicate": {
            "n_queries": int((leaks.near >= 0).sum()),
            "max_bits": leaks.max_bits,
            "pairs": pairs(leaks.near, leaks.near_bits),
        },
        "n_leaking_queries": int(leaks.any.sum()),
        "excluded": bool(excluded),
        "queries_without_patient_id": int(queries_without_patient),
        "gallery_without_patient_id": int(gallery_without_patient),
        "queries_sharing_a_gallery_patient": int(queries_sharing_gallery_patient),
    }

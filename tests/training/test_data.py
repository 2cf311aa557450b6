"""The training image cache (real JPEGs from cxr-public) and the class-balanced batch sampler."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from services.errors import DataError
from services.imaging import decode_image, to_model_input
from services.manifest import ManifestRow, read_manifest
from services.training.data import ClassBalancedBatchSampler, load_image_cache

SIZE = 32


@pytest.fixture(scope="module")
def some_rows(cxr_public: Path) -> list[ManifestRow]:
    """Three images from each of four classes, in manifest order."""
    per_label: dict[str, list[ManifestRow]] = {}
    for row in read_manifest(cxr_public / "manifest.csv"):
        if len(per_label.setdefault(row.label, [])) < 3 and len(per_label) <= 4:
            per_label[row.label].append(row)
    rows = [r for group in per_label.values() for r in group if len(group) == 3]
    return rows[:12]


def _bad_rows(tmp_path: Path) -> list[ManifestRow]:
    notes = tmp_path / "notes.jpg"
    notes.write_text("not an image")
    return [ManifestRow(path=notes, label="normal"), ManifestRow(path=tmp_path / "gone.png", label="normal")]


def test_cache_holds_the_decoder_output_as_uint8_and_skips_bad_files(
    some_rows: list[ManifestRow], tmp_path: Path
) -> None:
    rows = [*some_rows[:6], *_bad_rows(tmp_path), *some_rows[6:]]
    seen: list[tuple[int, int]] = []
    cache = load_image_cache(rows, SIZE, workers=2, progress=lambda done, total: seen.append((done, total)))

    assert cache.images.shape == (len(some_rows), SIZE, SIZE) and cache.images.dtype == np.uint8
    assert cache.paths == [str(r.path) for r in some_rows]
    assert cache.labels == [r.label for r in some_rows]
    assert [path for path, _ in cache.errors] == [str(tmp_path / "notes.jpg"), str(tmp_path / "gone.png")]
    assert seen[-1] == (len(rows), len(rows)) and len(seen) == len(rows)
    for i in (0, len(some_rows) - 1):
        pixels = to_model_input(decode_image(some_rows[i].path).pixels, SIZE)
        np.testing.assert_array_equal(cache.images[i], np.rint(pixels * 255).astype(np.uint8))


def test_cache_pixels_agree_with_pillow(some_rows: list[ManifestRow]) -> None:
    cache = load_image_cache(some_rows[:3], SIZE, workers=0)
    for i, row in enumerate(some_rows[:3]):
        with Image.open(row.path) as im:
            reference = np.asarray(im.convert("L").resize((SIZE, SIZE), Image.Resampling.BILINEAR), np.float32)
        ours = cache.images[i].astype(np.float32)
        assert np.abs(ours - reference).mean() < 8  # same picture; resampling details may differ
        assert np.corrcoef(ours.ravel(), reference.ravel())[0, 1] > 0.98


def test_batch_is_float_in_unit_range_with_a_channel(some_rows: list[ManifestRow]) -> None:
    cache = load_image_cache(some_rows[:4], SIZE, workers=0)
    x = cache.batch(np.array([2, 0]))
    assert x.shape == (2, 1, SIZE, SIZE) and x.dtype == torch.float32
    torch.testing.assert_close(x[0, 0] * 255, torch.from_numpy(cache.images[2]).float())
    assert x.min() >= 0 and x.max() <= 1


def test_groups_join_a_patients_images_and_keep_unknown_patients_apart(some_rows: list[ManifestRow]) -> None:
    rows = [
        ManifestRow(path=some_rows[0].path, label="a", patient_id="p1"),
        ManifestRow(path=some_rows[1].path, label="a", patient_id=None),
        ManifestRow(path=some_rows[2].path, label="b", patient_id="p1"),
        ManifestRow(path=some_rows[3].path, label="b", patient_id=None),
    ]
    cache = load_image_cache(rows, SIZE, workers=0)
    g = cache.groups
    assert g[0] == g[2] and len({g[0], g[1], g[3]}) == 3
    assert cache.classes == ["a", "b"] and cache.label_ids.tolist() == [0, 0, 1, 1]


def test_disk_cache_is_reused_and_invalidated_by_a_changed_file(some_rows: list[ManifestRow], tmp_path: Path) -> None:
    rows = [*some_rows[:4], *_bad_rows(tmp_path)]
    cache_dir = tmp_path / "cache"
    first = load_image_cache(rows, SIZE, workers=0, cache_dir=cache_dir)
    (npy,) = cache_dir.glob("*.npy")
    # Prove the second load reads the disk: overwrite the stored pixels and see them come back.
    np.save(npy, np.zeros_like(first.images))
    second = load_image_cache(rows, SIZE, workers=0, cache_dir=cache_dir)
    assert second.images.sum() == 0
    assert second.paths == first.paths and second.labels == first.labels and second.errors == first.errors
    stored = b"".join(p.read_bytes() for p in cache_dir.iterdir())
    assert not any(r.patient_id and r.patient_id.encode() in stored for r in rows)  # PHI stays in memory

    st = os.stat(rows[4].path)
    os.utime(rows[4].path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # any changed file changes the key
    third = load_image_cache(rows, SIZE, workers=0, cache_dir=cache_dir)
    np.testing.assert_array_equal(third.images, first.images)


def test_nothing_decodable_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="none of the 2 images"):
        load_image_cache(_bad_rows(tmp_path), SIZE, workers=0)


# ---- sampler ------------------------------------------------------------------------------------------


def _labels() -> list[str]:
    sizes = {"big": 40, "mid": 15, "small": 5, "tiny": 3, "lone": 1}
    return [name for name, n in sizes.items() for _ in range(n)]


def test_every_batch_is_full_distinct_and_has_positives_for_each_class_present() -> None:
    labels = np.array(_labels())
    sizes = Counter(labels.tolist())
    sampler = ClassBalancedBatchSampler(labels, batch_size=12, m_per_class=4, seed=0)
    seen: Counter[str] = Counter()
    for _, idx in zip(range(300), sampler, strict=False):
        assert len(idx) == 12 and len(set(idx.tolist())) == 12
        counts = Counter(labels[idx].tolist())
        seen.update(counts.keys())
        for name, k in counts.items():
            assert k >= 2 or sizes[name] == 1, (name, counts)
    assert set(seen) == set(sizes)  # small classes are drawn as often as big ones, by design
    assert min(seen.values()) > 300 * 3 / 5 * 0.7


def test_the_sampler_is_seeded_and_resumes_where_it_left_off() -> None:
    labels = _labels()
    a = iter(ClassBalancedBatchSampler(labels, 16, seed=5))
    b = iter(ClassBalancedBatchSampler(labels, 16, seed=5))
    c = iter(ClassBalancedBatchSampler(labels, 16, seed=6))
    first_a = [next(a) for _ in range(4)]
    assert all(np.array_equal(x, next(b)) for x in first_a)
    assert not all(np.array_equal(x, next(c)) for x in first_a)

    sampler = ClassBalancedBatchSampler(labels, 16, seed=5)
    stream = iter(sampler)
    for _ in range(3):
        next(stream)
    state = sampler.state_dict()
    expected = [next(stream) for _ in range(3)]
    resumed = ClassBalancedBatchSampler(labels, 16, seed=0)
    resumed.load_state_dict(state)
    assert all(np.array_equal(x, y) for x, y in zip(expected, iter(resumed), strict=False))


def test_impossible_batches_are_refused() -> None:
    with pytest.raises(DataError):
        ClassBalancedBatchSampler(["a", "a", "b"], batch_size=4)
    with pytest.raises(ValueError):
        ClassBalancedBatchSampler(_labels(), batch_size=8, m_per_class=1)


def test_the_source_balanced_sampler_spreads_a_labels_positives_over_its_sources() -> None:
    # Label "normal" comes from a big pediatric source and a smaller adult one; "covid" from one source only.
    labels = ["normal"] * 300 + ["normal"] * 60 + ["normal"] * 5 + ["covid"] * 200
    sources = ["kids"] * 300 + ["adults"] * 60 + ["tiny"] * 5 + ["papers"] * 200
    plain = iter(ClassBalancedBatchSampler(labels, 32, seed=0))
    balanced = iter(ClassBalancedBatchSampler(labels, 32, seed=0, sources=sources, min_source_images=20))
    src = np.asarray(sources)
    adult_share_plain, adult_share_balanced, tiny = [], [], 0
    for _ in range(200):
        for batches, out in ((plain, adult_share_plain), (balanced, adult_share_balanced)):
            batch = next(batches)
            assert len(set(batch.tolist())) == 32
            normal = batch[batch < 365]
            out.append(float((src[normal] == "adults").mean()))
        tiny += int((src[batch] == "tiny").sum())
    # Label-only sampling follows the sources' sizes (60 of 365 normals); balanced gives each source half.
    assert np.mean(adult_share_plain) < 0.25
    assert 0.45 < np.mean(adult_share_balanced) < 0.55
    assert min(adult_share_balanced) > 0.3  # every batch, not only on average
    # The 5 "tiny" films have no share of their own: drawn with the largest source, about 5/305 of its half.
    assert tiny / 200 < 0.5

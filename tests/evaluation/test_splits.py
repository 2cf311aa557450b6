"""Patient-level splits on the real cxr-public manifest, split files, and label merging."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from services.errors import DataError
from services.manifest import ManifestRow, file_sha256, read_manifest, read_manifests
from services.splits import (
    Split,
    load_or_make_split,
    make_split,
    merge_labels,
    merges_present,
    parse_merges,
    read_split,
    split_rows,
    write_split,
)

TARGET = {"train": 0.7, "val": 0.1, "test": 0.2}


@pytest.fixture(scope="module")
def manifest(cxr_public: Path) -> list[ManifestRow]:
    return read_manifest(cxr_public / "manifest.csv")


@pytest.fixture(scope="module")
def split0(manifest: list[ManifestRow], cxr_public: Path) -> Split:
    return make_split(manifest, root=cxr_public, seed=0)


def test_patients_never_cross_splits(manifest: list[ManifestRow], split0: Split, cxr_public: Path) -> None:
    parts = split_rows(manifest, split0, cxr_public)
    patients = {name: {row.patient_id for row in rows} for name, rows in parts.items()}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    # Kermany ids that carry both bacterial and viral images stay whole.
    mixed = {
        pid
        for pid, labels in _labels_by_patient(manifest).items()
        if {"pneumonia_bacterial", "pneumonia_viral"} <= labels
    }
    assert len(mixed) > 800
    for pid in mixed:
        assert sum(pid in found for found in patients.values()) == 1


def test_every_row_in_exactly_one_split(manifest: list[ManifestRow], split0: Split, cxr_public: Path) -> None:
    every = split0.train + split0.val + split0.test
    assert len(every) == len(set(every)) == len(manifest)
    csv_paths = {row.path.relative_to(cxr_public.resolve()).as_posix() for row in manifest}
    assert set(every) == csv_paths
    assert all(p.startswith("images/") for p in every)  # relative, portable


def test_fractions_close_overall_and_per_label(manifest: list[ManifestRow], split0: Split, cxr_public: Path) -> None:
    label_of = _label_of(manifest, cxr_public)
    totals = Counter(label_of.values())
    for name, items in split0.parts().items():
        assert abs(len(items) / len(manifest) - TARGET[name]) <= 0.03
        counts = Counter(label_of[p] for p in items)
        for label, total in totals.items():
            if total >= 100:  # the four other_* labels have 3-12 images: ±3% is not reachable
                assert abs(counts[label] / total - TARGET[name]) <= 0.03, (name, label)


def test_deterministic_per_seed(manifest: list[ManifestRow], split0: Split, cxr_public: Path) -> None:
    assert make_split(manifest, root=cxr_public, seed=0) == split0
    other = make_split(manifest, root=cxr_public, seed=1)
    assert set(other.test) != set(split0.test)
    assert other.seed == 1


@pytest.mark.parametrize("holdout", ["Hannover", "ML-WORKGROUP"])
def test_holdout_source_goes_to_test(manifest: list[ManifestRow], cxr_public: Path, holdout: str) -> None:
    split = make_split(manifest, root=cxr_public, seed=0, holdout_source=holdout)
    parts = split_rows(manifest, split, cxr_public)
    held = [row for row in manifest if row.source == "ml-workgroup/covid-19-image-repository"]
    assert len(held) == 227
    test_paths = set(split.test)
    assert all(row.path.relative_to(cxr_public.resolve()).as_posix() in test_paths for row in held)
    assert not any("ml-workgroup" in (row.source or "") for row in parts["train"] + parts["val"])
    assert split.holdout_source == holdout
    # The rest is still split by patient over all three parts.
    assert len(parts["val"]) > 0 and len(parts["test"]) > len(held)
    with pytest.raises(DataError, match="no image"):
        make_split(manifest, root=cxr_public, holdout_source="no-such-hospital")


def test_rows_without_patient_id_are_their_own_patient(tmp_path: Path) -> None:
    rows = [ManifestRow(path=tmp_path / f"img{i}.png", label="a" if i % 2 else "b") for i in range(40)]
    split = make_split(rows, root=tmp_path, seed=3)
    assert sorted(split.train + split.val + split.test) == sorted(f"img{i}.png" for i in range(40))
    assert (len(split.train), len(split.val), len(split.test)) == (28, 4, 8)


def test_bad_arguments(manifest: list[ManifestRow], cxr_public: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="fractions"):
        make_split(manifest, root=cxr_public, fractions=(0.5, 0.1, 0.1))
    with pytest.raises(DataError, match="not under"):
        make_split(manifest, root=tmp_path)
    with pytest.raises(DataError, match="more than once"):
        make_split([manifest[0], manifest[0]], root=cxr_public)


def test_write_read_round_trip(split0: Split, cxr_public: Path, tmp_path: Path) -> None:
    sha = file_sha256(cxr_public / "manifest.csv")
    split = Split(**{**split0.__dict__, "manifest_sha256": sha})
    path = tmp_path / "splits" / "seed0.json"
    digest = write_split(split, path)
    assert digest == file_sha256(path)
    assert read_split(path) == split
    assert write_split(read_split(path), tmp_path / "again.json") == digest  # stable bytes


def test_read_split_rejects_malformed(split0: Split, tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    write_split(split0, good)
    payload = json.loads(good.read_text())

    def write(obj: object) -> Path:
        bad = tmp_path / "bad.json"
        bad.write_text(obj if isinstance(obj, str) else json.dumps(obj))
        return bad

    cases = [
        "{not json",
        [1, 2],
        {**payload, "format": "other"},
        {**payload, "train": "images/a.jpg"},
        {**payload, "val": [*payload["val"], payload["train"][0]]},
        {**payload, "seed": "0"},
        {**payload, "fractions": [0.7, 0.3]},
        {**payload, "holdout_source": 5},
    ]
    for case in cases:
        with pytest.raises(DataError):
            read_split(write(case))
    with pytest.raises(DataError, match="cannot read"):
        read_split(tmp_path / "missing.json")


def test_split_rows_reports_missing_paths(manifest: list[ManifestRow], split0: Split, cxr_public: Path) -> None:
    parts = split_rows(manifest, split0, cxr_public)
    assert {k: len(v) for k, v in parts.items()} == {k: len(v) for k, v in split0.parts().items()}
    with pytest.raises(DataError, match="not in the manifest|the CSV lacks"):
        split_rows(manifest[:100], split0, cxr_public)


def test_merge_labels() -> None:
    labels = ["pneumonia_bacterial", "normal", "pneumonia_viral", "covid19", "other_ards"]
    merged = merge_labels(labels, ["pneumonia_bacterial, pneumonia_viral=pneumonia", "other_ards=other"])
    assert merged == ["pneumonia", "normal", "pneumonia", "covid19", "other"]
    assert merge_labels(labels, []) == labels
    assert parse_merges(["a,b=c", "d=c"]) == {"a": "c", "b": "c", "d": "c"}
    for bad in ["a,b", "=c", "a,b=", "a,,b=c", "a=b=c"]:
        with pytest.raises(DataError, match="bad label merge"):
            merge_labels(labels, [bad])
    with pytest.raises(DataError, match="both"):
        merge_labels(labels, ["a=b", "a=c"])


def _label_of(manifest: list[ManifestRow], root: Path) -> dict[str, str]:
    return {row.path.relative_to(root.resolve()).as_posix(): row.label for row in manifest}


def _labels_by_patient(manifest: list[ManifestRow]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for row in manifest:
        out.setdefault(row.patient_id or "", set()).add(row.label)
    return out


def _csv(folder: Path, n: int, *, prefix: str = "img", source: str = "s1") -> Path:
    """A real manifest file: n rows of two labels, one patient each, paths relative to `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["path,label,patient_id,source"]
    lines += [f"images/{prefix}{i}.png,{'a' if i % 2 else 'b'},{prefix}{i},{source}" for i in range(n)]
    path = folder / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_split_of_another_manifest_is_refused_not_reused(tmp_path: Path) -> None:
    manifests = read_manifests(_csv(tmp_path / "data", 40))
    path = tmp_path / "run" / "split.json"
    first, made = load_or_make_split(path, manifests, seed=0)
    assert made and read_split(path) == first and first.manifest_sha256 == manifests.sha256
    again, made = load_or_make_split(path, manifests, seed=0)
    assert not made and again == first
    other = read_manifests(_csv(tmp_path / "other", 30))
    with pytest.raises(DataError, match="made from another manifest") as info:
        load_or_make_split(path, other, seed=0)
    assert manifests.sha256[:12] in info.value.message and other.sha256[:12] in info.value.message
    assert "--out" in info.value.hint and str(path) in info.value.hint
    with pytest.raises(DataError, match="holdout source"):
        load_or_make_split(path, manifests, holdout_source="s1")
    # A hand-written split without a manifest hash cannot be checked, so it is used as it is.
    write_split(Split(**{**first.__dict__, "manifest_sha256": None}), path)
    unchecked, made = load_or_make_split(path, other)
    assert not made and unchecked.train == first.train


def test_several_manifests_split_as_one_set_and_record_each_hash(tmp_path: Path) -> None:
    one = _csv(tmp_path / "public", 40, prefix="p", source="kids")
    two = _csv(tmp_path / "adult", 30, prefix="q", source="adults")
    joined = read_manifests([one, two])
    assert joined.root == tmp_path.resolve() and len(joined.rows) == 70
    assert joined.hashes == {"public/manifest.csv": file_sha256(one), "adult/manifest.csv": file_sha256(two)}
    # The union's hash does not depend on the order the manifests are given in.
    assert read_manifests([two, one]).sha256 == joined.sha256 != file_sha256(one)
    split, _ = load_or_make_split(tmp_path / "run" / "split.json", joined, seed=0)
    assert split.manifests == joined.hashes
    assert read_split(tmp_path / "run" / "split.json").manifests == joined.hashes
    every = split.train + split.val + split.test
    assert {p.split("/")[0] for p in every} == {"public", "adult"}
    # Stratified by label and source: every (label, source) pair has images in train and test.
    parts = split_rows(joined.rows, split, joined.root)
    for part in ("train", "test"):
        strata = {(r.label, r.source) for r in parts[part]}
        assert strata == {(lab, src) for lab in "ab" for src in ("kids", "adults")}, part
    # One manifest alone keeps paths relative to its own folder, as before.
    alone = make_split(read_manifests(one).rows, root=read_manifests(one).root, seed=0)
    assert all(p.startswith("images/") for p in alone.train)


def test_an_image_in_two_manifests_is_refused(tmp_path: Path) -> None:
    one = _csv(tmp_path / "a", 4)
    two = tmp_path / "b.csv"
    two.write_text("path,label\na/images/img0.png,b\n")
    with pytest.raises(DataError, match="listed by both"):
        read_manifests([one, two])
    with pytest.raises(DataError, match="given twice"):
        read_manifests([one, one])


def test_merges_report_which_named_labels_were_present() -> None:
    spec = ("pneumonia_bacterial,pneumonia_viral,lung_opacity=pneumonia",)
    assert merges_present(["normal", "pneumonia_viral", "lung_opacity"], spec) == {
        "pneumonia": {"merged": ["pneumonia_viral", "lung_opacity"], "absent": ["pneumonia_bacterial"]}
    }
    assert merge_labels(["lung_opacity", "normal"], spec) == ["pneumonia", "normal"]

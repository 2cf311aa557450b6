"""A file rewritten in place and indexed again keeps one point: the one of its new content ("re-indexing never
duplicates"). Real files (cxr-public JPEGs, a pydicom-data CR), the real encoder and the real embedded store."""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest

from services.config import Settings
from services.pipeline import IngestOptions, Ingestor, Runtime, build_items


@pytest.fixture()
def runtime(data_dir: Path, tiny_checkpoint: Path):
    with Runtime(Settings(), model_path=tiny_checkpoint) as rt:
        yield rt


def export(tmp_path: Path, cxr_public: Path, dicom_dir: Path) -> tuple[Path, Path]:
    """export/ with film.jpg, other.jpg and chest.dcm (real files); and a third film to write over film.jpg."""
    folder = tmp_path / "export"
    folder.mkdir()
    a, b, c = sorted((cxr_public / "images" / "normal").iterdir())[:3]
    shutil.copy(a, folder / "film.jpg")
    shutil.copy(b, folder / "other.jpg")
    shutil.copy(dicom_dir / "RG1_UNCR.dcm", folder / "chest.dcm")
    return folder, c


def rewrite_pixels(path: Path) -> None:
    """The same instance (same SOP Instance UID), its pixels inverted: what a site's re-export can do."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    ds.PixelData = (pixels.max() - pixels).astype(pixels.dtype).tobytes()
    ds.save_as(path)


def index(rt: Runtime, folder: Path):
    items, _ = build_items([folder])
    opts = IngestOptions(collection="t", batch_size=4, decode_workers=1)
    return Ingestor(rt.encoder, rt.store, opts, salt=rt.settings.salt, refs=rt.ledger.put_refs).run(items)


def points_by_ref(rt: Runtime) -> dict[str, list]:
    out: dict[str, list] = {}
    for p in rt.store.scroll("t", with_vectors=True):
        out.setdefault(p.payload["source_ref"], []).append(p)
    return out


def test_a_file_changed_in_place_replaces_its_point_inline(
    runtime: Runtime, cxr_public: Path, dicom_dir: Path, tmp_path: Path
) -> None:
    folder, c = export(tmp_path, cxr_public, dicom_dir)
    first = index(runtime, folder)
    assert (first.indexed, first.skipped, first.failed) == (3, 0, [])
    before = points_by_ref(runtime)

    shutil.copy(c, folder / "film.jpg")  # another film under the same name
    rewrite_pixels(folder / "chest.dcm")
    again = index(runtime, folder)
    assert (again.indexed, again.skipped, again.failed) == (2, 1, [])
    after = points_by_ref(runtime)
    assert runtime.store.count("t") == 3
    assert set(after) == set(before) and Counter(len(v) for v in after.values()) == {1: 3}  # one point per file
    changed = {ref for ref in after if after[ref][0].payload != before[ref][0].payload}
    assert len(changed) == 2
    film = [after[ref][0] for ref in changed if after[ref][0].payload.get("sop_uid") is None][0]
    assert film.payload["content_sha256"] == hashlib.sha256(c.read_bytes()).hexdigest()
    chest = [after[ref][0] for ref in changed if after[ref][0].payload.get("sop_uid")][0]
    old_chest = before[chest.payload["source_ref"]][0]
    assert chest.id == old_chest.id  # a DICOM's point is its instance: the same id, its vector re-encoded
    assert not np.allclose(chest.vector, old_chest.vector)

    third = index(runtime, folder)  # nothing changed since: nothing is written
    assert (third.indexed, third.skipped) == (0, 3)

"""The session's indexed store, shared by every package that needs one (tests/api, tests/reports): a real embedded
store indexed with real cxr-public images and two real chest CRs by the tiny checkpoint. Defined here and imported
once by tests/conftest.py, so the whole session builds it once."""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.config import Settings
from services.manifest import read_manifest
from services.pipeline import IngestItem, IngestOptions, Ingestor, Runtime, build_items
from services.pipeline.ledger import Ledger

COLLECTION = "api"


# Two real chest CRs of one patient (MONOCHROME1, windowed) indexed beside the JPEGs; RG1_UNCR, a third image of
# the same patient with its own SOP Instance UID, stays out of the index to serve as a DICOM query.
INDEXED_DICOM = ("RG1_UNCI.dcm", "RG1_J2KR.dcm")
QUERY_DICOM = "RG1_UNCR.dcm"


@dataclass(frozen=True)
class Indexed:
    """An indexed data dir: its settings (without a token), the checkpoint, the manifest rows and the DICOM
    files indexed (label "dicom-cr")."""

    settings: Settings
    model: Path
    rows: list[dict[str, str]]
    sample: Path
    dicom: list[Path]

    def with_(self, **changes: object) -> Settings:
        """These settings with some fields changed (validated, as from the environment)."""
        return Settings(**{**self.settings.model_dump(), **changes})


@pytest.fixture(scope="session")
def indexed(
    public_sample: Path, tiny_checkpoint: Path, dicom_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Indexed:
    """public_sample (24 real X-rays, 4 labels, with patient ids) and two DICOM CRs, indexed into an embedded
    store once per session."""
    data_dir = tmp_path_factory.mktemp("api-data")
    dicom_copies = tmp_path_factory.mktemp("api-dicom")
    dicom = []
    for name in INDEXED_DICOM:
        dicom.append(dicom_copies / name)
        shutil.copy(dicom_dir / name, dicom[-1])
    settings = Settings(
        data_dir=data_dir, collection=COLLECTION, patient_salt="api-tests", store_linger_s=0.2, qdrant_url=None
    )
    manifest = read_manifest(public_sample / "manifest.csv")
    items, _ = build_items([], manifest=manifest, label_from="manifest")
    items += [IngestItem(path, label="dicom-cr") for path in dicom]
    with Runtime(settings, model_path=tiny_checkpoint) as rt:
        opts = IngestOptions(collection=COLLECTION, batch_size=8, decode_workers=1)
        refs = Ledger(settings.ledger_path).put_refs  # source_ref -> path, which thumbnails resolve
        report = Ingestor(rt.encoder, rt.store, opts, salt=settings.salt, refs=refs).run(items)
    assert report.indexed == len(items) and not report.failed
    with (public_sample / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return Indexed(settings, tiny_checkpoint, rows, public_sample, dicom)

"""The hostile corpus, built once per session from the real data sets, and one inline `cxr index` run over it (the
file index entry point, whose store the API tests then search)."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from services.config import Settings
from services.pipeline import IngestOptions, Ingestor, IngestReport, Runtime, build_items
from services.pipeline.ledger import Ledger
from tests.hostile.corpus import Case, build_corpus, write_corpus
from tests.hostile.memory import reset_peak, status_mb

COLLECTION = "hostile"
# Indexing the corpus inline (the file index with two decode threads, the pull and the receiver with one), over this
# process's resting size: at most two decodes of the largest good film at once (RG1, 3.6 Mpx at the 44 B/px that
# services/imaging/budget.py measured for DICOM: ~160 MiB each), the encoder's batch and allocator slack. One bomb
# decoded instead of refused costs 2 GB or more (4.9 GB measured for the JPEG 2000 one before it was refused).
INDEXING_CEILING_MB = 512


@pytest.fixture(scope="session")
def corpus(cxr_public: Path, dicom_dir: Path) -> list[Case]:
    return build_corpus(cxr_public, dicom_dir)


@dataclass(frozen=True)
class FileIndexRun:
    """What one inline index run of the whole corpus did, and this process's memory around it (MiB)."""

    settings: Settings
    files: dict[Path, Case]
    report: IngestReport
    resting_mb: float
    peak_mb: float


@pytest.fixture(scope="session")
def file_index_run(corpus: list[Case], tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> FileIndexRun:
    """The corpus written to a folder and indexed as `cxr index FOLDER` does (walk, two decode threads, encode,
    upsert, source refs in the ledger), into an embedded store of its own."""
    root = tmp_path_factory.mktemp("hostile-index")
    files = write_corpus(corpus, root / "export")
    settings = Settings(
        data_dir=root / "data",
        collection=COLLECTION,
        model=tiny_checkpoint,
        patient_salt="hostile-tests",
        store_linger_s=0.2,
        qdrant_url=None,
    )
    items, unfound = build_items([root / "export"])
    assert not unfound and len(items) == len(corpus)
    with Runtime(settings, model_path=settings.model_path) as rt:
        opts = IngestOptions(collection=COLLECTION, batch_size=8, decode_workers=2)
        ingestor = Ingestor(rt.encoder, rt.store, opts, salt=settings.salt, refs=Ledger(settings.ledger_path).put_refs)
        resting = reset_peak(os.getpid())
        with warnings.catch_warnings():
            # Pillow warns about png_over_cap (100 Mpx: over Pillow's soft limit) before our guard refuses it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            report = ingestor.run(items)
        peak = status_mb(os.getpid(), "VmHWM")
    return FileIndexRun(settings, files, report, resting, peak)

"""Shared fixtures: the real public data set and the pydicom-data radiographs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CXR_SHARED_DATA", REPO.parent / "shared" / "data"))
CXR_PUBLIC = SHARED_DATA / "cxr-public"


def _torch_one_thread() -> None:
    # Tests run beside services on 2 cores; one intra-op thread avoids oversubscription stalls.
    import torch

    torch.set_num_threads(1)


_torch_one_thread()


@pytest.fixture(scope="session")
def cxr_public() -> Path:
    if not (CXR_PUBLIC / "manifest.csv").exists():
        pytest.fail(f"the public data set is missing at {CXR_PUBLIC}; set CXR_SHARED_DATA")
    return CXR_PUBLIC


@pytest.fixture(scope="session")
def dicom_dir() -> Path:
    """Folder of pydicom-data's real radiographs (RG1_* chest CR, RG3_* tibia)."""
    import data_store  # installed by the pydicom-data package

    folder = Path(data_store.__file__).parent / "data"
    assert (folder / "RG1_UNCI.dcm").exists(), folder
    return folder


@pytest.fixture()
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated CXR_DATA_DIR per test."""
    d = tmp_path / "cxr-data"
    monkeypatch.setenv("CXR_DATA_DIR", str(d))
    monkeypatch.delenv("CXR_QDRANT_URL", raising=False)
    return d

"""Shared fixtures: the real public data set and the pydicom-data radiographs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.services import OrthancServer

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CXR_SHARED_DATA", REPO.parent / "shared" / "data"))
CXR_PUBLIC = SHARED_DATA / "cxr-public"
CXR_ADULT = SHARED_DATA / "cxr-adult"


# The suite runs the eager encoder (bf16 where supported), as before openvino became the default: converting each
# test's fresh checkpoint would cost seconds per test. tests/pipeline/test_inference_backend.py runs the default.
os.environ.setdefault("CXR_INFERENCE_BACKEND", "")


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
def cxr_adult() -> Path:
    if not (CXR_ADULT / "manifest.csv").exists():
        pytest.fail(f"the adult data set is missing at {CXR_ADULT}; set CXR_SHARED_DATA")
    return CXR_ADULT


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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init vit-tiny at 32 px, saved in the real checkpoint format (fast to build and run)."""
    from services.embedding import create_encoder, save_checkpoint

    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(create_encoder("vit-tiny", image_size=32, embed_dim=64, seed=0), out)
    return out


@pytest.fixture(scope="session")
def public_sample(cxr_public: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small labelled sample of the real data: a manifest of 6 images per main class (paths relative to it)."""
    import csv
    import shutil

    out = tmp_path_factory.mktemp("sample")
    with (cxr_public / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    picked: dict[str, list[dict]] = {}
    for row in rows:
        bucket = picked.setdefault(row["label"], [])
        if not row["label"].startswith("other") and len(bucket) < 6:
            bucket.append(row)
    chosen = [r for bucket in picked.values() for r in bucket]
    for row in chosen:
        dest = out / row["path"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(cxr_public / row["path"], dest)
    with (out / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    return out


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """One real redis-server for the session (loopback, free port, appendonly). Tests that stop Redis
    start their own `tests.services.RedisServer` instead."""
    from tests.services import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """One real Orthanc for the session (DICOMweb plugin, authentication on, free ports); `clean_orthanc` in
    tests/pacs empties it for a test."""
    from tests.services import OrthancServer

    server = OrthancServer(tmp_path_factory.mktemp("orthanc")).start()
    yield server
    server.stop()


# The session's indexed store (tests/indexed_store.py), defined once for every package that uses it.
from tests.indexed_store import indexed  # noqa: E402, F401

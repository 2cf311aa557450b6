"""A small archive for the viewer-flow browser tests: 64 real films indexed by the tiny checkpoint (enough for the
API to calibrate its closeness bands, which need 50), served with a token by uvicorn on a free port, and one
Chromium shared by the module's tests (a fresh tab, so a fresh sessionStorage, per test).

The films: adult COVID-19 films with ages (hida6), pediatric normals and pneumonias without ages (Kermany, one
source), adult normals with ages, and two DICOM CRs of one patient (RG1_UNCI, RG1_J2KR). Held out (never indexed):
two adult COVID-19 films, two pediatric normals, and RG1_UNCR (the RG1 patient's third film).
"""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.config import Settings
from services.manifest import read_manifest
from services.pipeline import IngestItem, IngestOptions, Ingestor, Runtime, build_items
from services.pipeline.ledger import Ledger
from tests.api.browser import CHROMIUM_FLAGS, LiveServer
from tests.services import require

COLLECTION = "viewer"
TOKEN = "viewer-flow-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UPLOAD_LIMIT_MB = 8  # RG1 DICOMs are 7 MB; a 9 MB file is over the limit
HIDA6 = "hida6/covid-chestxray-dataset"
KERMANY = "waliatushar/ai-pneumonia-detection"


@dataclass(frozen=True)
class Archive:
    """The indexed data dir's settings, the checkpoint, the indexed manifest rows and the held-out films."""

    settings: Settings
    model: Path
    indexed: list[dict[str, str]]
    folder: Path  # the indexed JPEGs (manifest paths are relative to it)
    held_covid: list[Path]
    held_child: list[Path]
    rg1_indexed: Path  # RG1_UNCI.dcm, indexed
    rg1_held: Path  # RG1_UNCR.dcm, the same patient, not indexed


def _pick(rows: list[dict[str, str]], label: str, source: str, n: int, *, adult: bool | None) -> list[dict]:
    def ok(r: dict[str, str]) -> bool:
        if adult is None:
            return not r["age"]
        return bool(r["age"]) and (int(r["age"]) >= 18) == adult

    return [r for r in rows if r["label"] == label and r["source"] == source and ok(r)][:n]


def build_archive(cxr_public: Path, dicom_dir: Path, model: Path, root: Path) -> Archive:
    with (cxr_public / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    covid = _pick(rows, "covid19", HIDA6, 22, adult=True)
    child = _pick(rows, "normal", KERMANY, 18, adult=None)
    chosen = (
        covid[:20]
        + child[:16]
        + _pick(rows, "pneumonia_bacterial", KERMANY, 14, adult=None)
        + _pick(rows, "pneumonia_viral", KERMANY, 6, adult=None)
        + _pick(rows, "normal", HIDA6, 6, adult=True)
    )
    folder, held = root / "films", root / "held"
    held.mkdir(parents=True)
    for row in chosen:
        (folder / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(cxr_public / row["path"], folder / row["path"])
    with (folder / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    held_covid = [Path(shutil.copy(cxr_public / r["path"], held)) for r in covid[20:]]
    held_child = [Path(shutil.copy(cxr_public / r["path"], held)) for r in child[16:]]
    dicom = [Path(shutil.copy(dicom_dir / n, root / n)) for n in ("RG1_UNCI.dcm", "RG1_J2KR.dcm", "RG1_UNCR.dcm")]
    settings = Settings(
        data_dir=root / "data", collection=COLLECTION, patient_salt="viewer-tests", store_linger_s=0.2, qdrant_url=None
    )
    items, _ = build_items([], manifest=read_manifest(folder / "manifest.csv"), label_from="manifest")
    items += [IngestItem(path, label="dicom-cr") for path in dicom[:2]]
    with Runtime(settings, model_path=model) as rt:
        opts = IngestOptions(collection=COLLECTION, batch_size=16, decode_workers=1)
        refs = Ledger(settings.ledger_path).put_refs
        report = Ingestor(rt.encoder, rt.store, opts, salt=settings.salt, refs=refs).run(items)
    assert report.indexed == len(items) == 64 and not report.failed
    return Archive(settings, model, chosen, folder, held_covid, held_child, dicom[0], dicom[2])


@pytest.fixture(scope="module", name="archive")
def archive_fixture(cxr_public: Path, dicom_dir: Path, tiny_checkpoint: Path, tmp_path_factory) -> Archive:
    return build_archive(cxr_public, dicom_dir, tiny_checkpoint, tmp_path_factory.mktemp("viewer-flow"))


@pytest.fixture(scope="module", name="server")
def server_fixture(archive: Archive) -> Iterator[LiveServer]:
    """The API and viewer over the archive, with a token and an 8 MiB upload limit."""
    from services.api.app import create_app

    settings = Settings(**{**archive.settings.model_dump(), "api_token": TOKEN, "api_max_upload_mb": UPLOAD_LIMIT_MB})
    app = create_app(settings, runtime=Runtime(settings, model_path=archive.model))
    with LiveServer(app) as live:
        yield live


@pytest.fixture(scope="module", name="chromium")
def chromium_fixture(tmp_path_factory) -> Iterator[object]:
    """One headless Chromium (a 1366x768 laptop screen, clipboard allowed) for the module."""
    binary = require("chromium", "chromium")
    try:
        from playwright import sync_api
    except ImportError:
        if os.environ.get("CXR_TEST_SERVICES"):
            pytest.fail("playwright is not installed: pip install -e '.[dev]'")
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("profile")),
            executable_path=binary,
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 1366, "height": 768},
        )
        context.grant_permissions(["clipboard-read", "clipboard-write"])
        try:
            yield context
        finally:
            context.close()


def new_tab(context, *, token: bool = True):
    """A fresh tab (its own sessionStorage), holding the API token unless `token` is False; `tab.errors` collects
    script errors and console errors other than the failed requests a test provokes on purpose."""
    tab = context.new_page()
    if token:
        tab.add_init_script(f"sessionStorage.setItem('cxr-api-token', {TOKEN!r})")
    tab.errors = []
    tab.on("pageerror", lambda exc: tab.errors.append(str(exc)))
    tab.on(
        "console",
        lambda msg: msg.type == "error" and "Failed to load resource" not in msg.text and tab.errors.append(msg.text),
    )
    return tab


def api_search(url: str, path: Path, filters: tuple[str, ...] = (), k: int = 12) -> dict:
    """The API's own answer for what the viewer sends by default: k 12, one per patient, own patient kept."""
    params = [("k", str(k)), ("group_by_patient", "true"), ("exclude_same_patient", "false")]
    params += [("filter", f) for f in filters]
    response = httpx.post(
        url + "/v1/search", params=params, files={"file": (path.name, path.read_bytes())}, headers=AUTH, timeout=60
    )
    assert response.status_code == 200, response.text
    return response.json()

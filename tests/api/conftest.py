"""API fixtures: a real embedded store indexed with real cxr-public images by the tiny checkpoint, and the app
over it (in-process through TestClient, or served by uvicorn on a free port for the browser)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.config import Settings
from services.pipeline import Runtime
from tests.indexed_store import COLLECTION, INDEXED_DICOM, QUERY_DICOM, Indexed  # noqa: F401 - re-exported


def serve_env(indexed: Indexed, **extra: str) -> dict[str, str]:
    """The environment of a `cxr serve` subprocess over the indexed collection: this process's, less any CXR_
    variable, plus the data dir, collection, salt and model, one torch thread, and `extra` (CXR_ names)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(
        CXR_DATA_DIR=str(indexed.settings.data_dir),
        CXR_COLLECTION=COLLECTION,
        CXR_PATIENT_SALT=indexed.settings.patient_salt.get_secret_value(),
        CXR_MODEL=str(indexed.model),
        CXR_TORCH_THREADS="1",
    )
    return env | extra


def make_client(settings: Settings, model: Path, **kwargs: object) -> TestClient:
    from services.api.app import create_app

    app = create_app(settings, runtime=Runtime(settings, model_path=model), **kwargs)
    return TestClient(app)


@pytest.fixture()
def client(indexed: Indexed) -> Iterator[TestClient]:
    """The app without a token, started (lifespan) and ready."""
    with make_client(indexed.settings, indexed.model) as c:
        c.app.state.api.wait_ready(60)
        yield c


# The browser fixtures (tests/api/browser.py), for every API test module that drives Chromium.
from tests.api.browser import live, page  # noqa: E402, F401

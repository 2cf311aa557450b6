"""A real browser on the real API: the app under uvicorn on a free loopback port (`live`) and Debian's headless
Chromium driven by Playwright (`page`, a fresh profile at a laptop's 1366x768)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.pipeline import Runtime
from tests.indexed_store import Indexed
from tests.services import free_port, require, wait_for

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class LiveServer:
    """The app under uvicorn in a thread, on a free loopback port; ready when /readyz says so."""

    def __init__(self, app: object) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="cxr-uvicorn", daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_for(lambda: httpx.get(self.url + "/readyz", timeout=2).status_code == 200, timeout=90, what="the API")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)


@pytest.fixture()
def live(indexed: Indexed) -> Iterator[LiveServer]:
    from services.api.app import create_app

    app = create_app(indexed.settings, runtime=Runtime(indexed.settings, model_path=indexed.model))
    with LiveServer(app) as server:
        yield server


@pytest.fixture()
def page(tmp_path: Path):
    chromium = require("chromium", "chromium")
    try:
        from playwright import sync_api
    except ImportError:  # a dev dependency: under `make test` its absence is a failure, elsewhere a skip
        if os.environ.get("CXR_TEST_SERVICES"):
            pytest.fail("playwright is not installed: pip install -e '.[dev]'")
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh --user-data-dir
            executable_path=chromium,
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 1366, "height": 768},  # a laptop screen
        )
        try:
            tab = context.new_page()
            tab.errors = []  # type: ignore[attr-defined]
            tab.on("pageerror", lambda exc: tab.errors.append(str(exc)))
            tab.on("console", lambda msg: msg.type == "error" and tab.errors.append(msg.text))
            yield tab
        finally:
            context.close()

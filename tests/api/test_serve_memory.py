"""What keeps `cxr serve` small: search on OpenVINO holds no torch until the first explanation (even when its model
cache was cold: a child process fills it), the thumbnail cache stays within its bound, and the heap is trimmed
after large decodes (services.api.heap). The mechanisms, not a size: benchmarks/serve_memory.py measures sizes.
The suite pins the eager back end (tests/conftest.py); these tests run the default, OpenVINO."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.api.heap import glibc_malloc_trim
from services.api.images import ThumbnailCache
from tests.api.conftest import Indexed, make_client, serve_env
from tests.services import free_port, wait_for

OPENVINO = {"inference_backend": "openvino"}


@contextmanager
def _client(indexed: Indexed, **changes: object) -> Iterator[TestClient]:
    """The app on the OpenVINO back end, ready."""
    with make_client(indexed.with_(**OPENVINO, **changes), indexed.model) as c:
        assert c.app.state.api.wait_ready(120).ready
        yield c


def _upload(path: Path) -> dict:
    return {"file": ("q", path.read_bytes())}


def _png(side: int) -> bytes:
    """A 16-bit PNG with many pixels and few bytes: its decode is large, its upload small."""
    ramp = np.add.outer(np.arange(side) * 7, np.arange(side) * 5) % 65536
    buf = io.BytesIO()
    Image.fromarray(ramp.astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def _first_jpeg(indexed: Indexed) -> Path:
    return indexed.sample / indexed.rows[0]["path"]


def _hit_ids(client: TestClient, indexed: Indexed, **params: object) -> list[str]:
    r = client.post("/v1/search", params={"k": 30, **params}, files=_upload(_first_jpeg(indexed)))
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json()["hits"]]


def _mapped(pid: int, lib: str) -> bool:
    return lib in Path(f"/proc/{pid}/maps").read_text()


def test_a_served_search_maps_no_torch_until_the_first_explanation(indexed: Indexed, tmp_path: Path) -> None:
    """In a real `cxr serve` on OpenVINO, started on a cold model cache (a child process fills it), torch's library
    is not even mapped after a search (test_the_eager_model_loads_on_the_first_explanation: an explanation loads
    it)."""
    shutil.rmtree(indexed.with_(**OPENVINO).model_cache_dir, ignore_errors=True)
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    cxr = Path(sys.executable).with_name("cxr")
    env = serve_env(indexed, CXR_INFERENCE_BACKEND="openvino")
    proc = subprocess.Popen([str(cxr), "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(base + "/readyz", timeout=2).status_code == 200, timeout=180, what="cxr serve")
        assert not _mapped(proc.pid, "libtorch_cpu")
        found = httpx.post(base + "/v1/search", params={"k": 2}, files=_upload(indexed.dicom[0]), timeout=60)
        assert found.status_code == 200, found.text
        assert _mapped(proc.pid, "libopenvino") and not _mapped(proc.pid, "libtorch_cpu")
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_the_eager_model_loads_on_the_first_explanation(indexed: Indexed) -> None:
    with _client(indexed) as client:
        state = client.app.state.api
        a, b = _hit_ids(client, indexed)[:2]
        assert state.encoder().runner_source in ("compiled-cache", "ir-cache")  # searched on the cached model
        assert not state.encoder().eager_loaded
        assert client.get("/v1/explain", params={"query": a, "result": b}).status_code == 200
        assert state.encoder().eager_loaded


def test_the_thumbnail_cache_stays_within_its_bound(indexed: Indexed) -> None:
    with _client(indexed, api_thumbnail_cache_mb=1) as c:
        cache = c.app.state.api.thumbnails
        assert cache.max_bytes == 2**20
        pngs = []
        for point in _hit_ids(c, indexed, filter="label!=dicom-cr"):
            r = c.get(f"/v1/points/{point}/thumbnail", params={"size": 1024})
            assert r.status_code == 200
            pngs.append(r.content)
            assert 0 < cache.nbytes <= cache.max_bytes
    # the same real thumbnails through a cache that holds about a third of them
    small = ThumbnailCache(sum(map(len, pngs)) // 3)
    for i, png in enumerate(pngs):
        small.put(str(i), png)
        assert small.nbytes <= small.max_bytes
    assert small.get(str(len(pngs) - 1)) == pngs[-1] and small.get("0") is None  # the oldest went first
    small.put("too large", small.max_bytes * b"x" + b"x")
    assert small.get("too large") is None  # larger than the whole bound: not kept


@pytest.mark.skipif(glibc_malloc_trim() is None, reason="malloc_trim is glibc's")
def test_the_heap_is_trimmed_after_large_decodes_only(indexed: Indexed) -> None:
    with _client(indexed) as client:
        _trims_after_large_decodes(client, indexed)


def _trims_after_large_decodes(client: TestClient, indexed: Indexed) -> None:
    heap = client.app.state.api.heap
    assert heap.enabled and heap.after_bytes == 32 * 2**20
    trims = heap.trims
    _hit_ids(client, indexed)  # a 320 px JPEG: far below the threshold
    assert heap.trims == trims
    r = client.post("/v1/search", params={"k": 1}, files={"file": ("q", _png(2500))})
    assert r.status_code == 200, r.text
    assert heap.trims == trims + 1 and not heap.due
    dicom = _hit_ids(client, indexed, filter="label=dicom-cr")[0]  # a stored 1955 x 1841 CR, decoded in full
    assert client.get(f"/v1/points/{dicom}/thumbnail").status_code == 200
    assert heap.trims == trims + 2
    metrics = client.get("/metrics").text
    assert any(line.startswith("cxr_api_heap_trims_total ") and float(line.split()[1]) >= 2 for line in
               metrics.splitlines())  # fmt: skip


def test_no_trim_when_turned_off(indexed: Indexed) -> None:
    with _client(indexed, api_trim_after_mb=0) as c:
        r = c.post("/v1/search", params={"k": 1}, files={"file": ("q", _png(2500))})
        assert r.status_code == 200 and c.app.state.api.heap.trims == 0

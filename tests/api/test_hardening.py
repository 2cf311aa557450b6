"""Upload hardening on the real app (TestClient): decode refusals come back as stable reason codes without Python
internals, a form with two `file` parts is refused, and the decode memory budget refuses what can never fit."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.api.conftest import Indexed, make_client
from tests.imaging.bad_files import claims_8000_with_1kb, empty_pixel_data, mpeg2

INTERNALS = ("Error", "NoneType", "len()", "Traceback")


def _png(side: int) -> bytes:
    ramp = np.add.outer(np.arange(side), np.arange(side)) % 256
    buf = io.BytesIO()
    Image.fromarray(ramp.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    ("make", "status", "code"),
    [(claims_8000_with_1kb, 422, "truncated"), (empty_pixel_data, 422, "no_pixel_data"),
     (mpeg2, 422, "unsupported_transfer_syntax"), (lambda: _png(300)[: len(_png(300)) // 2], 422, "truncated")],
    ids=["claims-8000x8000-over-1kb", "empty-pixel-data", "mpeg2", "png-cut-short"],
)  # fmt: skip
def test_decode_refusals_carry_a_reason_code_and_no_internals(client, make, status: int, code: str) -> None:
    data = make()
    for route in ("/v1/search", "/v1/render"):
        r = client.post(route, files={"file": ("q", data)})
        body = r.json()
        assert (r.status_code, body.get("reason")) == (status, code), (route, r.text)
        assert body["detail"].startswith("the uploaded file cannot be used: ")
        assert not any(word in r.text for word in INTERNALS), r.text


def test_explain_refusal_has_the_same_shape(client, indexed: Indexed) -> None:
    some_id = client.post("/v1/search", params={"k": 1}, files={"file": ("q", _png(256))}).json()["hits"][0]["id"]
    r = client.post("/v1/explain", params={"result": some_id}, files={"file": ("q", empty_pixel_data())})
    assert r.status_code == 422 and r.json()["reason"] == "no_pixel_data", r.text


def test_two_file_parts_are_refused_on_single_image_routes(client) -> None:
    one = _png(128)
    two = [("file", ("a", one)), ("file", ("b", _png(96)))]
    some_id = client.post("/v1/search", params={"k": 1}, files={"file": ("q", one)}).json()["hits"][0]["id"]
    for route, params in (("/v1/search", {}), ("/v1/render", {}), ("/v1/explain", {"result": some_id})):
        r = client.post(route, params=params, files=two)
        assert r.status_code == 422, (route, r.text)
        assert "one image per request" in r.json()["detail"] and "2 `file` parts" in r.json()["detail"]
    # POST /v1/index takes several: without a queue it answers its own 503, not the 422
    r = client.post("/v1/index", files=two)
    assert r.status_code == 503 and "queue" in r.json()["detail"]


def test_an_upload_over_the_whole_decode_budget_is_413_before_decoding(indexed: Indexed) -> None:
    settings = indexed.with_(api_decode_memory_mb=16, api_decode_wait_s=0.1)
    with make_client(settings, indexed.model) as c:
        c.app.state.api.wait_ready(60)
        small = c.post("/v1/render", files={"file": ("q", _png(256))})
        assert small.status_code == 200  # 256^2 px: about 2 MB of the 16 MB budget
        r = c.post("/v1/render", files={"file": ("q", _png(1000))})  # 1 Mpx: about 32 MB
        assert r.status_code == 413, r.text
        assert r.json()["reason"] == "too_large" and "decode memory budget of 16 MB" in r.json()["detail"]
        assert "CXR_API_DECODE_MEMORY_MB" in r.json()["hint"]
        assert c.app.state.api.decode_budget.used == 0

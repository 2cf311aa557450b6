"""Prometheus metrics of `cxr serve` (in process, real app and store) and of the receiver (real pynetdicom sender):
counted by route template and status, no patient data in them, and /metrics needs an admin token off loopback."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from services.api.app import create_app
from services.pipeline import Runtime
from tests.api.conftest import Indexed, make_client

TOKEN = "metrics-test-token-0123456789abcdef"


def _value(text: str, metric: str, **labels: str) -> float:
    """The sample of `metric` with exactly `labels` (in any order) in a Prometheus exposition; 0 when absent."""
    for line in text.splitlines():
        found = re.fullmatch(rf"{re.escape(metric)}(?:\{{(.*)\}})? (\S+)", line)
        if found and dict(re.findall(r'(\w+)="([^"]*)"', found.group(1) or "")) == labels:
            return float(found.group(2))
    return 0.0


def test_requests_are_counted_by_route_template_and_hold_no_patient_data(indexed: Indexed) -> None:
    film = (indexed.sample / indexed.rows[0]["path"]).read_bytes()
    with make_client(indexed.settings, indexed.model) as c:
        c.app.state.api.wait_ready(60)
        before = _value(
            c.get("/metrics").text, "cxr_api_requests_total", route="/v1/search", method="POST", status="200"
        )
        ids = [h["id"] for h in c.post("/v1/search", files={"file": ("q.jpg", film, "image/jpeg")}).json()["hits"]]
        assert c.get(f"/v1/points/{ids[0]}/thumbnail").status_code == 200
        assert c.post("/v1/search", files={"file": ("x.txt", b"no", "text/plain")}).status_code == 415
        text = c.get("/metrics").text
    assert _value(text, "cxr_api_requests_total", route="/v1/search", method="POST", status="200") == before + 1
    assert _value(text, "cxr_api_requests_total", route="/v1/search", method="POST", status="415") >= 1
    thumb = "/v1/points/{point_id}/thumbnail"
    assert _value(text, "cxr_api_requests_total", route=thumb, method="GET", status="200") >= 1
    assert _value(text, "cxr_api_request_seconds_count", route="/v1/search") >= 2
    assert _value(text, "cxr_model_load_seconds") > 0
    assert not any(i in text for i in ids)  # a point id never becomes a label


def test_metrics_off_loopback_need_an_admin_token(indexed: Indexed) -> None:
    settings = indexed.with_(api_token=TOKEN)
    app = create_app(settings, runtime=Runtime(settings, model_path=indexed.model))
    with TestClient(app, client=("10.1.2.3", 40000)) as remote:
        assert remote.get("/metrics").status_code == 401
        assert remote.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    with TestClient(app, client=("127.0.0.1", 40000)) as local:
        assert local.get("/metrics").status_code == 200

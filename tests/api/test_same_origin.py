"""The Host check (DNS rebinding) and the cross-site check (CSRF) on the real app: which Host headers are answered
with and without a token, and which state-changing requests a browser's Origin / Sec-Fetch-Site headers refuse."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from services.api.same_origin import host_name, is_loopback_host
from tests.api.conftest import Indexed, make_client

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


@pytest.fixture()
def open_api(indexed: Indexed) -> Iterator[TestClient]:
    """No token (what `cxr serve` runs on loopback), one allowed extra host name."""
    with make_client(indexed.with_(api_allowed_hosts="cxr.lan, 10.1.2.3"), indexed.model) as c:
        c.app.state.api.wait_ready(60)
        yield c


@pytest.mark.parametrize(
    ("header", "name"),
    [("localhost:8000", "localhost"), ("LOCALHOST", "localhost"), ("127.0.0.1:8000", "127.0.0.1"),
     ("[::1]:8000", "::1"), ("[::1]", "::1"), ("cxr.lan.", "cxr.lan"), ("a:b", None), ("[::1]x", None),
     ("::1", None), ("", None), ("h:80:80", None)],
)  # fmt: skip
def test_host_name_parsing(header: str, name: str | None) -> None:
    assert host_name(header) == name


def test_loopback_names() -> None:
    for host in ("localhost", "localhost.", "127.0.0.1", "127.255.0.9", "::1", "[::1]"):
        assert is_loopback_host(host), host
    for host in ("0.0.0.0", "10.0.0.1", "localhost.evil.example", "evil.example", "2130706433", "::"):
        assert not is_loopback_host(host), host


def test_without_a_token_only_loopback_and_allowed_hosts_are_answered(open_api: TestClient) -> None:
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "0.0.0.0:8000", "10.9.9.9"):
        r = open_api.get("/v1/collections", headers={"Host": host})
        assert r.status_code == 421, (host, r.status_code)
        assert "CXR_API_ALLOWED_HOSTS" in r.json()["hint"]
    assert open_api.get("/livez", headers={"Host": "evil.example"}).status_code == 421  # no route is exempt
    assert open_api.get("/livez", headers={"Host": "a:b:c"}).status_code == 400
    for host in ("localhost:8000", "127.0.0.1:8000", "127.3.2.1", "[::1]:8000", "cxr.lan:8000", "10.1.2.3"):
        assert open_api.get("/v1/collections", headers={"Host": host}).status_code == 200, host


def test_with_a_token_any_host_reaches_the_token_check(indexed: Indexed) -> None:
    with make_client(indexed.with_(api_token="t0ken"), indexed.model) as c:
        c.app.state.api.wait_ready(60)
        assert c.get("/v1/collections", headers={"Host": "cxr.example.org"}).status_code == 401
        ok = c.get("/v1/collections", headers={"Host": "cxr.example.org", "Authorization": "Bearer t0ken"})
        assert ok.status_code == 200
    with make_client(indexed.with_(api_token="t0ken", api_allowed_hosts="cxr.example.org"), indexed.model) as c:
        assert c.get("/v1/collections", headers={"Host": "other.example.org"}).status_code == 421


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "http://localhost:3000"},  # another app on this machine is another origin
        {"Origin": "null"},  # a sandboxed frame or a file:// page
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "cross-site", "Origin": "http://testserver"},  # the browser's own word wins
    ],
)
def test_cross_site_state_changing_requests_are_403(open_api: TestClient, headers: dict[str, str]) -> None:
    for method, url, kwargs in (
        ("post", "/v1/index", {"files": {"file": ("q.png", PNG)}}),
        ("post", "/v1/search", {"files": {"file": ("q.png", PNG)}}),
        ("post", "/v1/search/similar", {"json": {"positive": []}}),
        ("put", "/v1/collections", {}),
        ("delete", "/v1/points/00000000-0000-4000-8000-000000000000", {}),
    ):
        r = getattr(open_api, method)(url, headers=headers, **kwargs)
        assert r.status_code == 403, (method, url, r.status_code)
        assert "cross-site" in r.json()["detail"]
    assert open_api.get("/v1/collections", headers=headers).status_code == 200  # reads are not refused


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, scripts: no browser headers
        {"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"},  # the viewer
        {"Origin": "http://testserver"},  # a browser without Sec-Fetch-Site, same origin
        {"Sec-Fetch-Site": "none"},  # typed into the address bar
        {"Origin": "http://cxr.lan:8000"},  # an allowed host (e.g. behind a proxy that rewrites Host)
    ],
)
def test_same_origin_and_non_browser_requests_pass(open_api: TestClient, headers: dict[str, str]) -> None:
    r = open_api.post("/v1/index", files={"file": ("q.png", PNG)}, headers=headers)
    assert r.status_code == 503 and "queue" in r.json()["detail"]  # past the guard; no queue in this app

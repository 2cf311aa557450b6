"""Scoped tokens on the real app over the indexed store: every route's 401 and 403 (walked from `app.routes`, so
a new route cannot be left out), payloads with and without the admin fields, a revoke that holds at once with no
restart, and `cxr serve` listening beyond loopback with only a tokens file."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import fastapi.routing
import pytest
from starlette.routing import Mount
from typer.testing import CliRunner

from services.api.schemas import ADMIN_PAYLOAD_KEYS
from services.api.tokens import ADMIN, INDEX, SEARCH, add_token
from tests.api.conftest import Indexed, make_client
from tests.api.test_tokens import cxr_token
from tests.services import free_port

API_TOKEN = "the-single-admin-token"
# Every route the app has, by the scope it needs. A route missing here fails the walk below: give it its scope.
SCOPE_OF = {
    ("POST", "/v1/search"): SEARCH,
    ("POST", "/v1/search/similar"): SEARCH,
    ("GET", "/v1/points/{point_id}"): SEARCH,
    ("GET", "/v1/points/{point_id}/thumbnail"): SEARCH,
    ("POST", "/v1/render"): SEARCH,
    ("GET", "/v1/collections"): SEARCH,
    ("GET", "/v1/facets"): SEARCH,
    ("GET", "/v1/points/{point_id}/pixels"): SEARCH,
    ("POST", "/v1/pixels"): SEARCH,
    ("GET", "/v1/explain"): SEARCH,
    ("POST", "/v1/explain"): SEARCH,
    ("POST", "/v1/report"): SEARCH,
    ("POST", "/v1/index"): INDEX,
    ("GET", "/v1/admin/audit"): ADMIN,
    ("POST", "/v1/admin/forget"): ADMIN,
    ("GET", "/metrics"): ADMIN,  # off loopback (TestClient's client is not); loopback reads it freely (test_metrics)
}
# No patient data: health, the redirect to the viewer, the OpenAPI schema and its pages, and static files.
PUBLIC_ROUTES = {"/livez", "/readyz", "/", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
PUBLIC_MOUNTS = {"/viewer", "/docs-assets"}


@pytest.fixture()
def scoped(indexed: Indexed, tmp_path: Path) -> Iterator[tuple]:
    """The app with CXR_API_TOKEN and a tokens file holding one token per scope; (client, tokens file, headers)."""
    tokens = tmp_path / "tokens.jsonl"
    headers = {"api-token": {"Authorization": f"Bearer {API_TOKEN}"}}
    for scope in (SEARCH, INDEX, ADMIN):
        _, secret = add_token(tokens, f"{scope}-only", [scope])
        headers[scope] = {"Authorization": f"Bearer {secret}"}
    with make_client(indexed.with_(api_token=API_TOKEN, api_tokens_file=tokens), indexed.model) as c:
        c.app.state.api.wait_ready(60)
        yield c, tokens, headers


def _guarded_routes(app) -> list[tuple[str, str]]:  # noqa: ANN001 - a FastAPI app
    """(method, path) of every route but the public ones. FastAPI 0.16x keeps an included router as one entry of
    `app.routes` (iter_route_contexts opens it); older versions list its routes there directly."""
    opened = getattr(fastapi.routing, "iter_route_contexts", None)
    found = []
    for route in opened(app.routes) if opened else app.routes:
        if isinstance(getattr(route, "original_route", route), Mount):
            assert route.path in PUBLIC_MOUNTS, f"a new mount {route.path}: say whether it needs a token"
            continue
        assert route.path and route.methods, f"a route this walk cannot read: {route!r}"
        if route.path not in PUBLIC_ROUTES:
            found += [(method, route.path) for method in sorted(route.methods) if method != "HEAD"]
    return found


def test_every_route_answers_401_without_a_token_and_403_without_its_scope(scoped) -> None:
    client, _, headers = scoped
    routes = _guarded_routes(client.app)
    assert set(routes) == set(SCOPE_OF), "classify each new route in SCOPE_OF"
    problems = []
    for method, path in routes:
        url = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)
        scope = SCOPE_OF[(method, path)]
        missing = client.request(method, url)
        if missing.status_code != 401 or not missing.headers.get("www-authenticate", "").startswith("Bearer"):
            problems.append(f"{method} {path} without a token: {missing.status_code}")
        for holder in (SEARCH, INDEX, ADMIN, "api-token"):
            r = client.request(method, url, headers=headers[holder])
            allowed = holder in (scope, ADMIN, "api-token")
            if allowed and r.status_code in (401, 403):
                problems.append(f"{method} {path} refused the {holder} token: {r.status_code} {r.text}")
            if not allowed and (r.status_code != 403 or r.json().get("scope") != scope):
                problems.append(f"{method} {path} with only {holder}: {r.status_code} {r.text}")
    assert not problems, "\n".join(problems)


def _all_hits(client, headers: dict[str, str], indexed: Indexed) -> list[dict]:  # noqa: ANN001
    query = (indexed.sample / indexed.rows[0]["path"]).read_bytes()
    r = client.post("/v1/search", params={"k": 40}, files={"file": ("q", query)}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["hits"]


def test_only_admin_sees_the_uids_and_hashes_in_payloads(scoped, indexed: Indexed) -> None:
    client, _, headers = scoped
    for admin in (ADMIN, "api-token"):
        hits = _all_hits(client, headers[admin], indexed)
        seen = {key for h in hits for key in h["payload"]}
        assert seen >= ADMIN_PAYLOAD_KEYS, ADMIN_PAYLOAD_KEYS - seen  # DICOM points carry UIDs, all carry hashes
    dicom = next(h for h in hits if "sop_uid" in h["payload"])
    others = [h["id"] for h in hits if h["id"] != dicom["id"]][:3]

    searched = _all_hits(client, headers[SEARCH], indexed)
    assert len(searched) == len(hits) and all(not ADMIN_PAYLOAD_KEYS & set(h["payload"]) for h in searched)
    assert all("label" in h["payload"] for h in searched)  # what the viewer shows stays
    similar = client.post("/v1/search/similar", json={"positive": [dicom["id"]], "k": 30}, headers=headers[SEARCH])
    assert similar.status_code == 200 and similar.json()["hits"]
    assert all(not ADMIN_PAYLOAD_KEYS & set(h["payload"]) for h in similar.json()["hits"])
    grouped = client.post(
        "/v1/search/similar",
        json={"positive": [dicom["id"], *others], "k": 30, "group_by_patient": True, "exclude_same_patient": True},
        headers=headers[SEARCH],
    )  # the patient options still work server-side for a caller who never sees the patient hash
    assert grouped.status_code == 200 and grouped.json()["query"]["patient_excluded"] is True
    point = client.get(f"/v1/points/{dicom['id']}", headers=headers[SEARCH]).json()
    assert point["payload"]["label"] == "dicom-cr" and not ADMIN_PAYLOAD_KEYS & set(point["payload"])
    point = client.get(f"/v1/points/{dicom['id']}", headers=headers[ADMIN]).json()
    assert {"sop_uid", "study_uid", "series_uid", "patient_hash"} <= set(point["payload"])


def test_an_open_api_hides_identifiers_unless_told_to_show_them(client, indexed: Indexed) -> None:
    hits = _all_hits(client, {}, indexed)
    assert hits and all(not ADMIN_PAYLOAD_KEYS & set(h["payload"]) for h in hits)
    assert all("label" in h["payload"] for h in hits)  # the display payload stays
    point = client.get(f"/v1/points/{hits[0]['id']}").json()
    assert not ADMIN_PAYLOAD_KEYS & set(point["payload"])
    with make_client(indexed.with_(api_expose_identifiers=True), indexed.model) as exposed:
        exposed.app.state.api.wait_ready(60)
        hits = _all_hits(exposed, {}, indexed)
        assert {key for h in hits for key in h["payload"]} >= ADMIN_PAYLOAD_KEYS


def test_a_revoked_token_fails_within_a_second_with_no_restart(scoped) -> None:
    client, tokens, headers = scoped
    added = cxr_token(tokens, "add", "night-shift", "--scope", "search")
    assert added.returncode == 0, added.stderr
    mine = {"Authorization": f"Bearer {added.stdout.strip()}"}
    assert client.get("/v1/collections", headers=mine).status_code == 200  # added while the app runs
    revoked = cxr_token(tokens, "revoke", "night-shift")
    assert revoked.returncode == 0, revoked.stderr
    t0 = time.monotonic()
    while (status := client.get("/v1/collections", headers=mine).status_code) == 200 and time.monotonic() - t0 < 2:
        time.sleep(0.05)
    assert status == 401 and time.monotonic() - t0 < 1.0
    assert client.get("/v1/collections", headers=headers[SEARCH]).status_code == 200  # the others still work


def test_serve_listens_beyond_loopback_with_only_a_tokens_file(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    from cli.main import app

    served = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: served.append(self.config.host))
    monkeypatch.delenv("CXR_API_TOKEN", raising=False)
    monkeypatch.setenv("CXR_API_TOKENS_FILE", str(tmp_path / "tokens.jsonl"))
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--port", str(free_port())])
    assert result.exit_code == 0, result.output
    assert served == ["0.0.0.0"] and "refusing" not in result.output and "open" not in result.output
    monkeypatch.delenv("CXR_API_TOKENS_FILE")
    refused = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--port", str(free_port())])
    assert refused.exit_code == 2 and "CXR_API_TOKENS_FILE" in refused.output

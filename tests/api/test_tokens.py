"""Named API tokens: the file (`cxr token add|list|revoke`, run for real), its reload, and the scope dependency
on a small app (who the caller is, what they may do, and the 401/403 answers)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from services.api.access import actor_of, install_access, require_scope, sees_admin_fields
from services.api.tokens import (
    ADMIN,
    INDEX,
    SEARCH,
    TokenCache,
    add_token,
    parse_scopes,
    read_token_file,
    revoke_token,
)
from services.config import Settings

REPO = Path(__file__).resolve().parents[2]


def cxr_token(tokens: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`cxr token ARGS` in a fresh interpreter, as an operator runs it, with only CXR_API_TOKENS_FILE set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(CXR_API_TOKENS_FILE=str(tokens), CXR_DATA_DIR=str(tokens.parent / "data"))
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "token", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_add_prints_only_the_secret_and_stores_only_its_hash(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.jsonl"
    added = cxr_token(tokens, "add", "ward-viewer", "--scope", "search,index")
    assert added.returncode == 0, added.stderr
    secret = added.stdout.strip()
    assert added.stdout == secret + "\n" and len(secret) >= 43  # one line: a script can capture it
    assert "ward-viewer" in added.stderr and "cannot be shown again" in " ".join(added.stderr.split())
    text = tokens.read_text()
    assert secret not in text and secret[4:] not in text
    assert hashlib.sha256(secret.encode()).hexdigest() in text
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    (token,) = read_token_file(tokens).tokens
    assert (token.name, token.scopes) == ("ward-viewer", (SEARCH, INDEX))

    listed = cxr_token(tokens, "list")
    assert listed.returncode == 0 and "ward-viewer" in listed.stdout and "search,index" in listed.stdout
    assert token.sha256 not in listed.stdout and secret not in listed.stdout
    as_json = json.loads(cxr_token(tokens, "list", "--json").stdout)
    assert as_json == [{"name": "ward-viewer", "scopes": ["search", "index"], "created_at": token.created_at}]
    from services.governance.audit import AuditLog

    (change,) = AuditLog(tmp_path / "data" / "audit.sqlite3").records(action="token.add")  # the change is audited
    assert change.actor.startswith("os:") and change.objects == {"token": "ward-viewer", "scopes": ["search", "index"]}
    assert secret not in json.dumps(change.to_dict())


def test_add_refuses_a_taken_name_an_unknown_scope_and_a_bad_name(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.jsonl"
    assert cxr_token(tokens, "add", "ops", "-s", "admin").returncode == 0
    before = tokens.read_text()
    taken = cxr_token(tokens, "add", "ops", "-s", "search")
    assert taken.returncode == 1 and "already" in taken.stderr and taken.stdout == ""
    unknown = cxr_token(tokens, "add", "x", "--scope", "search,serch")
    assert unknown.returncode == 2 and "unknown scope 'serch' (did you mean search?)" in unknown.stderr
    from cli.main import app

    for bad in ("api-token", "anonymous", "a b", "-x", "x" * 65, "ünï"):  # in-process: a second each saved
        result = CliRunner().invoke(
            app, ["token", "add", "-s", "search", "--", bad], env={"CXR_API_TOKENS_FILE": str(tokens)}
        )
        assert result.exit_code == 2 and result.stdout == "", (bad, result.output)
        assert "not a token name" in result.output or "reserved" in result.output
    assert tokens.read_text() == before


def test_revoke_and_the_missing_setting(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.jsonl"
    assert cxr_token(tokens, "add", "a", "-s", "search").returncode == 0
    assert cxr_token(tokens, "add", "b", "-s", "index").returncode == 0
    gone = cxr_token(tokens, "revoke", "a")
    assert gone.returncode == 0 and [t.name for t in read_token_file(tokens).tokens] == ["b"]
    again = cxr_token(tokens, "revoke", "a")
    assert again.returncode == 1 and "no token named 'a'" in again.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    unset = subprocess.run(
        [sys.executable, "-m", "cli.main", "token", "list"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert unset.returncode == 1 and "CXR_API_TOKENS_FILE is not set" in unset.stderr


def test_a_bad_line_is_skipped_logged_once_and_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tokens = tmp_path / "tokens.jsonl"
    good, good_secret = add_token(tokens, "good", [SEARCH])
    _, other_secret = add_token(tokens, "other", [INDEX])
    digest = "0" * 64
    bad_lines = [
        "{not json",
        json.dumps({"name": "typo", "scope": ["search"], "sha256": digest}),
        json.dumps({"name": "sudo", "scopes": ["root"], "sha256": digest}),
        json.dumps({"name": "plain", "scopes": ["search"], "sha256": "my-password"}),
        json.dumps({"name": "good", "scopes": ["admin"], "sha256": digest}),  # a second "good": skipped
    ]
    with tokens.open("a") as fh:  # edited by hand, in place
        fh.write("\n".join(bad_lines) + "\n")
    cache = TokenCache(tokens)
    with caplog.at_level(logging.WARNING, logger="cxr.api"):
        assert cache.lookup(good_secret) == good
        assert cache.lookup(other_secret).name == "other"
        assert cache.lookup(good_secret) == good
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == len(bad_lines)  # once each, not once per request
    assert "line 4: not a JSON object" in skipped[0] and "named twice" in skipped[-1]

    listed = cxr_token(tokens, "list")
    assert listed.returncode == 0 and listed.stdout.count("\n") == 3  # a header and the two good tokens
    assert listed.stderr.count("the API skips this line") == len(bad_lines)
    revoke_token(tokens, "other")
    assert all(line in tokens.read_text() for line in bad_lines[:4])  # a rewrite never drops what it cannot read
    assert cache.lookup(other_secret) is None and cache.lookup(good_secret) == good


def test_the_cache_rereads_a_changed_file_and_fails_closed(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.jsonl"
    cache = TokenCache(tokens)
    _, secret = add_token(tokens, "a", [SEARCH])
    assert cache.lookup(secret).name == "a"
    revoke_token(tokens, "a")
    assert cache.lookup(secret) is None
    _, again = add_token(tokens, "a", [ADMIN])
    assert cache.lookup(again).granted == {SEARCH, INDEX, ADMIN} and cache.lookup(secret) is None
    tokens.unlink()
    assert cache.lookup(again) is None  # deleting the file revokes everything


def test_a_tokens_file_others_can_write_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tokens = tmp_path / "tokens.jsonl"
    _, secret = add_token(tokens, "a", [SEARCH])
    cache = TokenCache(tokens)
    with caplog.at_level(logging.WARNING, logger="cxr.api"):
        assert cache.lookup(secret) is not None
        assert "writable" not in caplog.text
        tokens.chmod(0o664)
        assert cache.lookup(secret) is not None
    assert "writable by others than its owner (mode 0o664)" in caplog.text


def test_concurrent_adds_lose_nothing(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.jsonl"
    names = [f"t{i}" for i in range(8)]
    threads = [threading.Thread(target=add_token, args=(tokens, name, [SEARCH])) for name in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(t.name for t in read_token_file(tokens).tokens) == names


def test_parse_scopes() -> None:
    assert parse_scopes(["index,search"]) == (SEARCH, INDEX)
    assert parse_scopes(["search", " ADMIN "]) == (SEARCH, ADMIN)
    for bad in ([], [","], ["reader"]):
        with pytest.raises(ValueError):
            parse_scopes(bad)


def _small_app(settings: Settings) -> TestClient:
    """A bare app with the scope dependency: one sync and one async route per scope that say who called."""
    app = FastAPI()
    install_access(app, settings)
    for scope in (SEARCH, INDEX, ADMIN):

        @app.get(f"/{scope}", dependencies=[Depends(require_scope(scope))])
        def sync_route(request: Request) -> dict:
            return {"actor": actor_of(request), "scopes": sorted(request.state.scopes), "admin": sees_admin_fields()}

        @app.get(f"/{scope}/async", dependencies=[Depends(require_scope(scope))])
        async def async_route(request: Request) -> dict:
            return {"actor": actor_of(request), "scopes": sorted(request.state.scopes), "admin": sees_admin_fields()}

    @app.get("/open")
    def unguarded(request: Request) -> dict:
        return {"actor": actor_of(request), "admin": sees_admin_fields()}

    return TestClient(app)


def test_who_calls_and_what_they_may_do(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.jsonl"
    _, searcher = add_token(tokens, "searcher", [SEARCH])
    _, boss = add_token(tokens, "boss", [ADMIN])
    settings = Settings(data_dir=tmp_path, api_token="single-admin-token", api_tokens_file=tokens)
    client = _small_app(settings)
    as_ = {name: {"Authorization": f"Bearer {secret}"} for name, secret in
           (("searcher", searcher), ("boss", boss), ("api-token", "single-admin-token"))}  # fmt: skip
    all_scopes = sorted([SEARCH, INDEX, ADMIN])
    for suffix in ("", "/async"):
        r = client.get(f"/search{suffix}", headers=as_["searcher"])
        assert r.json() == {"actor": "searcher", "scopes": [SEARCH], "admin": False}
        refused = client.get(f"/index{suffix}", headers=as_["searcher"])
        assert refused.status_code == 403 and refused.json()["scope"] == INDEX
        assert "'index'" in refused.json()["detail"] and "searcher" in refused.json()["detail"]
        assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
        for admin in ("boss", "api-token"):
            for scope in (SEARCH, INDEX, ADMIN):  # admin implies the others
                r = client.get(f"/{scope}{suffix}", headers=as_[admin])
                assert r.json() == {"actor": admin, "scopes": all_scopes, "admin": True}
        missing = client.get(f"/search{suffix}")
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == 'Bearer realm="cxr"'
        wrong = client.get(f"/search{suffix}", headers={"Authorization": f"Bearer {searcher}x"})
        assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert client.get("/open", headers=as_["boss"]).json() == {"actor": "anonymous", "admin": False}


def test_without_any_token_everyone_is_an_anonymous_admin(tmp_path: Path) -> None:
    # every scope, but the identifiers in payloads only when CXR_API_EXPOSE_IDENTIFIERS says so
    for expose in (False, True):
        client = _small_app(Settings(data_dir=tmp_path, api_expose_identifiers=expose))
        for path in ("/search", "/index/async", "/admin"):
            assert client.get(path).json() == {
                "actor": "anonymous",
                "scopes": sorted([SEARCH, INDEX, ADMIN]),
                "admin": expose,
            }


def test_a_tokens_file_alone_closes_the_api_even_when_empty(tmp_path: Path) -> None:
    client = _small_app(Settings(data_dir=tmp_path, api_tokens_file=tmp_path / "none-yet.jsonl"))
    assert client.get("/search").status_code == 401
    assert client.get("/search", headers={"Authorization": "Bearer anything"}).status_code == 401

"""POST /v1/index with server-side paths, over the real app, the real ledger and a real Redis queue: a missing
path is a 404 in the client's words, symlinks (real ones, on disk) are resolved for every file, named or walked,
and a file whose link leads out of CXR_API_IMPORT_DIR is refused by name while the rest is queued. No reply ever
holds a server path."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import QUERY_DICOM, Indexed, make_client


@pytest.fixture()
def imports(tmp_path: Path, dicom_dir: Path) -> Path:
    """imports/batch/ with a real file, links inside and out of the import folder, a broken link, and a linked
    folder that leads out; a secret folder beside imports/ that no request may reach."""
    dicom = (dicom_dir / QUERY_DICOM).read_bytes()
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "patient.dcm").write_bytes(dicom)
    (secret / "more.dcm").write_bytes(dicom + b"\0")
    root = tmp_path / "imports"
    (root / "batch").mkdir(parents=True)
    (root / "other").mkdir()
    (root / "batch" / "a.dcm").write_bytes(dicom)
    (root / "other" / "b.dcm").write_bytes(dicom + b"\0\0")
    os.symlink(root / "other" / "b.dcm", root / "batch" / "in.dcm")  # stays inside: accepted
    os.symlink(secret / "patient.dcm", root / "batch" / "out.dcm")  # leads out: refused
    os.symlink("../../secret/more.dcm", root / "batch" / "relative-out.dcm")  # a relative link out
    os.symlink(root / "nowhere.dcm", root / "batch" / "broken.dcm")
    os.symlink(secret, root / "batch" / "secret-folder")  # a linked folder: never walked
    os.symlink(secret / "patient.dcm", root / "escape.dcm")
    os.symlink(secret, root / "escape-folder")
    return root


@pytest.fixture()
def queued(indexed: Indexed, redis_server, tmp_path: Path, imports: Path) -> Iterator[TestClient]:
    from cli.serve_cmd import make_submitter

    settings = indexed.with_(redis_url=redis_server.url, data_dir=tmp_path / "data", api_import_dir=imports)
    with make_client(settings, indexed.model, submitter=make_submitter(settings)) as c:
        yield c


def _no_server_path(r, tmp_path: Path) -> None:
    assert str(tmp_path) not in r.text and str(tmp_path.resolve()) not in r.text, r.text


def test_a_missing_path_is_404_in_the_clients_words(queued: TestClient, tmp_path: Path) -> None:
    for raw in ("no-such.dcm", "batch/no-such.dcm", "no-such-folder/", str(tmp_path / "imports" / "gone.dcm")):
        r = queued.post("/v1/index", data={"path": raw})
        assert r.status_code == 404, (raw, r.status_code, r.text)
        assert repr(raw) in r.json()["detail"]
        if not raw.startswith("/"):
            _no_server_path(r, tmp_path)
    # one missing path fails the request: nothing of it is queued
    r = queued.post("/v1/index", data={"path": ["batch/a.dcm", "missing.dcm"]})
    assert r.status_code == 404 and "'missing.dcm'" in r.json()["detail"]


def test_named_links_out_of_the_import_folder_are_403(queued: TestClient, tmp_path: Path) -> None:
    for raw in ("escape.dcm", "escape-folder", "escape-folder/patient.dcm", "batch/out.dcm", "../secret/more.dcm"):
        r = queued.post("/v1/index", data={"path": raw})
        assert r.status_code == 403, (raw, r.status_code, r.text)
        _no_server_path(r, tmp_path)


def test_walked_links_out_are_refused_by_name_and_the_rest_is_queued(
    queued: TestClient, imports: Path, tmp_path: Path
) -> None:
    from services.pipeline.ledger import Ledger, file_key

    r = queued.post("/v1/index", data={"path": "batch"})
    assert r.status_code == 202, r.text
    out = r.json()
    _no_server_path(r, tmp_path)
    assert out["accepted"] == 2  # a.dcm and in.dcm (the link that stays inside)
    reasons = {x["file"]: x["reason"] for x in out["refused"]}
    assert set(reasons) == {"batch/out.dcm", "batch/relative-out.dcm", "batch/broken.dcm"}, reasons
    assert "out of the import folder" in reasons["batch/out.dcm"]
    assert "out of the import folder" in reasons["batch/relative-out.dcm"]
    assert "broken symlink" in reasons["batch/broken.dcm"]
    assert out["submitted"]["paths"]["recorded"] == 2

    settings = queued.app.state.api.settings
    ledger = Ledger(settings.ledger_path)
    salt = settings.salt
    assert ledger.get(file_key(imports / "batch" / "a.dcm", salt)).state == "queued"
    assert ledger.get(file_key(imports / "other" / "b.dcm", salt)).state == "queued"  # by its real path
    for secret in ("patient.dcm", "more.dcm"):
        assert ledger.get(file_key(tmp_path / "secret" / secret, salt)) is None  # never reached the workers
    assert "secret" not in json.dumps(out)


def test_only_links_out_is_422_with_the_reasons(queued: TestClient, imports: Path, tmp_path: Path) -> None:
    only_out = imports / "only-out"
    only_out.mkdir()
    os.symlink(tmp_path / "secret" / "patient.dcm", only_out / "x.dcm")
    r = queued.post("/v1/index", data={"path": "only-out"})
    assert r.status_code == 422
    assert r.json()["detail"]["refused"][0]["file"] == "only-out/x.dcm"
    _no_server_path(r, tmp_path)


def test_an_upload_that_finds_the_decode_budget_taken_is_refused_alone(
    indexed: Indexed, redis_server, tmp_path: Path, dicom_dir: Path
) -> None:
    """One upload too big for the room left waits, then is refused as busy; the small one beside it is queued.
    When every upload is busy, the request is a 503 with Retry-After."""
    from cli.serve_cmd import make_submitter
    from services.imaging.budget import DecodeCost, estimate_cost

    settings = indexed.with_(
        redis_url=redis_server.url, data_dir=tmp_path / "data", api_decode_memory_mb=512, api_decode_wait_s=0.2
    )
    big = (dicom_dir / QUERY_DICOM).read_bytes()
    small = (indexed.sample / indexed.rows[0]["path"]).read_bytes()
    with make_client(settings, indexed.model, submitter=make_submitter(settings)) as c:
        budget = c.app.state.api.decode_budget
        need_small, need_big = estimate_cost(small).bytes, estimate_cost(big).bytes
        room = (need_small + need_big) // 2  # enough for the small one, not for the big one
        with budget.reserve(DecodeCost(0, budget.capacity - room)):  # other decodes hold the rest
            files = [("file", ("a.dcm", big, "application/dicom")), ("file", ("b.jpg", small, "image/jpeg"))]
            r = c.post("/v1/index", files=files)
            assert r.status_code == 202, r.text
            assert r.json()["accepted"] == 1 and [x["code"] for x in r.json()["refused"]] == ["busy"]
            alone = c.post("/v1/index", files=[("file", ("a.dcm", big, "application/dicom"))])
            assert alone.status_code == 503 and alone.headers["Retry-After"] and alone.json()["reason"] == "busy"

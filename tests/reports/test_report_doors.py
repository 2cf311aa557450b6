"""The report's front doors on the embedded store: `cxr report` as a subprocess (no queue, Redis or PACS), and
`POST /v1/report` behind the search scope, by upload and by id, as a PDF or a zip of its two DICOM files."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.uid import EncapsulatedPDFStorage

from services.api.tokens import INDEX, SEARCH, add_token
from services.governance.audit import AuditLog
from tests.api.conftest import Indexed, make_client, serve_env
from tests.reports.conftest import QUERY_PATIENT_ID


def test_cxr_report_writes_the_pdf_and_the_dicom_files(indexed: Indexed, query_film: Path, tmp_path: Path) -> None:
    cxr = Path(sys.executable).with_name("cxr")
    env = serve_env(indexed, CXR_REDIS_URL="redis://127.0.0.1:9/0")  # nothing listens there: nothing may need it
    out, folder = tmp_path / "r.pdf", tmp_path / "dicom"
    res = subprocess.run(
        [str(cxr), "report", str(query_film), "--k", "3", "--out", str(out), "--dicom", str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr
    assert out.read_bytes().startswith(b"%PDF")
    files = sorted(folder.glob("*.dcm"))
    assert [f.name.split("-")[0] for f in files] == ["pdf", "sr"] and str(out) in res.stdout
    pdf_ds = pydicom.dcmread(files[0])
    assert pdf_ds.SOPClassUID == EncapsulatedPDFStorage and pdf_ds.PatientID == QUERY_PATIENT_ID
    assert bytes(pdf_ds.EncapsulatedDocument).startswith(out.read_bytes()[:1024])
    assert len([i for i in hd.sr.srread(files[1]).ContentSequence if i.name.value == "SIMCASE"]) == 3


def test_post_report_needs_the_search_scope(indexed: Indexed, query_film: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.jsonl"
    _, search = add_token(tokens, "reader", [SEARCH])
    _, index = add_token(tokens, "indexer", [INDEX])
    with make_client(indexed.with_(api_tokens_file=tokens), indexed.model) as client:
        client.app.state.api.wait_ready(60)
        film = query_film.read_bytes()

        def post(token: str | None, **params: object):  # noqa: ANN202 - an httpx response
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            files = {"file": ("q.dcm", film, "application/dicom")}
            return client.post("/v1/report", params={"k": 2, **params}, files=files, headers=headers)

        assert post(None).status_code == 401
        assert post(index).status_code == 403
        res = post(search)
        assert res.status_code == 200 and res.headers["content-type"] == "application/pdf"
        assert res.content.startswith(b"%PDF") and "no-store" in res.headers["cache-control"]
        res = post(search, format="dicom")
        assert res.status_code == 200 and res.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(res.content)) as zf:
            objects = [pydicom.dcmread(io.BytesIO(zf.read(name))) for name in sorted(zf.namelist())]
        assert [o.Modality for o in objects] == ["DOC", "SR"]
        assert {o.PatientID for o in objects} == {QUERY_PATIENT_ID}
        point = objects[1].ContentSequence  # the SR's first result id, asked for by id (a form field)
        first = next(i for i in point if i.ConceptNameCodeSequence[0].CodeValue == "SIMCASE")
        pid = next(c.TextValue for c in first.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "RESULTID")
        by_id = client.post(
            "/v1/report", data={"id": pid}, params={"k": 2}, headers={"Authorization": f"Bearer {search}"}
        )
        assert by_id.status_code == 200 and by_id.content.startswith(b"%PDF")
        neither = client.post("/v1/report", headers={"Authorization": f"Bearer {search}"})
        assert neither.status_code == 422
    records = [r for r in AuditLog(indexed.settings.audit_path).records() if r.action == "api.report"][-6:]
    assert [r.outcome for r in records] == ["401", "403", "ok", "ok", "ok", "422"]  # refusals recorded too
    by_upload = records[2]
    assert by_upload.objects["query_sha256"] == hashlib.sha256(film).hexdigest()
    assert len(by_upload.objects["results"]) == 2 and records[4].objects["query_id"] == pid


def test_the_api_loads_the_report_libraries_on_the_first_report_only() -> None:
    """A server that never makes a report does not hold matplotlib and highdicom (serve memory, issue 18); the
    route's page limit is the page's own."""
    code = (
        "import sys; from services.api.app import create_app; import services.api.report_routes as r;"
        "print(sorted(m for m in ('matplotlib', 'highdicom') if m in sys.modules)); print(r.MAX_RESULTS)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    from services.reports.pdf import MAX_RESULTS

    assert out[0] == "[]" and int(out[1]) == MAX_RESULTS

"""The REST API on a real embedded store of real X-rays: search, filters, grouping, regions, more-like-these,
points, thumbnails (correct DICOM display, ETag/304), collections, readiness and the indexing queue."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from tests.api.conftest import COLLECTION, QUERY_DICOM, Indexed, make_client


def _upload(path: Path) -> dict:
    return {"file": ("query", path.read_bytes(), "application/octet-stream")}


def _patients(client, hits: list[dict]) -> list[str | None]:  # noqa: ANN001 - a TestClient
    """The stored patient hash of each hit, read from the store: an open API no longer sends it."""
    state = client.app.state.api
    stored = {r.id: r.payload for r in state.store().retrieve(state.settings.collection, [h["id"] for h in hits])}
    return [stored[h["id"]].get("patient_hash") for h in hits]


def _row(indexed: Indexed, label: str) -> Path:
    return indexed.sample / next(r["path"] for r in indexed.rows if r["label"] == label)


def test_search_returns_k_hits_with_thumbnails_and_a_tally(client, indexed: Indexed) -> None:
    query = _row(indexed, "covid19")
    r = client.post("/v1/search", params={"k": 7}, files=_upload(query))
    assert r.status_code == 200, r.text
    body = r.json()
    hits = body["hits"]
    assert len(hits) == 7 and [h["rank"] for h in hits] == list(range(1, 8))
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    assert body["label_tally"] == dict(Counter(h["payload"]["label"] for h in hits).most_common())
    assert sum(body["label_tally"].values()) == 7
    assert all("source_uri" not in h["payload"] and "label" in h["payload"] for h in hits)
    assert body["query"]["id"] not in {h["id"] for h in hits}  # the query itself is indexed, and left out
    thumb = client.get(hits[0]["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"

    with_self = client.post("/v1/search", params={"k": 3, "include_self": True}, files=_upload(query)).json()
    assert with_self["hits"][0]["id"] == body["query"]["id"]
    assert with_self["hits"][0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_filters_use_the_cli_syntax(client, indexed: Indexed) -> None:
    query = _row(indexed, "normal")
    r = client.post("/v1/search", params={"k": 20, "filter": "label=covid19,pneumonia_viral"}, files=_upload(query))
    labels = {h["payload"]["label"] for h in r.json()["hits"]}
    assert r.status_code == 200 and labels == {"covid19", "pneumonia_viral"}
    r = client.post(
        "/v1/search", params=[("k", "20"), ("filter", "label!=normal"), ("filter", "sex=F")], files=_upload(query)
    )
    hits = r.json()["hits"]
    assert hits and all(h["payload"]["label"] != "normal" and h["payload"]["sex"] == "F" for h in hits)
    ages = [int(r["age"]) for r in indexed.rows if r["age"]]
    lo, hi = min(ages), min(ages) + 20
    r = client.post(
        "/v1/search", params={"k": 30, "filter": "age=" + ",".join(map(str, range(lo, hi + 1)))}, files=_upload(query)
    )
    assert r.json()["hits"] and all(lo <= h["payload"]["age"] <= hi for h in r.json()["hits"])
    for bad in ("colour=red", "label", "age=old", "label=,"):
        r = client.post("/v1/search", params={"filter": bad}, files=_upload(query))
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["detail"]


def test_group_by_patient_gives_full_pages_of_distinct_patients(client, indexed: Indexed) -> None:
    query = indexed.dicom[0].parent / "q.dcm"
    query.write_bytes(indexed.dicom[0].read_bytes())
    plain = client.post("/v1/search", params={"k": 26, "include_self": True}, files=_upload(query)).json()["hits"]
    patients = _patients(client, plain)
    assert len(patients) - len(set(patients)) >= 1  # the two CRs share a patient
    grouped = client.post(
        "/v1/search", params={"k": 10, "group_by_patient": True, "include_self": True}, files=_upload(query)
    ).json()
    hashes = _patients(client, grouped["hits"])
    assert None not in hashes and grouped["grouped_by_patient"] and len(hashes) == 10 == len(set(hashes))
    assert grouped["hits"][0]["id"] == plain[0]["id"]


def test_exclude_same_patient_with_a_dicom_query(client, indexed: Indexed, dicom_dir: Path) -> None:
    query = dicom_dir / QUERY_DICOM  # same patient as the two indexed CRs, another SOP Instance UID
    near = client.post("/v1/search", params={"k": 30}, files=_upload(query)).json()
    assert {h["payload"]["label"] for h in near["hits"]} >= {"dicom-cr"}
    far = client.post("/v1/search", params={"k": 30, "exclude_same_patient": True}, files=_upload(query)).json()
    assert far["query"]["patient_excluded"] is True
    assert "dicom-cr" not in {h["payload"]["label"] for h in far["hits"]} and len(far["hits"]) == 24


def test_crop_embeds_only_the_region(client, indexed: Indexed) -> None:
    query = _row(indexed, "pneumonia_bacterial")
    width, height = Image.open(query).size
    whole = client.post("/v1/search", params={"k": 26}, files=_upload(query)).json()
    region = client.post("/v1/search", params={"k": 26, "crop": "0.5,0,1,0.5"}, files=_upload(query)).json()
    assert region["query"]["crop"] == [round(width / 2), 0, width, round(height / 2)]
    assert whole["query"]["crop"] is None
    by_id = {h["id"]: h["score"] for h in whole["hits"]}
    assert any(abs(by_id[h["id"]] - h["score"]) > 1e-3 for h in region["hits"])  # another vector was searched
    pixels = client.post("/v1/search", params={"k": 3, "crop": f"0,0,{width // 2},{height}"}, files=_upload(query))
    assert pixels.status_code == 200 and pixels.json()["query"]["crop"] == [0, 0, width // 2, height]
    for bad in ("1,2,3", "0.5,0.5,0.2,0.9", "a,b,c,d", "0,0,0.01,0.01", "5000,5000,6000,6000", "nan,0,1,1"):
        r = client.post("/v1/search", params={"crop": bad}, files=_upload(query))
        assert r.status_code == 422, (bad, r.text)


def test_similar_from_one_id_equals_searching_with_its_image(client, indexed: Indexed) -> None:
    query = _row(indexed, "covid19")
    by_upload = client.post("/v1/search", params={"k": 6}, files=_upload(query)).json()
    qid = by_upload["query"]["id"]
    by_id = client.post("/v1/search/similar", json={"positive": [qid], "k": 6}).json()
    assert by_id["score"] == "cosine"
    assert [h["id"] for h in by_id["hits"]] == [h["id"] for h in by_upload["hits"]]
    assert np.allclose([h["score"] for h in by_id["hits"]], [h["score"] for h in by_upload["hits"]], atol=1e-3)


def test_more_like_these_with_positives_and_negatives(client, indexed: Indexed) -> None:
    query = _row(indexed, "normal")
    hits = client.post("/v1/search", params={"k": 10}, files=_upload(query)).json()["hits"]
    positive, negative = [hits[0]["id"], hits[2]["id"]], [hits[1]["id"]]
    body = {"positive": positive, "negative": negative, "k": 8, "filters": ["label!=dicom-cr"]}
    r = client.post("/v1/search/similar", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["score"] == "recommend" and len(out["hits"]) == 8
    assert not {h["id"] for h in out["hits"]} & set(positive + negative)
    assert all(h["payload"]["label"] != "dicom-cr" for h in out["hits"])
    assert out["query"]["positive"] == positive and out["query"]["negative"] == negative
    grouped = client.post("/v1/search/similar", json={**body, "group_by_patient": True}).json()
    hashes = _patients(client, grouped["hits"])
    assert None not in hashes and len(hashes) == len(set(hashes)) == 8

    unknown = "00000000-0000-4000-8000-000000000000"
    r = client.post("/v1/search/similar", json={"positive": [unknown]})
    assert r.status_code == 404 and unknown in r.json()["detail"]
    for bad in ({"positive": []}, {"positive": ["../../etc/passwd"]}, {"positive": positive, "k": 0}):
        assert client.post("/v1/search/similar", json=bad).status_code == 422
    assert client.post("/v1/search/similar", json={"positive": positive, "negative": positive[:1]}).status_code == 422


def test_point_and_thumbnail_with_etag(client, indexed: Indexed) -> None:
    hit = client.post("/v1/search", params={"k": 1}, files=_upload(_row(indexed, "covid19"))).json()["hits"][0]
    point = client.get(f"/v1/points/{hit['id']}").json()
    assert point["id"] == hit["id"] and point["payload"] == hit["payload"]
    assert "source_uri" not in point["payload"] and "source_ref" not in point["payload"]  # an open API hides it
    stored = client.app.state.api.point(hit["id"]).payload
    assert stored["source_ref"].startswith("file:")
    r = client.get(point["thumbnail_url"], params={"size": 64})
    assert r.status_code == 200 and r.headers["cache-control"].startswith("private")
    assert max(Image.open(io.BytesIO(r.content)).size) == 64
    tag = r.headers["etag"]
    again = client.get(point["thumbnail_url"], params={"size": 64}, headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.headers["etag"] == tag and not again.content
    assert again.headers["cache-control"].startswith("private")
    other_size = client.get(point["thumbnail_url"], params={"size": 128}, headers={"If-None-Match": tag})
    assert other_size.status_code == 200 and other_size.headers["etag"] != tag
    assert client.get(point["thumbnail_url"], params={"size": 5000}).status_code == 422
    missing = "00000000-0000-4000-8000-000000000000"
    assert client.get(f"/v1/points/{missing}").status_code == 404
    assert client.get(f"/v1/points/{missing}/thumbnail").status_code == 404


def _independent_display(path: Path) -> np.ndarray:
    """The DICOM display chain written out with pydicom alone: modality LUT, VOI window, MONOCHROME1 inversion."""
    ds = pydicom.dcmread(path)
    values = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
    values = (values - values.min()) / (values.max() - values.min())
    return 1.0 - values if ds.PhotometricInterpretation == "MONOCHROME1" else values


def test_dicom_thumbnail_is_rescaled_windowed_and_inverted(client, indexed: Indexed) -> None:
    hits = client.post("/v1/search", params={"k": 30, "filter": "label=dicom-cr"}, files=_upload(indexed.dicom[0]))
    hits = hits.json()["hits"]
    assert len(hits) == 1  # the other CR (the query itself is excluded)
    r = client.get(hits[0]["thumbnail_url"], params={"size": 256})
    shown = np.asarray(Image.open(io.BytesIO(r.content)), dtype=np.float64) / 255
    want = _independent_display(indexed.dicom[1])
    want = np.asarray(Image.fromarray((want * 255).astype(np.uint8)).resize(shown.shape[::-1]), dtype=np.float64) / 255
    assert shown.shape == (256, round(256 * 1841 / 1955))  # rows x columns, aspect kept
    assert np.corrcoef(shown.ravel(), want.ravel())[0, 1] > 0.98
    assert shown.mean() == pytest.approx(want.mean(), abs=0.05)  # inverted: a stored-value ramp would read 1 - mean


def test_render_previews_an_upload(client, dicom_dir: Path) -> None:
    r = client.post("/v1/render", params={"size": 300}, files=_upload(dicom_dir / QUERY_DICOM))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert (r.headers["x-image-width"], r.headers["x-image-height"]) == ("1841", "1955")
    assert max(Image.open(io.BytesIO(r.content)).size) == 300


def test_collections(client) -> None:
    body = client.get("/v1/collections").json()
    assert body["default"] == COLLECTION
    assert {c["name"]: (c["dim"], c["count"]) for c in body["collections"]}[COLLECTION] == (64, 26)


def test_livez_and_readyz_report_a_missing_model(indexed: Indexed, tmp_path: Path) -> None:
    with make_client(indexed.settings, tmp_path / "no-model") as c:
        c.app.state.api.wait_ready(30)
        assert c.get("/livez").json() == {"status": "ok"}
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["model"] is False and r.json()["store"] is True
        assert "no checkpoint" in r.json()["errors"]["model"]["message"]
        search = c.post("/v1/search", files=_upload(indexed.dicom[0]))
        assert search.status_code == 503 and "model" in search.json()["detail"]
        assert c.get("/v1/collections").status_code == 200  # the store part works without a model
    with make_client(indexed.settings, indexed.model) as c:
        assert c.app.state.api.wait_ready(60).ready
        assert c.get("/readyz").json()["status"] == "ready"


def test_index_without_a_queue_is_503(client, indexed: Indexed) -> None:
    r = client.post("/v1/index", files=_upload(indexed.dicom[0]))
    assert r.status_code == 503 and "queue" in r.json()["detail"]


def test_index_queues_uploads_and_import_paths(indexed: Indexed, redis_server, tmp_path: Path, dicom_dir) -> None:
    from cli.serve_cmd import make_submitter
    from services.pipeline.ledger import Ledger, file_key

    imports = tmp_path / "imports"
    imports.mkdir()
    (imports / "a.dcm").write_bytes((dicom_dir / QUERY_DICOM).read_bytes())
    settings = indexed.with_(redis_url=redis_server.url, data_dir=tmp_path / "data", api_import_dir=imports)
    with make_client(settings, indexed.model, submitter=make_submitter(settings)) as c:
        files = [
            ("file", ("x", _row(indexed, "normal").read_bytes(), "image/jpeg")),
            ("file", ("y", b"just some text, not an image", "image/png")),
        ]
        r = c.post("/v1/index", files=files, data={"label": "normal", "path": "a.dcm"})
        assert r.status_code == 202, r.text
        out = r.json()
        assert out["accepted"] == 2 and [x["file"] for x in out["refused"]] == ["#2"]
        assert "text" in out["refused"][0]["reason"]
        assert out["submitted"]["uploads"]["recorded"] == 1 and out["submitted"]["paths"]["recorded"] == 1
        kept = list((settings.data_dir / "uploads").glob("*.jpg"))
        assert len(kept) == 1 and kept[0].read_bytes() == _row(indexed, "normal").read_bytes()
        ledger = Ledger(settings.ledger_path)
        upload = ledger.get(file_key(kept[0], settings.salt))
        imported = ledger.get(file_key(imports / "a.dcm", settings.salt))
        assert upload.extra["label"] == "normal" and upload.origin == "upload" and upload.collection == COLLECTION
        assert imported.origin == "file" and imported.state == "queued"  # sent to the embed queue in Redis

        for outside in ("../escape.dcm", "/etc/passwd", str(imports / ".." / "x.dcm")):
            r = c.post("/v1/index", data={"path": outside})
            assert r.status_code == 403, (outside, r.text)
        r = c.post("/v1/index", files=[("file", ("z", b"%PDF-1.4 nothing", "image/png"))])
        assert r.status_code == 422 and "PDF" in str(r.json()["detail"])


def test_thumbnail_of_an_image_gone_from_disk_is_409(indexed: Indexed, tmp_path: Path) -> None:
    from services.config import Settings
    from services.pipeline import IngestItem, IngestOptions, Ingestor, Runtime
    from services.pipeline.ledger import Ledger

    settings = Settings(data_dir=tmp_path / "data", collection=COLLECTION, patient_salt="gone", store_linger_s=0.2)
    copy = tmp_path / "film.jpg"
    copy.write_bytes(_row(indexed, "normal").read_bytes())
    with Runtime(settings, model_path=indexed.model) as rt:
        opts = IngestOptions(collection=COLLECTION, batch_size=1, decode_workers=0)
        refs = Ledger(settings.ledger_path).put_refs
        assert Ingestor(rt.encoder, rt.store, opts, salt=settings.salt, refs=refs).run([IngestItem(copy)]).indexed == 1
        (point,) = list(rt.store.scroll(COLLECTION))
    copy.unlink()
    with make_client(settings, indexed.model) as c:
        c.app.state.api.wait_ready(60)
        r = c.get(f"/v1/points/{point.id}/thumbnail")
        assert r.status_code == 409 and "no longer kept on this server" in r.json()["detail"]
        assert "ledger" in c.app.state.api.runtime.__dict__  # resolved through the runtime's one open ledger
    for part in settings.data_dir.glob("ledger.sqlite3*"):
        part.unlink()  # as on another host of a shared server: no ledger row
    with make_client(settings, indexed.model) as c:
        c.app.state.api.wait_ready(60)
        r = c.get(f"/v1/points/{point.id}/thumbnail", params={"size": 100})
        assert r.status_code == 409 and "not in this server's ledger" in r.json()["detail"]


def test_explain_waits_for_the_model_like_search(indexed: Indexed, tmp_path: Path) -> None:
    """During warm-up /v1/explain answers 503 with the reason and starts no model load of its own."""
    from fastapi.testclient import TestClient

    from services.api.app import create_app
    from services.pipeline import Runtime

    some = "00000000-0000-4000-8000-000000000000"
    runtime = Runtime(indexed.settings, model_path=indexed.model)
    warming = TestClient(create_app(indexed.settings, runtime=runtime))  # not started: the warm-up has not ended
    for r in (
        warming.get("/v1/explain", params={"query": some, "result": some}),
        warming.post("/v1/explain", params={"result": some}, files=_upload(indexed.dicom[0])),
    ):
        assert r.status_code == 503 and r.headers["Retry-After"] == "5", r.text
        assert r.json()["detail"] == "the model is still loading"
    assert "encoder" not in runtime.__dict__  # no second model load beside the warm-up's
    with make_client(indexed.settings, tmp_path / "no-model") as c:
        c.app.state.api.wait_ready(30)
        r = c.get("/v1/explain", params={"query": some, "result": some})
        assert r.status_code == 503 and "model is not ready: no checkpoint" in r.json()["detail"]

"""What a search answer tells a reader beside the hits, on real searches of real stores: the model, the query's
content hash and whether it is indexed, similarity bands from the collection's own nearest-neighbour scores,
same-patient flags, warnings, the tally's title; the facets; case-insensitive filters and unknown values."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.config import Settings
from services.index import SearchFilter
from services.manifest import read_manifest
from services.pipeline import IngestItem, IngestOptions, Ingestor, Runtime
from services.pipeline.similarity_band import BAND_NAMES, MIN_POINTS, calibrate
from tests.api.conftest import QUERY_DICOM, Indexed, make_client

WIDE = "wide"
PER_LABEL = 13  # 4 labels: 52 films and 2 CRs, over the calibration's minimum of 50


@dataclass(frozen=True)
class Wide:
    settings: Settings
    model: Path
    rows: list  # the ManifestRows indexed


@pytest.fixture(scope="module")
def wide(cxr_public: Path, dicom_dir: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Wide:
    """52 real cxr-public films (13 per main label, several sources and patients) and the RG1 chest CRs of one
    patient, indexed with the tiny checkpoint into a store of its own: enough points to calibrate bands."""
    picked: dict[str, list] = {}
    for row in read_manifest(cxr_public / "manifest.csv"):
        bucket = picked.setdefault(row.label, [])
        if not row.label.startswith("other") and len(bucket) < PER_LABEL:
            bucket.append(row)
    rows = [r for bucket in picked.values() for r in bucket]
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("wide-data"),
        collection=WIDE,
        patient_salt="api-tests",
        store_linger_s=0.2,
        qdrant_url=None,
    )
    items = [IngestItem(r.path, r.label, r) for r in rows]
    items += [IngestItem(dicom_dir / name, label="dicom-cr") for name in ("RG1_UNCI.dcm", "RG1_J2KR.dcm")]
    with Runtime(settings, model_path=tiny_checkpoint) as rt:
        report = Ingestor(
            rt.encoder, rt.store, IngestOptions(collection=WIDE, batch_size=16, decode_workers=1), salt=settings.salt
        ).run(items)
    assert report.indexed == len(items) and not report.failed
    return Wide(settings, tiny_checkpoint, rows)


@pytest.fixture(scope="module")
def wide_client(wide: Wide) -> Iterator[TestClient]:
    with make_client(wide.settings, wide.model) as c:
        c.app.state.api.wait_ready(60)
        yield c


def _upload(data: bytes) -> dict:
    return {"file": ("query", data, "application/octet-stream")}


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_search_says_model_query_hash_bands_and_tally_title(wide_client: TestClient, wide: Wide) -> None:
    data = wide.rows[0].path.read_bytes()
    r = wide_client.post("/v1/search", params={"k": 12}, files=_upload(data))
    assert r.status_code == 200, r.text
    body = r.json()
    import hashlib

    assert body["query"]["content_sha256"] == hashlib.sha256(data).hexdigest()
    assert body["query"]["indexed"] is True  # the query film is in the collection (and left out of the hits)
    stored = wide_client.app.state.api.store().retrieve(WIDE, [body["query"]["id"]])[0]
    assert body["model"] and body["model"] == stored.payload["model_id"]
    assert body["tally_title"] == "labels of the 12 most similar films"
    cal = body["calibration"]
    assert cal is not None and cal["n"] >= MIN_POINTS and cal["p05"] <= cal["p50"] <= cal["p95"]
    hits = body["hits"]
    assert all(h["band"] in BAND_NAMES and 0 <= h["percentile"] <= 100 for h in hits)
    # monotone: a lower score never gets a higher percentile or a nearer band
    order = {name: i for i, name in enumerate(BAND_NAMES)}
    for a, b in zip(hits, hits[1:], strict=False):
        assert a["score"] >= b["score"]
        assert a["percentile"] >= b["percentile"] and order[a["band"]] <= order[b["band"]]
    # the bands follow the published cut-offs
    for h in hits:
        want = (
            "very close"
            if h["score"] >= cal["p95"]
            else "close"
            if h["score"] >= cal["p50"]
            else "typical"
            if h["score"] >= cal["p05"]
            else "distant"
        )
        assert h["band"] == want, (h["score"], cal)
    # an upload of an unindexed file is not indexed
    other = _png((np.random.default_rng(1).random((96, 96)) * 255).astype(np.uint8))
    assert wide_client.post("/v1/search", files=_upload(other)).json()["query"]["indexed"] is False


def test_calibration_is_cached_per_collection_state(wide_client: TestClient, wide: Wide) -> None:
    store = wide_client.app.state.api.store()
    first = calibrate(store, WIDE, model_id="m")
    assert first is not None and first is calibrate(store, WIDE, model_id="m")  # same state: the cached one
    assert list(first.sample) == sorted(first.sample) and first.n == len(first.sample)
    # the same seed gives the same sample on a fresh computation
    from services.pipeline import similarity_band

    similarity_band.clear_cache()
    again = calibrate(store, WIDE, model_id="m")
    assert again is not first and again.sample == first.sample
    # the collection is under 300 points, so every point was searched: the sample is each point's top-1 score
    # against the others of other patients, searched here one by one
    from services.index.store import excluding

    naive = []
    for rec in store.scroll(WIDE, with_vectors=True):
        patient = rec.payload.get("patient_hash")
        flt = excluding(None, [rec.id], {"patient_hash": [patient]} if patient else None)
        naive.append(store.search(WIDE, rec.vector, 1, flt)[0].score)
    assert np.allclose(sorted(naive), first.sample, atol=1e-6) and first.n == store.count(WIDE)
    assert first.band(first.p95 + 1e-9)[1] == "very close" and first.band(first.p05 - 1e-3)[1] == "distant"


def test_a_query_unlike_the_archive_is_flagged_far(wide_client: TestClient) -> None:
    yy, xx = np.mgrid[0:256, 0:256]
    checker = (((yy // 16 + xx // 16) % 2) * 255).astype(np.uint8)  # a checkerboard: nothing like a chest film
    body = wide_client.post("/v1/search", params={"k": 5}, files=_upload(_png(checker))).json()
    codes = [w["code"] for w in body["warnings"]]
    assert body["hits"][0]["score"] < body["calibration"]["p05"], body
    assert "far_neighbours" in codes and all(h["band"] == "distant" for h in body["hits"])
    # a film of the archive is not
    assert body["query"]["content_sha256"]


def test_same_patient_flag_for_a_dicom_query(wide_client: TestClient, dicom_dir: Path) -> None:
    data = (dicom_dir / QUERY_DICOM).read_bytes()  # RG1_UNCR: same patient as the two indexed RG1 films
    r = wide_client.post("/v1/search", params={"k": 60}, files=_upload(data))
    hits = r.json()["hits"]
    flagged = {h["payload"]["label"] for h in hits if h["same_patient"]}
    assert flagged == {"dicom-cr"} and sum(h["same_patient"] for h in hits) == 2
    excluded = wide_client.post("/v1/search", params={"k": 60, "exclude_same_patient": True}, files=_upload(data))
    assert not any(h["same_patient"] for h in excluded.json()["hits"])
    assert all(h["payload"].get("label") != "dicom-cr" for h in excluded.json()["hits"])


def test_similar_carries_bands_and_same_patient(wide_client: TestClient) -> None:
    store = wide_client.app.state.api.store()
    dicom = [r.id for r in store.scroll(WIDE, flt=SearchFilter(must={"label": ["dicom-cr"]}))]
    body = wide_client.post("/v1/search/similar", json={"positive": [dicom[0]], "k": 60}).json()
    assert body["query"]["indexed"] is True and body["query"]["content_sha256"] is None
    assert body["calibration"] is not None and all(h["band"] in BAND_NAMES for h in body["hits"])
    assert [h["id"] for h in body["hits"] if h["same_patient"]] == [dicom[1]]
    recommend = wide_client.post("/v1/search/similar", json={"positive": dicom, "k": 5}).json()
    assert recommend["score"] == "recommend" and all(h["band"] is None for h in recommend["hits"])


def test_one_source_and_age_group_warnings(wide_client: TestClient, wide: Wide) -> None:
    source = Counter(r.source for r in wide.rows).most_common(1)[0][0]
    query = next(r for r in wide.rows if r.source != source)
    body = wide_client.post(
        "/v1/search", params={"k": 3, "filter": f"source={source}"}, files=_upload(query.path.read_bytes())
    ).json()
    assert {h["payload"]["source"] for h in body["hits"]} == {source}
    assert "one_source" in [w["code"] for w in body["warnings"]]


def test_age_filter_says_how_many_films_it_dropped(wide_client: TestClient, wide: Wide) -> None:
    no_age = sum(1 for r in wide.rows if r.age is None) + 2  # the two RG1 CRs carry no age either
    ages = sorted(r.age for r in wide.rows if r.age is not None)
    assert no_age > 2 and ages, "the sample needs films with and without an age"
    body = wide_client.post(
        "/v1/search", params={"k": 5, "filter": f"age={ages[0]}"}, files=_upload(wide.rows[0].path.read_bytes())
    ).json()
    dropped = [w for w in body["warnings"] if w["code"] == "no_age_dropped"]
    assert len(dropped) == 1 and f" {no_age} films" in dropped[0]["message"]


def test_small_collection_has_no_calibration(client: TestClient, indexed: Indexed) -> None:
    query = indexed.sample / indexed.rows[0]["path"]
    body = client.post("/v1/search", files=_upload(query.read_bytes())).json()
    assert body["calibration"] is None and all(h["band"] is None and h["percentile"] is None for h in body["hits"])
    assert body["tally_title"] == "labels of the 10 most similar films" and body["model"]


def test_facets_count_what_the_store_holds(wide_client: TestClient, wide: Wide) -> None:
    r = wide_client.get("/v1/facets", params={"collection": WIDE})
    assert r.status_code == 200, r.text
    body = r.json()
    store = wide_client.app.state.api.store()
    assert body["collection"] == WIDE and body["total"] == store.count(WIDE) == len(wide.rows) + 2
    for field in ("label", "source", "view", "sex"):
        pairs = [(v["value"], v["count"]) for v in body["fields"][field]]
        assert [c for _, c in pairs] == sorted((c for _, c in pairs), reverse=True)
        for value, count in pairs:  # each count agrees with a filtered count by the store
            assert sum(1 for _ in store.scroll(WIDE, flt=SearchFilter(must={field: [value]}))) == count
    assert {v["value"] for v in body["fields"]["label"]} == {r.label for r in wide.rows} | {"dicom-cr"}
    with_age = sum(1 for _ in store.scroll(WIDE, flt=SearchFilter(must={"age": list(range(0, 91))})))
    assert body["no_age"] == body["total"] - with_age > 0
    assert wide_client.get("/v1/facets").json() == body  # the server's collection by default
    assert wide_client.get("/v1/facets", params={"collection": "nope"}).status_code == 404
    assert wide_client.get("/v1/facets", params={"collection": "../x"}).status_code == 422


def test_filters_match_case_insensitively(wide_client: TestClient, wide: Wide) -> None:
    data = wide.rows[0].path.read_bytes()

    def ids(flt: str) -> list[str]:
        r = wide_client.post("/v1/search", params={"k": 8, "filter": flt}, files=_upload(data))
        assert r.status_code == 200, r.text
        return [h["id"] for h in r.json()["hits"]]

    exact = ids("label=covid19")
    assert exact and ids("label=Covid19") == exact == ids("label=COVID19")
    assert ids("label!=NORMAL") == ids("label!=normal")
    positive = wide_client.app.state.api.store().retrieve(WIDE, [exact[0]])[0].id
    similar = [
        [
            h["id"]
            for h in wide_client.post("/v1/search/similar", json={"positive": [positive], "filters": [f]}).json()[
                "hits"
            ]
        ]
        for f in ("label=covid19", "label=Covid19")
    ]
    assert similar[0] == similar[1] and similar[0]


def test_unknown_filter_value_is_a_422_listing_the_values(wide_client: TestClient, wide: Wide) -> None:
    data = wide.rows[0].path.read_bytes()
    r = wide_client.post("/v1/search", params={"filter": "label=pneumonia"}, files=_upload(data))
    assert r.status_code == 422, r.text
    body = r.json()
    labels = Counter(row.label for row in wide.rows)
    assert body["reason"] == "unknown_value"
    assert body["detail"].startswith("no film has label 'pneumonia'; labels here: ")
    for label, count in labels.items():
        assert f"{label} ({count})" in body["detail"]
    positive = wide_client.post("/v1/search", files=_upload(data)).json()["hits"][0]["id"]
    r = wide_client.post("/v1/search/similar", json={"positive": [positive], "filters": ["sex=X"]})
    assert r.status_code == 422 and r.json()["reason"] == "unknown_value"


def _decode_codes(r) -> tuple[np.ndarray, float, float]:  # noqa: ANN001 - an httpx Response
    height, width = int(r.headers["x-height"]), int(r.headers["x-width"])
    codes = np.frombuffer(r.content, dtype="<u2")
    assert codes.size == height * width, (codes.size, height, width)
    return codes.reshape(height, width), float(r.headers["x-value-min"]), float(r.headers["x-value-max"])


def test_pixels_of_an_indexed_dicom_are_its_modality_values(client: TestClient, indexed: Indexed) -> None:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    from services.index import point_id

    path = next(p for p in indexed.dicom if p.name == "RG1_UNCI.dcm")
    ds = pydicom.dcmread(path)
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    pid = point_id(sop_uid=ds.SOPInstanceUID, content_sha256="0" * 64)
    r = client.get(f"/v1/points/{pid}/pixels", params={"max_side": 512})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    codes, low, high = _decode_codes(r)
    assert max(codes.shape) == 512 and codes.shape[0] > codes.shape[1]  # 1955 x 1841: taller than wide, kept
    assert (low, high) == (values.min(), values.max())
    assert (float(r.headers["x-window-center"]), float(r.headers["x-window-width"])) == (
        float(ds.WindowCenter),
        float(ds.WindowWidth),
    )
    assert r.headers["x-photometric"] == ds.PhotometricInterpretation == "MONOCHROME1"
    assert r.headers["x-bits-stored"] == str(ds.BitsStored)
    # the codes, mapped back, are the original values box-averaged (not windowed, not inverted)
    back = low + codes.astype(np.float64) / 65535 * (high - low)
    step = ds.Rows / codes.shape[0]
    centre = values[int(ds.Rows * 0.4) : int(ds.Rows * 0.6), int(ds.Columns * 0.4) : int(ds.Columns * 0.6)].mean()
    mid = back[
        int(codes.shape[0] * 0.4) : int(codes.shape[0] * 0.6), int(codes.shape[1] * 0.4) : int(codes.shape[1] * 0.6)
    ]
    assert abs(mid.mean() - centre) < 0.01 * (high - low), (mid.mean(), centre, step)
    rows = ((np.arange(codes.shape[0]) + 0.5) * step).astype(int)
    cols = ((np.arange(codes.shape[1]) + 0.5) * ds.Columns / codes.shape[1]).astype(int)
    assert np.corrcoef(back.ravel(), values[np.ix_(rows, cols)].ravel())[0, 1] > 0.98
    # the default is 1024; an upload of the same file gives the same array
    upload = client.post("/v1/pixels", params={"max_side": 512}, files={"file": ("q", path.read_bytes())})
    assert upload.status_code == 200 and upload.content == r.content and upload.headers["x-value-min"] == str(int(low))
    assert max(_decode_codes(client.get(f"/v1/points/{pid}/pixels"))[0].shape) == 1024
    assert client.get(f"/v1/points/{pid}/pixels", params={"max_side": 4096}).status_code == 422


def test_pixels_of_an_8_bit_upload(client: TestClient, indexed: Indexed) -> None:
    path = indexed.sample / indexed.rows[0]["path"]
    grey = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    r = client.post("/v1/pixels", files={"file": ("q", path.read_bytes())})
    assert r.status_code == 200, r.text
    codes, low, high = _decode_codes(r)
    assert (low, high) == (0.0, 255.0) and r.headers["x-bits-stored"] == "8"
    assert r.headers["x-photometric"] == "MONOCHROME2"
    if max(grey.shape) <= 1024:
        assert np.array_equal(codes, np.rint(grey / 255 * 65535).astype(np.uint16))
    assert 0 <= float(r.headers["x-window-center"]) <= 255


def test_pixels_hold_to_the_decode_budget(indexed: Indexed, dicom_dir: Path) -> None:
    with make_client(indexed.with_(api_decode_memory_mb=16), indexed.model) as c:
        c.app.state.api.wait_ready(60)
        r = c.post("/v1/pixels", files={"file": ("q", (dicom_dir / "RG1_UNCI.dcm").read_bytes())})
    assert r.status_code == 413 and r.json()["reason"] == "too_large"


def test_index_refuses_a_bad_label_before_anything_else(client: TestClient, indexed: Indexed) -> None:
    files = {"file": ("x", indexed.dicom[0].read_bytes())}
    r = client.post("/v1/index", files=files, data={"label": "<img src=x onerror=alert(1)>"})
    assert r.status_code == 422 and "'<'" in r.json()["detail"] and r.json()["hint"]
    r = client.post("/v1/index", files=files, data={"label": "x" * 65})
    assert r.status_code == 422 and "at most 64" in r.json()["detail"]
    r = client.post("/v1/index", files=files, data={"label": "Pneumonia viral"})
    assert r.status_code == 503 and "queue" in r.json()["detail"]  # a good label goes on (to the missing queue)


def test_age_group_warning_when_every_neighbour_is_of_the_other_age_group(
    wide_client: TestClient, dicom_dir: Path, tmp_path: Path
) -> None:
    import pydicom

    adults = "age=" + ",".join(str(a) for a in range(18, 91))

    def warnings_for_age(age: str) -> list[str]:
        ds = pydicom.dcmread(dicom_dir / QUERY_DICOM)
        ds.PatientAge = age
        path = tmp_path / f"q{age}.dcm"
        ds.save_as(path)
        r = wide_client.post("/v1/search", params={"k": 5, "filter": adults}, files=_upload(path.read_bytes()))
        assert r.status_code == 200, r.text
        assert r.json()["hits"] and all(h["payload"]["age"] >= 18 for h in r.json()["hits"])
        return [w["code"] for w in r.json()["warnings"]]

    assert "age_group" in warnings_for_age("008Y")  # a child's film, adult neighbours only
    assert "age_group" not in warnings_for_age("045Y")

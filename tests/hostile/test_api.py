"""The REST API over the whole hostile corpus: every case uploaded to `POST /v1/search` and `POST /v1/render` one by
one, and all of them in one `POST /v1/index` request (the real app, the real queue on Redis). Each answer is 200 for
a good film, else the status and the stable `reason` code of the refusal (415 for bytes that are not DICOM, PNG or
JPEG); never a 500, never Python's own words or the client's file name in a body. The good uploads of the index
request are queued; the app's memory stays within its decode budget."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import pytest
import redis
from httpx import Response
from PIL import Image

from cli.serve_cmd import make_submitter
from services.config import Settings
from services.pipeline.ledger import Ledger
from tests.api.conftest import make_client
from tests.hostile.conftest import FileIndexRun
from tests.hostile.corpus import PATIENT_NAME, Case
from tests.hostile.memory import reset_peak, status_mb
from tests.services import RedisServer

BUDGET_MB = 512  # CXR_API_DECODE_MEMORY_MB: the largest good film (RG1, 3.6 Mpx) needs about 170 MB of it
SLACK_MB = 96  # request bodies, PNG previews, thread stacks, allocator slack: stated, not tuned
REDIS_DB = 12  # a database of its own on the session's Redis, flushed before and after
INTERNALS = ("Traceback", "Error:", "NoneType", "object of type", 'File "')


@dataclass(frozen=True)
class ApiRun:
    search: dict[str, Response]  # case id -> answer
    render: dict[str, Response]
    index: Response
    ledger_counts: dict[str, int]
    mb: tuple[float, float]  # resting, peak


@pytest.fixture(scope="module")
def api_run(file_index_run: FileIndexRun, corpus: list[Case], redis_server: RedisServer) -> ApiRun:
    """The app over the file index's store (its good films), with the queue wired as `cxr serve` wires it."""
    url = redis_server.url.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    broker = redis.Redis.from_url(url)
    broker.flushdb()
    base = file_index_run.settings
    settings = Settings(**{**base.model_dump(), "redis_url": url, "api_decode_memory_mb": BUDGET_MB})
    try:
        with make_client(settings, settings.model_path, submitter=make_submitter(settings)) as client:
            client.app.state.api.wait_ready(60)
            warm = client.post("/v1/search", params={"k": 1}, files={"file": ("q", corpus[0].data)})
            assert warm.status_code == 200, warm.text
            resting = reset_peak(os.getpid())
            with warnings.catch_warnings():
                # Pillow warns about png_over_cap (100 Mpx: over Pillow's soft limit) before our guard refuses it
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                search = {
                    c.id: client.post("/v1/search", params={"k": 3}, files={"file": (c.name, c.data)}) for c in corpus
                }
                render = {c.id: client.post("/v1/render", files={"file": (c.name, c.data)}) for c in corpus}
                index = client.post("/v1/index", files=[("file", (c.name, c.data)) for c in corpus])
            peak = status_mb(os.getpid(), "VmHWM")
        counts = Ledger(settings.ledger_path).counts()
    finally:
        broker.flushdb()
        broker.close()
    return ApiRun(search, render, index, counts, (resting, peak))


def _outcome(r: Response) -> tuple[int, str | None]:
    if r.status_code in (200, 415):
        return r.status_code, None
    return r.status_code, r.json().get("reason")


def _want(case: Case) -> tuple[int, str | None]:
    status = case.api_status
    return status, None if status in (200, 415) else case.expect


def test_search_answers_each_upload_with_its_status_and_reason(api_run: ApiRun, corpus: list[Case]) -> None:
    assert {c.id: _outcome(api_run.search[c.id]) for c in corpus} == {c.id: _want(c) for c in corpus}
    for case in corpus:
        r = api_run.search[case.id]
        if r.status_code == 200:
            assert len(r.json()["hits"]) == 3  # the good films of the file index
        elif r.status_code == 415:
            assert "unsupported file" in r.json()["detail"]


def test_render_answers_each_upload_with_its_status_and_reason(api_run: ApiRun, corpus: list[Case]) -> None:
    assert {c.id: _outcome(api_run.render[c.id]) for c in corpus} == {c.id: _want(c) for c in corpus}
    for case in corpus:
        r = api_run.render[case.id]
        if r.status_code == 200:
            assert r.headers["content-type"] == "image/png" and r.content.startswith(b"\x89PNG")


def test_index_queues_the_good_uploads_and_refuses_each_bad_one_with_its_code(
    api_run: ApiRun, corpus: list[Case]
) -> None:
    r = api_run.index
    assert r.status_code == 202, r.text
    body = r.json()
    refused = {x["file"]: x for x in body["refused"]}  # uploads are named by their place in the form: #1, #2, ...
    got, want = {}, {}
    for i, case in enumerate(corpus, start=1):
        entry = refused.get(f"#{i}")
        if entry is None:
            got[case.id] = "queued"
        elif "code" in entry:  # refused by the decoder: its stable code
            got[case.id] = entry["code"]
        else:  # refused by its bytes (415), with the sentence
            got[case.id] = "unsupported" if entry["reason"].startswith("unsupported file") else entry["reason"]
        want[case.id] = {200: "queued", 415: "unsupported"}.get(case.api_status, case.expect)
    assert got == want
    accepted = sum(c.api_status == 200 for c in corpus)
    assert body["accepted"] == accepted and body["submitted"]["uploads"]["sent"] == accepted
    assert api_run.ledger_counts["queued"] == accepted  # in the ledger, handed to the queue


def test_no_answer_is_a_500_or_shows_internals_or_the_file_name(api_run: ApiRun) -> None:
    answers = [*api_run.search.values(), *api_run.render.values(), api_run.index]
    for r in answers:
        assert r.status_code < 500, r.text
        if r.headers["content-type"].startswith("application/json"):
            assert not any(word in r.text for word in INTERNALS), r.text
            assert PATIENT_NAME not in r.text and "DOE^JOHN" not in r.text and "\\u001b" not in r.text, r.text


def test_memory_stays_within_the_decode_budget(api_run: ApiRun) -> None:
    resting, peak = api_run.mb
    print(f"api: resting {resting:.0f} MiB, peak {peak:.0f} MiB (budget {BUDGET_MB} MiB)")
    assert peak <= resting + BUDGET_MB + SLACK_MB

"""The viewer's main flow in a real Chromium at 1366x768, against the real API over 64 real films (tests/api/
viewer_archive.py): what is on screen is what was asked.

- A second query dropped while the first one's search is still out: only the second's results and caption show,
  the first search is aborted, and its late answer changes nothing.
- The token flow: a search without the token waits for it, the file is kept, and entering the token runs it.
- A refused upload (not an image, over the size limit) leaves nothing of the previous query on screen.
- Copy link after an upload: the link carries the indexed id, or the button says why it cannot.
- Cards (rank, one score with its band, label, age, sex, view, source, same-patient flag), the tally's title and
  closeness line, the warnings, the pickers filled from /v1/facets with counts, case-insensitive filters, a 422
  for a label the archive lacks, and the age filter's no-age count.

The grid screenshot of the README is written by this test (docs/img/viewer-grid.png with CXR_UPDATE_SCREENSHOTS=1).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
from playwright.sync_api import Error as PlaywrightError

from tests.api.browser import LiveServer
from tests.api.viewer_archive import (  # noqa: F401 - module fixtures
    AUTH,
    COLLECTION,
    TOKEN,
    UPLOAD_LIMIT_MB,
    Archive,
    api_search,
    archive_fixture,
    chromium_fixture,
    new_tab,
    server_fixture,
)
from tests.screenshots import screenshot_path

CARDS = """cards => cards.map(c => ({
  id: c.dataset.id, label: c.querySelector('.label').textContent, rank: c.querySelector('.rank').textContent,
  score: c.querySelector('.score').textContent, facts: c.querySelector('.facts').textContent,
  source: c.querySelector('.source').textContent, same: Boolean(c.querySelector('.same-patient')),
  loaded: c.querySelector('img').dataset.loaded === '1'}))"""


def _open(tab, server: LiveServer) -> None:
    tab.goto(server.url + "/viewer/")
    tab.wait_for_function("document.getElementById('status').textContent.startsWith('ready')")


def _cards(tab) -> list[dict]:
    return tab.eval_on_selector_all("#grid .card", CARDS)


def _wait_ids(tab, hits: list[dict]) -> None:
    tab.wait_for_function(
        "ids => [...document.querySelectorAll('#grid .card')].map(c => c.dataset.id).join() === ids.join()",
        arg=[h["id"] for h in hits],
    )


def _caption(tab) -> str:
    return tab.text_content("#query-caption")


def _drop(tab, path: Path) -> None:
    """Drop a file on the drop zone as a user does: a DragEvent carrying the File (read by a detached input)."""
    tab.evaluate(
        """() => document.getElementById('drop-source')
          || document.body.append(Object.assign(document.createElement('input'), {type: 'file', id: 'drop-source'}))"""
    )
    tab.set_input_files("#drop-source", str(path))
    tab.evaluate(
        """() => {
          const data = new DataTransfer();
          data.items.add(document.getElementById('drop-source').files[0]);
          document.getElementById('drop').dispatchEvent(
            new DragEvent('drop', { dataTransfer: data, bubbles: true, cancelable: true }));
        }"""
    )


def test_a_late_answer_to_an_old_query_is_dropped(server: LiveServer, chromium, archive: Archive) -> None:
    first, second = archive.rg1_indexed, archive.held_child[0]
    want = api_search(server.url, second)
    tab = new_tab(chromium)
    held = []

    def hold_first_search(route) -> None:  # the DICOM's search is answered only after the second query shows
        if held:
            route.continue_()
        else:
            held.append(route)

    tab.route(lambda url: "/v1/search?" in url, hold_first_search)
    _open(tab, server)
    with tab.expect_request(lambda r: "/v1/search?" in r.url):
        _drop(tab, first)
    assert _caption(tab).startswith("RG1_UNCI.dcm ·")  # its preview shows, its search is out
    with tab.expect_event("requestfailed", lambda r: "/v1/search?" in r.url) as aborted:
        _drop(tab, second)  # a pediatric JPEG, at once
    assert aborted.value.failure == "net::ERR_ABORTED"  # the new query aborted the old one's search
    _wait_ids(tab, want["hits"])
    with contextlib.suppress(PlaywrightError):  # the browser may have given the request up already
        held[0].continue_()  # the old search's answer, late
    tab.wait_for_load_state("networkidle")
    assert [c["id"] for c in _cards(tab)] == [h["id"] for h in want["hits"]]
    assert _caption(tab).startswith(f"{second.name} ·")
    names = tab.eval_on_selector_all("#tally .name", "els => els.map(e => e.textContent)")
    assert names == list(want["label_tally"])
    assert "dicom-cr" not in names and tab.errors == [], tab.errors


def test_the_token_flow_runs_the_pending_search(server: LiveServer, chromium, archive: Archive) -> None:
    query = archive.held_child[1]
    want = api_search(server.url, query)
    tab = new_tab(chromium, token=False)
    _open(tab, server)
    renders: list[str] = []
    tab.on("request", lambda r: "/v1/render" in r.url and renders.append(r.url))
    tab.set_input_files("#file-input", str(query))
    tab.wait_for_function("document.getElementById('query-caption').textContent.endsWith('waiting for the API token')")
    assert "needs an API token" in tab.text_content("#message") and tab.is_visible("#message")
    assert tab.input_value("#file-input") == ""  # so that choosing the same file again fires again
    with tab.expect_request(lambda r: "/v1/render" in r.url):
        tab.set_input_files("#file-input", str(query))
    tab.wait_for_function("document.getElementById('query-caption').textContent.endsWith('waiting for the API token')")
    assert len(renders) == 2 and _cards(tab) == []
    tab.fill("#token", TOKEN)
    tab.press("#token", "Tab")  # the token is entered: the kept file is searched
    _wait_ids(tab, want["hits"])
    assert tab.is_hidden("#message") and _caption(tab).startswith(f"{query.name} ·")
    assert tab.errors == [], tab.errors


def test_a_refused_upload_clears_the_previous_query(server: LiveServer, chromium, archive: Archive, tmp_path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not an X-ray\n")
    big = tmp_path / "big.dcm"
    big.write_bytes(b"\0" * ((UPLOAD_LIMIT_MB + 1) << 20))
    tab = new_tab(chromium)
    _open(tab, server)
    for bad, why in ((notes, "unsupported file"), (big, f"larger than the limit of {UPLOAD_LIMIT_MB} MiB")):
        tab.set_input_files("#file-input", str(archive.held_child[0]))
        tab.wait_for_function("document.querySelectorAll('#grid .card').length === 12")
        tab.set_input_files("#file-input", str(bad))
        tab.wait_for_function(
            "t => document.getElementById('query-caption').textContent === t", arg=f"No query: {bad.name} was refused."
        )
        message = tab.text_content("#message")
        assert message.startswith(f"{bad.name} was refused: ") and why in message
        assert _cards(tab) == [] and tab.text_content("#tally") == "" and tab.is_hidden("#warnings")
        assert tab.is_disabled("#search") and tab.is_disabled("#share")
        assert "id" not in parse_qs(urlparse(tab.url).query)
        blank = "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data.every((v) => v === 0)"
        assert tab.eval_on_selector("#query-canvas", blank)  # the old query's film is gone too
        tab.screenshot(path=str(tmp_path / f"refused-{bad.stem}.png"))
    assert tab.errors == [], tab.errors


def test_copy_link_carries_the_indexed_id_or_says_why_not(server: LiveServer, chromium, archive: Archive) -> None:
    tab = new_tab(chromium)
    _open(tab, server)
    tab.set_input_files("#file-input", str(archive.held_covid[1]))
    _wait_ids(tab, api_search(server.url, archive.held_covid[1])["hits"])
    assert tab.is_disabled("#share") and tab.is_visible("#share-why")
    assert tab.text_content("#share-why") == "an uploaded film that is not in the archive cannot be shared by link"

    film = archive.folder / archive.indexed[0]["path"]  # the same bytes as an indexed film
    want = api_search(server.url, film)
    assert want["query"]["indexed"] is True
    tab.set_input_files("#file-input", str(film))
    _wait_ids(tab, want["hits"])
    assert tab.is_enabled("#share") and tab.is_hidden("#share-why")
    assert parse_qs(urlparse(tab.url).query)["id"] == [want["query"]["id"]]
    tab.click("#share")
    tab.wait_for_function("document.getElementById('message').textContent === 'Link copied.'")
    link = tab.evaluate("navigator.clipboard.readText()")
    assert link == tab.url
    opened = new_tab(chromium)
    opened.goto(link)  # the link reopens the same search, from the indexed film
    _wait_ids(opened, want["hits"])
    assert _caption(opened).startswith("indexed covid19")
    assert tab.errors == [] and opened.errors == [], tab.errors + opened.errors


def _screenshot(tab, path: Path) -> None:
    """The page from its top as a 128-colour PNG (grey films on a dark page read the same), under 300 KB."""
    from PIL import Image

    tab.evaluate("window.scrollTo(0, 0)")
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.open(io.BytesIO(tab.screenshot())).convert("RGB")
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    assert path.stat().st_size < 300_000


def _facts(payload: dict) -> str:
    age = payload.get("age_band", payload.get("age"))
    parts = [payload.get("sex"), f"{age} y" if age not in (None, "") else None, payload.get("view")]
    return " · ".join(str(p) for p in [*parts, payload.get("study_date")] if p not in (None, ""))


def _check_page(tab, want: dict) -> None:
    """The grid, the tally and the warnings on screen say what the API answered."""
    _wait_ids(tab, want["hits"])
    tab.wait_for_function("[...document.querySelectorAll('#grid .card img')].every(i => i.dataset.loaded === '1')")
    for card, hit in zip(_cards(tab), want["hits"], strict=True):
        score = f"{hit['score']:.3f}" + (f" · {hit['band']}" if hit.get("band") else "")
        assert card["rank"] == f"#{hit['rank']}" and card["score"] == score
        assert card["label"] == hit["payload"]["label"] and card["facts"] == _facts(hit["payload"])
        assert card["source"] == hit["payload"].get("source", "") and card["same"] == hit["same_patient"]
    assert tab.text_content("#tally .tally-title") == want["tally_title"]
    bands = [h["band"] for h in want["hits"] if h.get("band")]
    closeness = tab.text_content("#tally .closeness")
    assert bands and closeness.startswith("how close: ") and all(b in closeness for b in bands)
    shown = tab.eval_on_selector_all("#warnings li", "els => els.map(e => [e.dataset.code, e.textContent])")
    assert shown == [[w["code"], w["message"]] for w in want["warnings"]]


def test_cards_tally_warnings_and_filters(server: LiveServer, chromium, archive: Archive, tmp_path) -> None:
    facets = httpx.get(f"{server.url}/v1/facets", params={"collection": COLLECTION}, headers=AUTH, timeout=30).json()
    tab = new_tab(chromium)
    _open(tab, server)
    assert tab.is_checked("#group")  # one per patient by default
    tab.wait_for_selector("#labels[data-source=facets]", state="attached")  # the pickers, filled from /v1/facets
    for field, picker in (("label", "labels"), ("source", "sources"), ("view", "views")):
        options = tab.eval_on_selector_all(f"#{picker} option", "os => os.map(o => [o.value, o.label])")
        assert options == [[f["value"], f"{f['value']} ({f['count']})"] for f in facets["fields"][field]]
    query = archive.held_covid[0]
    tab.set_input_files("#file-input", str(query))
    _check_page(tab, api_search(server.url, query))

    tab.fill("#f-label", "COVID19")  # typed in capitals: the server resolves it to the stored "covid19"
    tab.click("#search")
    want = api_search(server.url, query, ("label=covid19",))
    _check_page(tab, want)
    assert {c["label"] for c in _cards(tab)} == {"covid19"}

    tab.fill("#f-label", "pneumonia")  # no such label here: the 422's detail, not an empty grid
    tab.click("#search")
    refused = httpx.post(
        server.url + "/v1/search",
        params={"filter": "label=pneumonia"},
        files={"file": query.read_bytes()},
        headers=AUTH,
        timeout=60,
    )
    assert refused.status_code == 422 and refused.json()["reason"] == "unknown_value"
    tab.wait_for_function(
        "d => document.getElementById('message').textContent.startsWith(d)", arg=refused.json()["detail"]
    )
    assert _cards(tab) == [] and "No indexed image" not in tab.text_content("#message")

    tab.fill("#f-label", "")
    tab.fill("#f-age-min", "18")
    tab.fill("#f-age-max", "90")
    assert tab.text_content("#age-note").startswith(f"{facets['no_age']} films have no age")
    tab.click("#search")
    want = api_search(server.url, query, ("age=" + ",".join(str(a) for a in range(18, 91)),))
    assert "no_age_dropped" in [w["code"] for w in want["warnings"]]
    _check_page(tab, want)
    _screenshot(tab, screenshot_path("viewer-grid.png"))  # the README's: warnings, tally wording, cards

    tab.fill("#f-age-min", "")
    tab.fill("#f-age-max", "")
    tab.set_input_files("#file-input", str(archive.rg1_held))  # the RG1 patient's third film, not indexed
    want = api_search(server.url, archive.rg1_held)
    assert any(h["same_patient"] for h in want["hits"])
    _check_page(tab, want)
    _screenshot(tab, tmp_path / "same-patient.png")
    assert tab.errors == [], tab.errors

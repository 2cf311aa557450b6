"""The viewer in a real browser: Debian's headless Chromium driven by Playwright, against the real API (uvicorn on
a free port) over a real embedded store of real X-rays.

It uploads an X-ray, waits for the grid, checks the results against the API's own answer (count, order, labels)
and the tally against the grid; opens a result from the keyboard with its heat maps and the window/level
control; marks results and runs a more-like-these search; searches a region drawn on the query; reopens a shared
URL. Screenshots go to the test's temp folder (set CXR_VIEWER_SCREENSHOT=path to keep the grid one).
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from tests.api.browser import LiveServer
from tests.api.conftest import Indexed

K = 8


def _grid(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#grid .card",
        "cards => cards.map(c => ({id: c.dataset.id, label: c.dataset.label,"
        " rank: c.querySelector('.rank').textContent, score: parseFloat(c.querySelector('.score').textContent),"
        " loaded: c.querySelector('img').dataset.loaded === '1'}))",
    )


def _tally(page) -> dict[str, int]:
    names = page.eval_on_selector_all("#tally .name", "els => els.map(e => e.textContent)")
    counts = page.eval_on_selector_all("#tally .n", "els => els.map(e => parseInt(e.textContent, 10))")
    return dict(zip(names, counts, strict=True))


def _canvas(page, selector: str) -> str:
    return page.eval_on_selector(selector, "c => c.toDataURL('image/png')")


def test_viewer_upload_grid_detail_heatmap_refine_region(live: LiveServer, page, indexed: Indexed, tmp_path) -> None:
    query = indexed.sample / next(r["path"] for r in indexed.rows if r["label"] == "covid19")
    page.goto(live.url + "/viewer/")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('ready')")
    page.fill("#k", str(K))

    # Upload a real X-ray: the grid shows what the API answers for the same query, with a matching tally.
    page.set_input_files("#file-input", str(query))
    page.wait_for_function(f"document.querySelectorAll('#grid .card').length === {K}")
    page.wait_for_function("[...document.querySelectorAll('#grid .card img')].every(i => i.dataset.loaded === '1')")
    cards = _grid(page)
    want = httpx.post(
        live.url + "/v1/search",
        params={"k": K, "group_by_patient": "true"},
        files={"file": ("q", query.read_bytes())},
        timeout=60,
    ).json()
    assert [c["id"] for c in cards] == [h["id"] for h in want["hits"]]
    assert [c["label"] for c in cards] == [h["payload"]["label"] for h in want["hits"]]
    assert [c["rank"] for c in cards] == [f"#{i}" for i in range(1, K + 1)]
    assert _tally(page) == dict(Counter(c["label"] for c in cards)) == want["label_tally"]
    assert page.eval_on_selector("#query-canvas", "c => c.width") > 0
    page.screenshot(path=str(tmp_path / "grid.png"))
    if os.environ.get("CXR_VIEWER_SCREENSHOT"):
        shutil.copy(tmp_path / "grid.png", os.environ["CXR_VIEWER_SCREENSHOT"])

    # Open the first result from the keyboard: query and result side by side, each with its heat map.
    page.focus("#grid .card .open")
    page.keyboard.press("Enter")
    page.wait_for_selector("#detail[open]")
    page.wait_for_selector("#detail[data-heat='ready']", timeout=60_000)
    assert "heat maps" in page.text_content("#detail-note").lower()
    for canvas in ("#detail-query", "#detail-result"):
        assert page.eval_on_selector(canvas, "c => c.width * c.height") > 0
    with_heat = _canvas(page, "#detail-result")
    page.click("#heat-on")
    without_heat = _canvas(page, "#detail-result")
    assert with_heat != without_heat
    page.click("#heat-on")
    assert _canvas(page, "#detail-result") == with_heat
    width = int(page.input_value("#wl-width"))
    shown = page.text_content("#wl-values")
    page.focus("#wl-width")
    for _ in range(20):
        page.keyboard.press("ArrowLeft")  # narrower window: more contrast (the slider keeps its arrow keys)
    windowed = _canvas(page, "#detail-result")
    assert windowed != with_heat and page.input_value("#wl-width") == str(width - 20)
    assert page.text_content("#wl-values") != shown  # W and L are shown in numbers
    assert page.text_content("#detail-title").startswith("Result 1 of")
    page.click("#heat-on")
    assert _canvas(page, "#detail-result") != windowed  # the heat map is still drawn over the windowed image
    page.click("#heat-on")
    page.screenshot(path=str(tmp_path / "detail.png"))
    page.focus("#detail-close")  # arrows move between results unless a slider has the focus
    page.keyboard.press("ArrowRight")
    page.wait_for_function("document.getElementById('detail-title').textContent.startsWith('Result 2 of')")
    page.keyboard.press("Escape")
    page.wait_for_function("!document.getElementById('detail').open")

    # Mark two results good and one not, then "more like these" (Qdrant recommend).
    buttons = page.query_selector_all("#grid .card .mark-good")
    buttons[0].click()
    buttons[2].click()
    page.query_selector_all("#grid .card .mark-bad")[1].click()
    marked = {cards[0]["id"], cards[1]["id"], cards[2]["id"]}
    page.click("#more-like")
    page.wait_for_selector("#grid[data-score='recommend']")
    refined = _grid(page)
    assert len(refined) == K and not marked & {c["id"] for c in refined}
    assert _tally(page) == dict(Counter(c["label"] for c in refined))
    state = parse_qs(urlparse(page.url).query)
    assert set(state["pos"][0].split(",")) == {cards[0]["id"], cards[2]["id"]} and state["neg"] == [cards[1]["id"]]
    page.screenshot(path=str(tmp_path / "refined.png"))

    # Draw a box on the query: a region search, kept in the URL.
    box = page.query_selector("#query-canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.15)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.6, steps=5)
    page.mouse.up()
    page.wait_for_function("new URL(location.href).searchParams.has('crop')")
    page.wait_for_selector("#grid[data-score='cosine']")
    page.wait_for_function(f"document.querySelectorAll('#grid .card').length === {K}")
    assert page.is_visible("#crop-box")
    crop = [float(v) for v in parse_qs(urlparse(page.url).query)["crop"][0].split(",")]
    assert crop == pytest.approx([0.2, 0.15, 0.7, 0.6], abs=0.02)
    page.screenshot(path=str(tmp_path / "region.png"))

    # A shared link reopens the search: start from an indexed id, five results, one per patient.
    page.goto(f"{live.url}/viewer/?k=5&group=1&id={cards[3]['id']}")
    page.wait_for_function("document.querySelectorAll('#grid .card').length === 5")
    assert page.is_checked("#group") and page.input_value("#k") == "5"
    assert cards[3]["id"] not in {c["id"] for c in _grid(page)}
    assert page.errors == [], page.errors  # type: ignore[attr-defined]

"""The pair (detail) dialog in a real Chromium against the real API (tests/api/browser.py), at 1366x768 and
1920x1080: focus and keys, layout by bounding boxes, synced zoom and pan, window/level on a DICOM's original values
(MONOCHROME1), the heat maps' legend, method toggle and near-duplicate note, one score per result, the region box,
and heat maps keyed by the query's content (two different films both named IM0001.dcm, of the same size).

The README's pair-view screenshots are written by this test (docs/img/viewer-pair-WIDTHxHEIGHT.jpg with
CXR_UPDATE_SCREENSHOTS=1; JPEG, under 300 KB).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pydicom
from PIL import Image

from services.index.payload import point_id
from tests.api.browser import LiveServer
from tests.api.conftest import QUERY_DICOM, Indexed
from tests.screenshots import screenshot_path

NEAR_DUPLICATE = 0.995
SIZES = [(1366, 768), (1920, 1080)]
CARD_SCORES = """cards => cards.map(c => ({id: c.dataset.id, label: c.dataset.label,
  text: c.querySelector('.score').textContent, score: parseFloat(c.querySelector('.score').textContent)}))"""


def _cards(page) -> list[dict]:
    page.wait_for_function("[...document.querySelectorAll('#grid .card img')].every(i => i.dataset.loaded === '1')")
    return page.eval_on_selector_all("#grid .card", CARD_SCORES)


def _open(page, index: int) -> None:
    page.eval_on_selector_all("#grid .card .open", "(b, i) => b[i].click()", index)
    page.wait_for_selector("#detail[open]")


def _heat(page) -> str:
    page.wait_for_function(
        "['ready', 'not-informative', 'failed'].includes(document.getElementById('detail').dataset.heat)"
    )
    return page.get_attribute("#detail", "data-heat")


def _view(page) -> list[float]:
    return [float(v) for v in page.get_attribute("#detail", "data-view").split(",")]


def _rect(page, canvas: str) -> list[float]:
    return [float(v) for v in page.get_attribute(canvas, "data-rect").split(",")]


def _grey(page, canvas: str, size: int = 64) -> np.ndarray:
    """The film as drawn on `canvas` (its drawn rectangle only), grey, resized to size x size."""
    url = page.eval_on_selector(canvas, "c => c.toDataURL('image/png')")
    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("L")
    x, y, w, h = _rect(page, canvas)
    return np.asarray(img.crop((x, y, x + w, y + h)).resize((size, size)), dtype=np.float64)


def _layout_ok(page) -> None:
    """Nothing of the dialog lies outside the window; Close is on one line; the payload table is inside the side
    panel or the panel scrolls; the films have room."""
    m = page.evaluate(
        """() => {
          const box = (el) => el.getBoundingClientRect();
          const d = document.getElementById('detail');
          const side = document.querySelector('#detail .pair-side');
          const close = document.getElementById('detail-close');
          const line = parseFloat(getComputedStyle(close).lineHeight) || 18;
          const outside = [...d.querySelectorAll('*')].filter((e) => {
            if (!e.getClientRects().length || e.parentElement.closest('.pair-side, #detail-keys')) return false;
            const r = box(e);
            return r.left < -0.5 || r.top < -0.5 || r.right > innerWidth + 0.5 || r.bottom > innerHeight + 0.5;
          }).map((e) => e.id || e.tagName);
          return { dialog: box(d).toJSON(), outside, closeLines: box(close).height / line,
            side: box(side).toJSON(), table: box(document.getElementById('detail-payload')).toJSON(),
            sideScrolls: side.scrollHeight > side.clientHeight && getComputedStyle(side).overflowY === 'auto',
            dialogOverflowX: d.scrollWidth - d.clientWidth,
            film: box(document.getElementById('detail-result')).toJSON() };
        }"""
    )
    w, h = page.viewport_size["width"], page.viewport_size["height"]
    d = m["dialog"]
    assert d["left"] >= 0 and d["top"] >= 0 and d["right"] <= w and d["bottom"] <= h, m
    assert m["outside"] == [] and m["dialogOverflowX"] <= 0, m
    assert m["closeLines"] < 1.9, m  # "Close (Esc)" never wraps
    table_inside = m["table"]["bottom"] <= m["side"]["bottom"] + 0.5
    assert table_inside or m["sideScrolls"], m
    assert m["film"]["height"] > 0.5 * h and m["film"]["width"] > 0.25 * w, m


def test_pair_keys_layout_zoom_window_level_heat_maps(live: LiveServer, page, indexed: Indexed, tmp_path) -> None:
    # The indexed RG1_UNCI (a 15-bit MONOCHROME1 CR with its own window) is the query: its film is windowed from
    # its original values. RG1_J2KR (the same patient's film, nearly the same pixels) is a near-duplicate result.
    qid = point_id(sop_uid=pydicom.dcmread(indexed.dicom[0], stop_before_pixels=True).SOPInstanceUID, content_sha256="")
    pixels = httpx.get(f"{live.url}/v1/points/{qid}/pixels", timeout=60)
    assert pixels.status_code == 200 and pixels.headers["X-Photometric"] == "MONOCHROME1"
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"{live.url}/viewer/?k=6&group=0&id={qid}")
    page.wait_for_function("document.querySelectorAll('#grid .card').length === 6")
    cards = _cards(page)
    near = [i for i, c in enumerate(cards) if c["score"] > NEAR_DUPLICATE]
    assert [cards[i]["label"] for i in near] == ["dicom-cr"], cards
    far = next(i for i, c in enumerate(cards) if c["score"] < 0.99)

    # A near-duplicate: no map drawn, a note instead, and no explain request for it.
    _open(page, near[0])
    assert page.evaluate("document.activeElement.id") == "detail"  # the dialog has the focus, not a slider
    assert _heat(page) == "not-informative" and "not informative" in page.text_content("#detail-note")
    assert not page.is_visible("#heat-legend")
    assert not [u for u in requests if "/v1/explain" in u and cards[near[0]]["id"] in u]

    # Window/level on the DICOM's original values: W and L as the file gives them, MONOCHROME1 inverted after the
    # window (the film as drawn correlates with the server's own 8-bit render, which honours both).
    page.wait_for_function("document.getElementById('wl-values').dataset.queryExact === 'true'")
    values = page.eval_on_selector("#wl-values", "e => ({...e.dataset})")
    assert float(values["queryW"]) == float(pixels.headers["X-Window-Width"]) > 255
    assert float(values["queryL"]) == float(pixels.headers["X-Window-Center"])
    assert "W 30000 L 15000" in page.text_content("#wl-values")
    thumb = Image.open(io.BytesIO(httpx.get(f"{live.url}/v1/points/{qid}/thumbnail?size=256", timeout=60).content))
    server = np.asarray(thumb.convert("L").resize((64, 64)), dtype=np.float64)
    assert np.corrcoef(_grey(page, "#detail-query").ravel(), server.ravel())[0, 1] > 0.9

    # Keys: arrows step through the results, g marks good, ? shows the keys; a focused slider keeps its arrows.
    page.keyboard.press("ArrowRight" if far > near[0] else "ArrowLeft")
    while page.text_content("#detail-title").split()[1] != str(far + 1):
        page.keyboard.press("ArrowRight")
    assert _heat(page) == "ready" and page.is_visible("#heat-legend")
    assert "Relevance" in page.text_content("#detail-trust")
    assert page.get_attribute("#detail-score", "data-score") == f"{cards[far]['score']:.3f}"
    page.keyboard.press("g")
    page.wait_for_function(f"document.querySelectorAll('#grid .card')[{far}].classList.contains('good')")
    assert page.get_attribute("#detail-good", "aria-pressed") == "true"
    assert page.is_visible("#detail-keys-button") and not page.is_visible("#detail-keys")
    page.keyboard.press("?")
    assert page.is_visible("#detail-keys") and "right-drag" in page.text_content("#detail-keys")
    page.keyboard.press("?")
    assert not page.is_visible("#detail-keys")
    title = page.text_content("#detail-title")
    level, shown = page.input_value("#wl-level"), page.text_content("#wl-values")
    page.focus("#wl-level")
    for _ in range(5):
        page.keyboard.press("ArrowRight")
    assert page.text_content("#detail-title") == title and page.input_value("#wl-level") == str(int(level) + 5)
    assert page.text_content("#wl-values") != shown
    page.focus("#detail")

    # Zoom at the pointer and pan, the two films in step; keys zoom; r resets zoom and window/level.
    assert _view(page) == [1, 0.5, 0.5]
    before_query = _grey(page, "#detail-query")
    box = page.query_selector("#detail-result").bounding_box()
    px, py = box["x"] + box["width"] * 0.35, box["y"] + box["height"] * 0.4
    rx, ry, rw, rh = _rect(page, "#detail-result")
    scale = page.evaluate("devicePixelRatio")
    under = ((px - box["x"]) * scale - rx) / rw
    page.mouse.move(px, py)
    page.mouse.wheel(0, -400)
    page.wait_for_function("document.getElementById('detail').dataset.view.split(',')[0] > 1")
    zoom, fx, fy = _view(page)
    rx, ry, rw, rh = _rect(page, "#detail-result")
    assert abs(((px - box["x"]) * scale - rx) / rw - under) < 0.01  # the point under the pointer stayed
    for canvas in ("#detail-query", "#detail-result"):  # both show the same part of their films
        cw = page.eval_on_selector(canvas, "c => c.width")
        x, _, w, _ = _rect(page, canvas)
        assert abs((cw / 2 - x) / w - fx) < 0.01
    assert not np.array_equal(_grey(page, "#detail-query"), before_query)
    page.mouse.down()
    page.mouse.move(px - 120, py - 60, steps=4)
    page.mouse.up()
    assert _view(page)[1] > fx and _view(page)[2] > fy
    page.keyboard.press("+")
    assert abs(_view(page)[0] - min(16, zoom * 1.25)) < 0.01
    page.keyboard.press("-")
    assert abs(_view(page)[0] - zoom) < 0.01
    page.mouse.move(px, py)
    page.mouse.down(button="right")  # right-drag: across = width, up/down = level
    page.mouse.move(px + 90, py + 40, steps=4)
    page.mouse.up(button="right")
    page.wait_for_function("document.getElementById('wl-preset').value === 'custom'")
    dragged = page.eval_on_selector("#wl-values", "e => ({...e.dataset})")
    assert float(dragged["queryW"]) > float(values["queryW"]) and float(dragged["queryL"]) != float(values["queryL"])
    page.keyboard.press("r")
    assert _view(page) == [1, 0.5, 0.5] and page.eval_on_selector("#wl-values", "e => e.dataset.queryW") == "30000"
    assert "not Hounsfield" in page.get_attribute("#wl-preset", "title")
    for preset in ("lung", "bone"):
        page.select_option("#wl-preset", preset)
        assert page.eval_on_selector("#wl-values", "e => e.dataset.queryW") != "30000"
    page.select_option("#wl-preset", "default")

    # The legend reads "more relevant" at the top; occlusion is a second method, with its own trust line.
    ends = page.query_selector_all(".heat-legend-ends span")
    assert ends[0].text_content() == "more relevant" and ends[0].bounding_box()["y"] < ends[1].bounding_box()["y"]
    page.select_option("#heat-method", "occlusion")
    page.wait_for_function("document.getElementById('detail-trust').textContent.startsWith('Occlusion')")
    assert _heat(page) == "ready" and "(occlusion)" in page.text_content("#detail-note")
    assert [u for u in requests if "/v1/explain" in u and "method=occlusion" in u]
    page.select_option("#heat-method", "relevance")
    assert _heat(page) == "ready"

    for width, height in SIZES:
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_function(f"innerWidth === {width}")
        page.wait_for_function(  # the canvases follow the new size
            "() => { const c = document.getElementById('detail-result');"
            " return c.width === Math.round(c.clientWidth * devicePixelRatio); }"
        )
        _layout_ok(page)
        assert page.is_visible("#heat-legend")
        page.screenshot(path=str(screenshot_path(f"viewer-pair-{width}x{height}.jpg")), type="jpeg", quality=80)
    page.keyboard.press("Escape")
    page.wait_for_function("!document.getElementById('detail').open")
    assert page.errors == [], page.errors  # type: ignore[attr-defined]


def _same_size_films(dicom_dir: Path, tmp_path: Path) -> tuple[bytes, bytes]:
    """Two real DICOMs of one size: RG1_UNCR reduced 4x (quicker to decode), and the same with its pixels
    mirrored (a different film)."""
    ds = pydicom.dcmread(dicom_dir / QUERY_DICOM)
    films = []
    for name, pixels in (("a", ds.pixel_array[::4, ::4]), ("b", ds.pixel_array[::4, ::-4])):
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        ds.Rows, ds.Columns = pixels.shape
        ds.save_as(tmp_path / f"{name}.dcm")
        films.append((tmp_path / f"{name}.dcm").read_bytes())
    assert len(films[0]) == len(films[1]) and films[0] != films[1]
    return films[0], films[1]


def _upload(page, name: str, data: bytes) -> list[dict]:
    with page.expect_response(lambda r: "/v1/search" in r.url and r.request.method == "POST") as answer:
        page.set_input_files("#file-input", {"name": name, "mimeType": "application/dicom", "buffer": data})
    assert answer.value.ok
    ids = [h["id"] for h in answer.value.json()["hits"]]
    page.wait_for_function(
        "ids => [...document.querySelectorAll('#grid .card')].map(c => c.dataset.id).join() === ids.join()", arg=ids
    )
    return _cards(page)


def test_pair_heat_maps_keyed_by_content_one_score_region(
    live: LiveServer, page, dicom_dir: Path, tmp_path: Path
) -> None:
    first, second = _same_size_films(dicom_dir, tmp_path)
    explains: list[str] = []
    page.on("request", lambda r: "/v1/explain" in r.url and explains.append(r.url))
    page.goto(f"{live.url}/viewer/?k=8&group=0")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('ready')")

    a = _upload(page, "IM0001.dcm", first)
    ids_a = {c["id"]: c["score"] for c in a if c["score"] < 0.99}
    shown = next(i for i, c in enumerate(a) if c["id"] in ids_a)
    _open(page, shown)
    assert _heat(page) == "ready"
    assert page.get_attribute("#detail-score", "data-score") == f"{a[shown]['score']:.3f}"
    assert len(explains) == 1
    page.keyboard.press("Escape")

    # The same name and size, other pixels: the same result opens with a new explain request and its own score.
    b = _upload(page, "IM0001.dcm", second)
    both = [i for i, c in enumerate(b) if c["id"] in ids_a and c["score"] < 0.99]
    assert both, (a, b)
    i = both[0]
    _open(page, i)
    assert _heat(page) == "ready"
    assert len(explains) == 2 and b[i]["id"] in explains[-1]
    assert page.get_attribute("#detail-score", "data-score") == f"{b[i]['score']:.3f}"
    assert page.text_content("#detail-score").startswith(f"Score {b[i]['text']} (cosine")  # as the card says it
    page.keyboard.press("Escape")
    _open(page, i)  # the same content again: its maps come from the cache
    assert _heat(page) == "ready" and len(explains) == 2
    page.keyboard.press("Escape")
    page.wait_for_function("!document.getElementById('detail').open")

    # A region search: the box drawn on the query in the pair view, two labelled numbers, a whole-film note.
    box = page.query_selector("#query-canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.2)
    with page.expect_response(lambda r: "/v1/search" in r.url and "crop=" in r.url) as answer:
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.7, steps=5)
        page.mouse.up()
    hits = answer.value.json()["hits"]
    page.wait_for_function(
        "ids => [...document.querySelectorAll('#grid .card')].map(c => c.dataset.id).join() === ids.join()",
        arg=[h["id"] for h in hits],
    )
    r = next(i for i, h in enumerate(hits) if h["score"] < NEAR_DUPLICATE)
    _open(page, r)
    assert _heat(page) == "ready"
    score = page.text_content("#detail-score")
    assert score.startswith(f"Region score {hits[r]['score']:.3f}") and "whole-film cosine" in score
    assert "matched as a whole film" in page.text_content("#detail-region")
    x, y, w, h = _rect(page, "#detail-query")
    crop = answer.value.json()["query"]
    x0, y0 = x + crop["crop"][0] / crop["width"] * w, y + crop["crop"][1] / crop["height"] * h
    x1 = x + crop["crop"][2] / crop["width"] * w
    yellow = page.eval_on_selector(
        "#detail-query",
        """(c, [x0, x1, y]) => { const d = c.getContext('2d').getImageData(Math.round(x0), Math.round(y) - 2,
             Math.round(x1 - x0), 5).data; let n = 0;
           for (let o = 0; o < d.length; o += 4) if (d[o] > 200 && d[o + 1] > 170 && d[o + 2] < 120) n++;
           return n; }""",
        [x0, x1, y0],
    )
    assert yellow > (x1 - x0) * 0.3  # the box's dashed top edge
    assert page.errors == [], page.errors  # type: ignore[attr-defined]

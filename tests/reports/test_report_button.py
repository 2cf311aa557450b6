"""The viewer's Report button in headless Chromium: it posts the query on screen to /v1/report and opens the PDF."""

from __future__ import annotations

from pathlib import Path

from tests.api.browser import LiveServer


def test_the_report_button_opens_the_pdf_of_the_query_on_screen(live: LiveServer, page, query_film: Path) -> None:
    page.goto(live.url + "/viewer/")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('ready')")
    page.fill("#k", "3")
    page.set_input_files("#file-input", str(query_film))
    page.wait_for_function("document.querySelectorAll('#grid .card').length === 3")
    with page.context.expect_page() as opened, page.expect_response(lambda r: "/v1/report" in r.url) as answer:
        page.click("#report")
    response = answer.value
    assert response.request.method == "POST" and "k=3" in response.url
    assert response.status == 200 and response.headers["content-type"] == "application/pdf"
    tab = opened.value
    tab.wait_for_url("blob:**")
    head = page.evaluate(  # the opened document's first bytes, read back from its blob URL (same origin)
        "async (url) => new TextDecoder().decode((await (await fetch(url)).arrayBuffer()).slice(0, 5))", tab.url
    )
    assert head == "%PDF-"
    tab.close()

    # a double click makes one report: the button is disabled while its request runs
    requests: list[str] = []
    tabs_before = len(page.context.pages)
    page.on("request", lambda r: requests.append(r.url) if "/v1/report" in r.url else None)
    with page.context.expect_page() as again, page.expect_response(lambda r: "/v1/report" in r.url):
        page.dblclick("#report")
    again.value.wait_for_url("blob:**")
    page.wait_for_function("!document.getElementById('report').disabled")
    assert len(requests) == 1, requests
    assert len(page.context.pages) == tabs_before + 1, [p.url for p in page.context.pages]  # one report tab
    assert not page.errors, page.errors

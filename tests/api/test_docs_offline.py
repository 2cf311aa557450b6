"""/docs and /redoc work in a hospital network with no internet: every script, style and icon they load comes from
this server (the fastapi-offline wheel's files), and in a real browser, on this machine where the internet is
unreachable, Swagger UI renders the API's operations."""

from __future__ import annotations

import re

from tests.api.conftest import Indexed


def test_the_docs_pages_load_nothing_from_another_host(client) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200, page
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text)
        assert urls, f"{page} loads no script or style"
        assert all(u.startswith("/") and not u.startswith("//") for u in urls), (page, urls)
        for url in urls:
            asset = client.get(url)
            assert asset.status_code == 200 and len(asset.content) > 0, url


def test_swagger_ui_renders_the_operations_with_no_internet(live, page, indexed: Indexed) -> None:
    outside: list[str] = []
    page.on("request", lambda req: req.url.startswith(live.url) or outside.append(req.url))
    page.goto(live.url + "/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert any("/v1/search" in p for p in paths), paths
    assert outside == [], outside  # nothing asked of another host
    assert not page.errors, page.errors  # type: ignore[attr-defined]

"""`/docs` and `/redoc` work without Internet access: every asset they load is served by
the gateway itself, without a key."""

from __future__ import annotations

import re

import pytest

# Every URL a page loads: src= and href= attributes, and Swagger UI's `url:` for the document.
REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|\burl:\s*'([^']+)'""")
CONTENT_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".json": "application/json",
}


def references(page: str) -> list[str]:
    return [first or second for first, second in REFERENCE.findall(page)]


@pytest.mark.parametrize(("page", "assets"), [("/docs", 3), ("/redoc", 2)])
async def test_the_docs_pages_load_everything_from_the_gateway(anonymous, page, assets):
    reply = await anonymous.get(page)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/html")
    assert "http://" not in reply.text
    assert "https://" not in reply.text
    found = references(reply.text)
    assert len([url for url in found if url.startswith("/docs/static/")]) == assets
    for url in found:
        assert url.startswith("/"), url
        asset = await anonymous.get(url)
        assert asset.status_code == 200, url
        suffix = "." + url.split("?")[0].rsplit(".", 1)[-1]
        assert asset.headers["content-type"].startswith(CONTENT_TYPES[suffix]), url
        assert asset.content


async def test_the_assets_are_cacheable(anonymous):
    page = (await anonymous.get("/docs")).text
    script = next(url for url in references(page) if url.endswith(".js") or ".js?" in url)
    reply = await anonymous.get(script)
    assert "max-age" in reply.headers["cache-control"]
    assert reply.headers["etag"]

"""The operator console's page and assets as a browser gets them, without a browser: the
right content types (an ES module with another type is refused), the console's
Content-Security-Policy, nothing loaded from another host, and no console route in the
API's OpenAPI document. The page needs no key; the data behind it does."""

from __future__ import annotations

import re

import httpx
import pytest
from recfleet_gateway.app import create_app
from recfleet_gateway.settings import GatewaySettings

# The page's own references and the modules' imports (`from "./api.js"`).
REFERENCE_RE = re.compile(r'(?:src|href)="(/console/static/[^"]+)"')
IMPORT_RE = re.compile(r'from "\./([a-z]+\.js)"')
# Addresses in the assets that are names, not fetches.
NAMESPACES = {"http://www.w3.org/2000/svg"}


@pytest.fixture
async def console():
    # The console's routes serve files only: the app's start-up (downstreams, Redis,
    # Postgres) is not needed, so it is not run.
    app = create_app(GatewaySettings(bootstrap_admin_key="console-test-key"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        yield client


def assert_console_headers(reply: httpx.Response) -> None:
    policy = reply.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "script-src 'self';" in policy and "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert reply.headers["x-content-type-options"] == "nosniff"


async def assets_of(console: httpx.AsyncClient) -> dict[str, httpx.Response]:
    """Every file the page loads, following the modules' imports."""
    page = (await console.get("/console")).text
    pending = REFERENCE_RE.findall(page)
    found: dict[str, httpx.Response] = {}
    while pending:
        path = pending.pop()
        if path in found:
            continue
        found[path] = reply = await console.get(path)
        if path.endswith(".js"):
            folder = path.rsplit("/", 1)[0]
            pending += [f"{folder}/{name}" for name in IMPORT_RE.findall(reply.text)]
    return found


async def test_the_page_is_html_with_the_console_policy_and_needs_no_key(console):
    for path in ("/console", "/console/"):
        reply = await console.get(path)
        assert reply.status_code == 200
        assert reply.headers["content-type"] == "text/html; charset=utf-8"
        assert_console_headers(reply)
        assert '<label for="key">Admin key</label>' in reply.text


async def test_every_asset_is_served_with_its_type_and_the_policy(console):
    assets = await assets_of(console)
    types = {path.rsplit(".", 1)[1] for path in assets}
    assert types == {"css", "js"}
    assert "/console/static/js/main.js" in assets and "/console/static/js/chart.js" in assets
    for path, reply in assets.items():
        assert reply.status_code == 200, path
        expected = "text/javascript" if path.endswith(".js") else "text/css"
        assert reply.headers["content-type"] == f"{expected}; charset=utf-8", path
        assert_console_headers(reply)
        external = set(re.findall(r"https?://[^\s\"'`)]+", reply.text)) - NAMESPACES
        assert not external, (path, external)


async def test_a_missing_asset_is_a_problem(console):
    reply = await console.get("/console/static/js/nothing.js")
    assert reply.status_code == 404
    assert reply.headers["content-type"] == "application/problem+json"


async def test_the_console_is_not_in_the_openapi_document(console):
    paths = (await console.get("/openapi.json")).json()["paths"]
    assert not [path for path in paths if path.startswith("/console")]
    assert "/admin/v1/fleet" in paths and "/admin/v1/items" in paths

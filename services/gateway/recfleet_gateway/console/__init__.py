"""The operator console: a page at `/console` that draws the fleet's state from the admin
API in the browser. No data passes through here: the page and its assets (HTML, ES
modules, CSS in `static/`) are served without a key, and the page calls `/admin/v1/...`
and `/v1/...` itself with the key the operator enters. Not API: left out of the OpenAPI."""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from ..rest.static import MEDIA_TYPES, PackageFiles

PAGE = "/console"
ASSETS = "/console/static"
# Everything from this origin only: no inline script or style, no frames, no plugins. The
# page talks to the API on the same origin (connect-src), and draws charts as SVG nodes.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
    " object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def page() -> bytes:
    return files(__name__).joinpath("static", "index.html").read_bytes()


async def console_page(request: Request) -> Response:
    return Response(page(), media_type=MEDIA_TYPES[".html"], headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})


def mount(app: FastAPI) -> None:
    """Serve the console page at `/console` and its assets under `/console/static`."""
    app.add_route(PAGE, console_page, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_route(PAGE + "/", console_page, methods=["GET", "HEAD"], include_in_schema=False)
    # Browsers revalidate them (ETag), so that an upgraded gateway serves its own page.
    assets = PackageFiles([(__name__, "static")], {**SECURITY_HEADERS, "Cache-Control": "no-cache"})
    app.mount(ASSETS, assets, name="console-static")

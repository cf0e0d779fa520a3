"""The operator console: a page at `/console` that draws the fleet's state from the admin
API in the browser. No data passes through here: the page and its assets (HTML, ES
modules, CSS in `static/`) are served without a key, and the page calls `/admin/v1/...`
and `/v1/...` itself with the key the operator enters. Not API: left out of the OpenAPI."""

from __future__ import annotations

import os
from importlib.resources import files

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

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
# The types the browser must see (an ES module with another type is refused), whatever
# the host's mime.types says.
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


class ConsoleAssets(StaticFiles):
    """The console's files, with fixed content types and the console's security headers.
    Browsers revalidate them (ETag) so that an upgraded gateway serves its own page."""

    def file_response(
        self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        media_type = MEDIA_TYPES.get(os.path.splitext(str(full_path))[1])
        if media_type and response.status_code != 304:
            response.headers["Content-Type"] = media_type
        response.headers.update({**SECURITY_HEADERS, "Cache-Control": "no-cache"})
        return response


def page() -> bytes:
    return files(__name__).joinpath("static", "index.html").read_bytes()


async def console_page(request: Request) -> Response:
    return Response(page(), media_type=MEDIA_TYPES[".html"], headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})


def mount(app: FastAPI) -> None:
    """Serve the console page at `/console` and its assets under `/console/static`."""
    app.add_route(PAGE, console_page, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_route(PAGE + "/", console_page, methods=["GET", "HEAD"], include_in_schema=False)
    app.mount(ASSETS, ConsoleAssets(packages=[(__name__, "static")]), name="console-static")

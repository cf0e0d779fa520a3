"""`/docs` (Swagger UI) and `/redoc` with their JavaScript, CSS and icon served by the
gateway itself, under `/docs/static`, instead of from a public CDN (FastAPI's default),
so that both pages work in a cluster without Internet access.

The assets come from an installed package, `fastapi-offline` (its `static/` folder holds
Swagger UI's and ReDoc's bundles). They need no key and are cacheable: their URLs carry
the package's version, so an upgrade changes them. The package is a dependency of the
gateway image (pyproject's `gateway` extra).
"""

from __future__ import annotations

from importlib.metadata import version

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from .static import PackageFiles

ASSETS_PACKAGE = fastapi_offline.__name__
ASSETS_DISTRIBUTION = "fastapi-offline"
ASSETS = "/docs/static"
SWAGGER_JS, SWAGGER_CSS, REDOC_JS, FAVICON = (
    "swagger-ui-bundle.js",
    "swagger-ui.css",
    "redoc.standalone.js",
    "favicon.png",
)
CACHE_CONTROL = "public, max-age=604800"


def serve_docs(app: FastAPI) -> None:
    """Replace FastAPI's `/docs` and `/redoc` pages with ones whose assets this gateway
    serves under `/docs/static`, from the installed `fastapi-offline` package."""
    assets_at = version(ASSETS_DISTRIBUTION)
    pages = {app.docs_url, app.redoc_url} - {None}
    app.router.routes[:] = [
        route for route in app.router.routes if not (isinstance(route, Route) and route.path in pages)
    ]
    app.mount(
        ASSETS,
        PackageFiles(
            [(ASSETS_PACKAGE, "static")], {"Cache-Control": CACHE_CONTROL, "X-Content-Type-Options": "nosniff"}
        ),
        name="docs-static",
    )
    openapi_url = app.openapi_url or "/openapi.json"

    def asset(request: Request, name: str) -> str:
        return f"{request.scope.get('root_path', '')}{ASSETS}/{name}?v={assets_at}"

    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=request.scope.get("root_path", "") + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=asset(request, SWAGGER_JS),
            swagger_css_url=asset(request, SWAGGER_CSS),
            swagger_favicon_url=asset(request, FAVICON),
            oauth2_redirect_url=app.swagger_ui_oauth2_redirect_url,
            # No badge from the public validator service: the page makes no outside request.
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None},
        )

    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=request.scope.get("root_path", "") + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=asset(request, REDOC_JS),
            redoc_favicon_url=asset(request, FAVICON),
            with_google_fonts=False,
        )

    if app.docs_url:
        app.add_route(app.docs_url, swagger_ui, methods=["GET", "HEAD"], include_in_schema=False)
    if app.redoc_url:
        app.add_route(app.redoc_url, redoc, methods=["GET", "HEAD"], include_in_schema=False)

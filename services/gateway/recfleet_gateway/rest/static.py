"""Files the gateway serves from installed packages (the console's page and modules,
Swagger UI's bundles) with the content types browsers must see, whatever the host's
mime.types says (an ES module of another type is refused), and headers of their own."""

from __future__ import annotations

import os
from collections.abc import Mapping

from starlette.responses import Response
from starlette.staticfiles import PathLike, StaticFiles
from starlette.types import Scope

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


class PackageFiles(StaticFiles):
    """`StaticFiles` over `packages`, with fixed content types and `headers` on every answer."""

    def __init__(self, packages: list[str | tuple[str, str]], headers: Mapping[str, str]):
        super().__init__(packages=packages)
        self.headers = dict(headers)

    def file_response(
        self, full_path: PathLike, stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        media_type = MEDIA_TYPES.get(os.path.splitext(str(full_path))[1])
        if media_type and response.status_code != 304:
            response.headers["Content-Type"] = media_type
        response.headers.update(self.headers)
        return response

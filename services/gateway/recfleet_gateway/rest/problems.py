"""RFC 9457 problem details: the one error shape of the REST API."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from recfleet_runtime.context import request_id_var
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://recfleet.dev/problems/"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

_TYPES = {
    400: "invalid-request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    410: "gone",
    413: "body-too-large",
    415: "unsupported-media-type",
    429: "rate-limited",
    500: "internal",
    503: "unavailable",
}


class Problem(Exception):
    """An error answered as problem+json. `extra` adds extension members (e.g. `errors`)."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: str | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind or _TYPES.get(status, "error")
        self.title = title or _TITLES.get(status, "Error")
        self.headers = headers or {}
        self.extra = extra


def problem_body(status: int, detail: str, *, kind: str | None = None, title: str | None = None, **extra: Any) -> dict:
    body = {
        "type": TYPE_BASE + (kind or _TYPES.get(status, "error")),
        "title": title or _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "request_id": request_id_var.get(),
    }
    body.update(extra)
    return body


def problem_response(problem: Problem) -> Response:
    body = problem_body(problem.status, problem.detail, kind=problem.kind, title=problem.title, **problem.extra)
    return Response(
        orjson.dumps(body), status_code=problem.status, media_type=PROBLEM_MEDIA_TYPE, headers=problem.headers
    )


def _field_path(loc: tuple) -> str:
    """`("query", "limit")` -> `query.limit`; list indexes become `[i]`."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path


def validation_errors(errors: Sequence[Mapping[str, Any]]) -> list[dict]:
    out = []
    for error in errors:
        loc = tuple(error.get("loc", ()))
        # pydantic reports a failed union or a JSON-decode error with internal names; keep
        # the path a client can act on.
        out.append({"field": _field_path(loc), "message": error.get("msg", "invalid")})
    return out


# Starlette types every exception handler as taking `Exception`; each handler is
# registered for one class only (app.py).


async def handle_problem(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(exc)


async def handle_validation(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = validation_errors(list(exc.errors()))
    fields = ", ".join(e["field"] for e in errors) or "request"
    return problem_response(Problem(400, f"invalid request: {fields}", errors=errors))


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


async def handle_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else _TITLES.get(exc.status_code, "Error")
    headers = dict(exc.headers or {})
    if exc.status_code == 404 and detail == "Not Found":
        detail = "no such resource"
    if exc.status_code == 405:
        detail = "method not allowed on this resource"
        headers["Allow"] = ", ".join(allowed_methods(request))
    return problem_response(Problem(exc.status_code, detail, headers=headers))


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path. Starlette's own `Allow` names only
    those of the first route that matched the path, where a resource has one route per
    method. Each method is tried against the app's routes as a request would be."""
    return [
        method
        for method in METHODS
        if any(
            route.matches({**request.scope, "type": "http", "method": method})[0] is Match.FULL
            for route in request.app.router.routes
        )
    ]


async def handle_unexpected(_: Request, exc: Exception) -> Response:
    return problem_response(Problem(500, "internal error; quote the request id when reporting it"))

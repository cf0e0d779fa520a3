"""RFC 9457 problem details: the one error shape of the REST API."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute, iter_route_contexts
from recfleet_runtime.context import request_id_var
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, compile_path

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://recfleet.dev/problems/"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
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
    408: "request-timeout",
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
    method. A concrete path has the methods of its own routes (see `concrete_paths_first`);
    at any other, each method is tried against the app's routes as a request would be."""
    concrete = _app_concrete_methods(request.app).get(request.scope["path"])
    if concrete is not None:
        return [method for method in METHODS if method in concrete]
    return [
        method
        for method in METHODS
        if any(
            route.matches({**request.scope, "type": "http", "method": method})[0] is Match.FULL
            for route in request.app.router.routes
        )
    ]


def _route_methods(routes: Sequence[BaseRoute]) -> list[tuple[str, frozenset[str]]]:
    """(path, methods) of every API route (not the 405 routes of `concrete_paths_first`)."""
    return [
        (context.path, frozenset(getattr(context, "methods", None) or ()))
        for context in iter_route_contexts(routes)
        if isinstance(context.original_route, APIRoute) and context.path is not None
    ]


def _concrete_methods(routes: Sequence[BaseRoute]) -> dict[str, frozenset[str]]:
    """The methods of every concrete path (one without a `{parameter}`)."""
    methods: dict[str, frozenset[str]] = {}
    for path, route_methods in _route_methods(routes):
        if "{" not in path:
            methods[path] = methods.get(path, frozenset()) | route_methods
    return methods


_concrete_cache: dict[int, dict[str, frozenset[str]]] = {}


def _app_concrete_methods(app: Any) -> dict[str, frozenset[str]]:
    found = _concrete_cache.get(id(app))
    if found is None:
        found = _concrete_cache[id(app)] = _concrete_methods(app.routes)
    return found


async def method_not_allowed(_: Request) -> Response:
    raise StarletteHTTPException(405)


def concrete_paths_first(routes: Sequence[BaseRoute]) -> dict[str, list[str]]:
    """Where a templated route would serve a concrete path, the methods to answer with 405
    there: OpenAPI matches a concrete path before a templated one, so with a path
    `/admin/v1/api-keys/bootstrap` of its own, `DELETE /admin/v1/api-keys/bootstrap` is not
    `DELETE /admin/v1/api-keys/{key_id}`. Starlette would try the templated route; routes
    for these (`method_not_allowed`) go before it."""
    concrete = _concrete_methods(routes)
    shadowed: dict[str, set[str]] = {}
    for path, methods in _route_methods(routes):
        if "{" not in path:
            continue
        pattern = compile_path(path)[0]
        for concrete_path, concrete_methods in concrete.items():
            if pattern.match(concrete_path) and methods - concrete_methods:
                shadowed.setdefault(concrete_path, set()).update(methods - concrete_methods)
    return {path: sorted(methods) for path, methods in shadowed.items()}


async def handle_unexpected(_: Request, exc: Exception) -> Response:
    return problem_response(Problem(500, "internal error; quote the request id when reporting it"))

"""Dependencies every route shares, on the request path and in the control plane: the
gateway's services, authorization with rate limits, and the rejection of unknown query
parameters."""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from .gateway import Gateway
from .rest.auth import Principal, authenticate
from .rest.problems import Problem
from .rest.ratelimit import PendingHit
from .rest.schemas import ID_PATTERN, ProblemDetails

PROBLEM: dict[str, Any] = {"model": ProblemDetails, "content": {"application/problem+json": {}}}
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {400: PROBLEM, 401: PROBLEM, 403: PROBLEM, 429: PROBLEM, 500: PROBLEM}
_allowed_cache: dict[int, frozenset[str]] = {}


async def gateway(request: Request) -> Gateway:
    """The `Gateway` built at start-up (app.py's lifespan). A coroutine: FastAPI runs a plain
    function dependency in a worker thread, a hop every request would pay for."""
    services: Gateway = request.app.state.gateway
    return services


Services = Annotated[Gateway, Depends(gateway)]


def _query_names(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def allowed_query(route: APIRoute) -> frozenset[str]:
    found = _allowed_cache.get(id(route))
    if found is None:
        found = frozenset(_query_names(route.dependant))
        _allowed_cache[id(route)] = found
    return found


def reject_unknown_query(request: Request) -> None:
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    unknown = sorted(set(request.query_params.keys()) - allowed_query(route))
    if unknown:
        raise Problem(
            400,
            f"unknown query parameter(s): {', '.join(unknown)}",
            errors=[{"field": f"query.{name}", "message": "unknown query parameter"} for name in unknown],
        )


@dataclass(frozen=True)
class Caller:
    """An authorized caller whose rate-limit hit the route counts itself, in its first
    Redis call (`PendingHit.count_and_read`)."""

    principal: Principal
    hit: PendingHit


@functools.cache
def authorize(scope: str, user_from: str | None = None) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the key must hold `scope`; then per-key and (when `user_from` names a
    query or path parameter) per-user rate limits apply; then unknown query parameters
    are refused. One function per (scope, user_from), so that a router's dependency and
    a route's parameter asking for the same run once per request (FastAPI caches a
    dependency's answer for the request)."""
    pending = authorize_pending(scope, user_from)

    async def dependency(request: Request) -> Principal:
        caller = await pending(request)
        await caller.hit.count()
        return caller.principal

    return dependency


@functools.cache
def authorize_pending(scope: str, user_from: str | None = None) -> Callable[..., Awaitable[Caller]]:
    """`authorize`, with the rate-limit hit left for the route to count (`Caller.hit`);
    unknown query parameters are refused first."""

    async def dependency(request: Request) -> Caller:
        # The credentials are read from the headers here, not declared as `Header`
        # parameters (which the document leaves out anyway, the security schemes state
        # them): FastAPI's header parameters cost about 20 us a request, on every route.
        services: Gateway = request.app.state.gateway
        headers = request.headers
        principal = await authenticate(services.keys, headers.get("authorization"), headers.get("x-api-key"), scope)
        user_id = None
        if user_from:
            user_id = request.path_params.get(user_from) or request.query_params.get(user_from)
            if user_id is not None and not _valid_id(user_id):
                user_id = None
        reject_unknown_query(request)
        return Caller(principal, services.limiter.pending(principal.key_id, scope, user_id))

    return dependency


# The caller of an admin route, e.g. for its audit entry.
AdminKey = Annotated[Principal, Depends(authorize("admin"))]
_ID_RE = re.compile(ID_PATTERN)


def _valid_id(value: str) -> bool:
    return _ID_RE.match(value) is not None

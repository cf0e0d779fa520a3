"""What FastAPI's own layers cost a request shaped like `GET /v1/recommendations`, in
process (no network, no server): routing, parameter parsing and validation, dependency
solving and the response, with an endpoint that does nothing.

Usage:
    .venv/bin/python bench/fastapi_overhead.py [--requests 20000]

Each app is called as an ASGI application in a loop (warm-up first) and the mean time
per request printed for:

- a plain Starlette route (the floor of routing and a response);
- FastAPI, the same route with no parameters;
- FastAPI with the recommendation route's nine query parameters (the gateway's own
  annotated types: pattern, bounds, lists) and an async credentials dependency reading
  the `Authorization` / `X-API-Key` headers from the request, as `deps.authorize_pending`
  does;
- the same with the two headers declared as FastAPI `Header` parameters instead, as the
  dependency did before.

The difference between the last two is what declaring the headers cost every
authenticated request; the third row less the second is the query parameters'
share. Prints a table and writes `bench/results/fastapi_overhead.png`.
"""

# No `from __future__ import annotations`: FastAPI reads a route's annotations when the route
# is declared, and `recommendation_app`'s dependency is a local name it could not resolve
# from a string.

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import Response
from recfleet_gateway.serving.api.recommendations import (
    CURSOR_PATTERN,
    ExcludeValue,
    Fields,
    Label,
    Limit,
    UserId,
)
from starlette.applications import Starlette
from starlette.routing import Route

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PATH = "/v1/recommendations"
BODY = b'{"items":[]}'
Asgi = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def answer() -> Response:
    return Response(BODY, media_type="application/json")


async def from_request(request: Request) -> str | None:
    headers = request.headers
    return headers.get("authorization") or headers.get("x-api-key")


async def as_header_parameters(
    request: Request,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> str | None:
    return authorization or x_api_key


def recommendation_app(credentials: Callable[..., Awaitable[str | None]]) -> FastAPI:
    app = FastAPI()

    @app.get(PATH)
    async def recommendations(
        *,
        user_id: UserId,
        caller: Annotated[str | None, Depends(credentials)],
        limit: Limit = 20,
        surface: Annotated[str, Query(pattern=r"^[A-Za-z0-9_.:\-]{0,64}$")] = "",
        cursor: Annotated[str | None, Query(pattern=CURSOR_PATTERN, max_length=2048)] = None,
        explain: bool = False,
        exclude: Annotated[list[ExcludeValue] | None, Query(max_length=500)] = None,
        category: Label = "",
        fields: Fields = None,
    ) -> Response:
        return answer()

    return app


def apps() -> dict[str, Asgi]:
    bare = FastAPI()

    @bare.get(PATH)
    async def no_parameters() -> Response:
        return answer()

    async def starlette_endpoint(request: Request) -> Response:
        return answer()

    return {
        "Starlette route": Starlette(routes=[Route(PATH, starlette_endpoint)]),
        "FastAPI, no parameters": bare,
        "FastAPI, the route's parameters, credentials from the request": recommendation_app(from_request),
        "FastAPI, the route's parameters, credentials as Header parameters": recommendation_app(as_header_parameters),
    }


async def per_request(app: Asgi, requests: int) -> float:
    """Mean seconds per request of `GET /v1/recommendations?user_id=1&limit=10`."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"user_id=1&limit=10",
        "root_path": "",
        "headers": [(b"host", b"gateway"), (b"authorization", b"Bearer key")],
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 40000),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    for _ in range(min(1000, requests)):
        await app({**scope, "state": {}}, receive, send)
    started = time.perf_counter()
    for _ in range(requests):
        await app({**scope, "state": {}}, receive, send)
    elapsed = time.perf_counter() - started
    if set(statuses) != {200}:
        raise SystemExit(f"unexpected statuses {sorted(set(statuses))}")
    return elapsed / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3, help="runs per app; the median is reported")
    args = parser.parse_args()
    results: dict[str, float] = {}
    for name, app in apps().items():
        runs = sorted(asyncio.run(per_request(app, args.requests)) for _ in range(args.repeats))
        results[name] = runs[len(runs) // 2] * 1e6
    print(f"in-process cost of a request, median of {args.repeats} runs of {args.requests:,}:")
    for name, micros in results.items():
        print(f"  {name:<70} {micros:8.1f} us")
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 2.8))
    names = list(results)
    ax.barh(names[::-1], [results[n] for n in names[::-1]], color="#4c72b0")
    ax.set_xlabel("microseconds per request (in process)")
    ax.set_title("FastAPI's layers for a GET /v1/recommendations-shaped route", fontsize=10)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "fastapi_overhead.png", dpi=110)
    print("wrote bench/results/fastapi_overhead.png")


if __name__ == "__main__":
    main()

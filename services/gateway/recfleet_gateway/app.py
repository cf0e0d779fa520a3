"""The FastAPI application factory: wires the `Gateway` (gateway.py) to the routers of the
request path (serving/api) and the control plane (control/api), errors to problem+json,
and the observability layers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.telemetry import TelemetryConfig
from recfleet_runtime import tracing
from recfleet_runtime.heap import settle_heap
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import console
from .control.api import admin, audit, experiments, ops, traffic
from .gateway import Gateway
from .lifecycle import Drain
from .rest import docs_assets, problems
from .rest.middleware import GatewayMiddleware
from .rest.responses import JSONBody
from .serving.api import catalog, events, health, recommendations, users
from .settings import GatewaySettings

# In this order: the order of the OpenAPI document's paths.
ROUTERS = (recommendations, events, catalog, users, admin, audit, ops, traffic, experiments, health)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """OpenAPI with problem+json in place of FastAPI's 422 and the API-key schemes."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.get("responses", {})
            responses.pop("422", None)
            for status, response in responses.items():
                content = response.get("content", {})
                if status[0] in "45" and "application/json" in content:
                    content["application/problem+json"] = content.pop("application/json")
                headers = response.setdefault("headers", {})
                headers["X-Request-ID"] = {"description": "The request's id.", "schema": {"type": "string"}}
                if status in ("429", "503"):
                    headers["Retry-After"] = {"description": "Seconds to wait.", "schema": {"type": "integer"}}
            if path.startswith(("/v1/", "/admin/")):
                operation["security"] = [{"bearer": []}, {"apiKey": []}]
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update(
        {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
    )
    for name in ("HTTPValidationError", "ValidationError"):
        components.get("schemas", {}).pop(name, None)
    app.openapi_schema = schema
    return schema


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    tracing.configure_tracing("gateway")
    drain = Drain(settings.drain_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tracing.instrument_redis()
        app.state.gateway = await Gateway.open(settings)
        settle_heap()
        drain.install()
        try:
            yield
        finally:
            drain.cancel()
            await app.state.gateway.close()

    # FastAPI's own telemetry (spans, metrics and logs through the OpenTelemetry API) starts
    # a span per request whenever a tracer provider is installed, which ours always is:
    # when nothing exports spans it is pure cost (about 10% of the gateway's CPU).
    quiet = TelemetryConfig(tracing=False, metrics=False, logs=False)
    app = FastAPI(
        telemetry=None if tracing.exporting() else quiet,
        title="recfleet",
        version="1.0.0",
        description="Recommendations, events, catalog and administration of the recfleet fleet.",
        default_response_class=JSONBody,
        lifespan=lifespan,
    )
    app.add_exception_handler(problems.Problem, problems.handle_problem)
    app.add_exception_handler(RequestValidationError, problems.handle_validation)
    app.add_exception_handler(StarletteHTTPException, problems.handle_http)
    # Before the routers: a concrete path's 405 for the methods only a templated route has.
    shadowed = problems.concrete_paths_first([route for module in ROUTERS for route in module.router.routes])
    for path, methods in shadowed.items():
        app.router.add_route(path, problems.method_not_allowed, methods=methods, include_in_schema=False)
    for module in ROUTERS:
        app.include_router(module.router)
    console.mount(app)
    docs_assets.serve_docs(app)
    app.state.drain = drain
    app.add_middleware(
        GatewayMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_in_flight=settings.max_in_flight,
        max_in_flight_writes=settings.max_in_flight_writes,
        drain=drain,
        access_log_slow_ms=settings.access_log_slow_ms,
        body_timeout_seconds=settings.body_timeout_seconds,
        carry_trace_context=not tracing.exporting(),
    )
    if tracing.exporting():
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        # One server span per request; the per-message send/receive spans cost more than
        # they tell on the hot path.
        FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,metrics", exclude_spans=["receive", "send"])
    # Otherwise GatewayMiddleware carries the W3C trace context itself: OpenTelemetry's
    # ASGI layer was most of the gateway's tracing cost for spans nobody exported.
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app

"""The FastAPI application factory: wires settings, stores and downstream clients to
the routers, errors to problem+json, and the observability layers."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from psycopg_pool import AsyncConnectionPool
from recfleet_runtime import tracing
from recfleet_runtime.canary import Gates
from recfleet_runtime.heap import settle_heap
from recfleet_store.postgres import open_pool
from recfleet_store.traffic import TrafficStore
from redis.asyncio import Redis
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import problems
from .api import admin, catalog, events, experiments, health, ops, recommendations, traffic, users
from .api.admin import Registry
from .auth import ApiKeyStore
from .cache import CursorCodec, ResultCache
from .clients import Fleet
from .erasure import ErasureService
from .exposures import ExperimentBook, ExperimentStore, ExposureLog
from .jobs import JobRunner
from .lifecycle import Drain
from .middleware import GatewayMiddleware
from .pipeline import Recommender
from .ratelimit import RateLimiter, bounded_pool
from .responses import JSONBody
from .settings import GatewaySettings
from .traffic import TrafficController

# A Redis that stops answering must cost a request a fraction of its budget, not hang
# it: the cache and the limits fail open (see cache.py and ratelimit.py).
REDIS_WAIT_SECONDS = 0.25


@dataclass
class Gateway:
    """Everything the routes use, built once per process."""

    settings: GatewaySettings
    fleet: Fleet
    redis: Redis
    pool: AsyncConnectionPool
    keys: ApiKeyStore
    limiter: RateLimiter
    cache: ResultCache
    recommender: Recommender
    erasures: ErasureService
    jobs: JobRunner
    registry: Registry
    traffic: TrafficController
    experiments: ExperimentBook

    @classmethod
    async def open(cls, settings: GatewaySettings) -> Gateway:
        # Each pool serves at most two commands at once per request in flight.
        connections = 2 * (settings.max_in_flight or 64)
        redis = Redis.from_pool(bounded_pool(settings.redis_url, connections, REDIS_WAIT_SECONDS))
        pool = await open_pool(settings.postgres_dsn, min_size=1, max_size=8)
        fleet = Fleet(settings)
        cache = ResultCache(
            redis, settings.cache_ttl_seconds, max(settings.cursor_ttl_seconds, settings.cache_ttl_seconds)
        )
        limiter = RateLimiter(
            settings.redis_url,
            settings.rate_limit_per_key,
            settings.rate_limit_per_user,
            settings.rate_limits_per_scope,
            timeout_seconds=REDIS_WAIT_SECONDS,
            max_connections=connections,
        )
        default_gates = Gates(
            max_error_rate=settings.canary_max_error_rate,
            max_p99_seconds=settings.canary_max_p99_seconds,
            window_seconds=settings.canary_window_seconds,
            min_requests=settings.canary_min_requests,
        )
        traffic = TrafficController(
            fleet,
            TrafficStore(redis),
            pool,
            settings.routing_file,
            settings.canary_weights,
            gates={service: dataclasses.replace(default_gates, **overrides)
                   for service, overrides in settings.canary_gates.items()},
            default_gates=default_gates,
            refresh_seconds=settings.traffic_refresh_seconds,
            analysis_seconds=settings.canary_analysis_seconds,
        )
        await traffic.start()
        experiments = ExperimentBook(
            ExperimentStore(pool),
            ExposureLog(pool, settings.exposure_flush_seconds, settings.exposure_buffer_limit),
            settings.experiments_refresh_seconds,
        )
        await experiments.start()
        return cls(
            settings=settings,
            fleet=fleet,
            redis=redis,
            pool=pool,
            keys=ApiKeyStore(pool, settings.bootstrap_admin_key, settings.api_key_cache_seconds),
            limiter=limiter,
            cache=cache,
            recommender=Recommender(
                settings, fleet, cache, CursorCodec(settings.cursor_secret), traffic.shadow, experiments
            ),
            erasures=ErasureService(pool, fleet, cache, limiter, experiments.exposures),
            jobs=JobRunner(pool, settings.jobs_command or None, settings.job_output_limit_bytes),
            registry=Registry(settings.postgres_dsn, settings.redis_url),
            traffic=traffic,
            experiments=experiments,
        )

    async def close(self) -> None:
        await self.traffic.stop()
        await self.experiments.stop()
        await self.erasures.drain()
        await self.fleet.close()
        await self.pool.close()
        await self.redis.aclose()


def _openapi(app: FastAPI) -> dict:
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

    app = FastAPI(
        title="recfleet",
        version="1.0.0",
        description="Recommendations, events, catalog and administration of the recfleet fleet.",
        default_response_class=JSONBody,
        lifespan=lifespan,
    )
    app.add_exception_handler(problems.Problem, problems.handle_problem)
    app.add_exception_handler(RequestValidationError, problems.handle_validation)
    app.add_exception_handler(StarletteHTTPException, problems.handle_http)
    for module in (recommendations, events, catalog, users, admin, ops, traffic, experiments, health):
        app.include_router(module.router)
    app.state.drain = drain
    app.add_middleware(
        GatewayMiddleware, max_body_bytes=settings.max_body_bytes, max_in_flight=settings.max_in_flight, drain=drain
    )
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    # One server span per request; the per-message send/receive spans cost more than
    # they tell on the hot path.
    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,metrics", exclude_spans=["receive", "send"])
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app

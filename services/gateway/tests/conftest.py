"""Fixtures for the gateway tests: the scripted fleet on real gRPC servers, the gateway
app over real Redis and Postgres, and HTTP clients holding keys of each scope."""

from __future__ import annotations

import contextlib
import os
import sys

import httpx
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from gateway_scripted_fleet import ScriptedFleet
from recfleet_gateway.app import create_app
from recfleet_gateway.settings import GatewaySettings

ADMIN_KEY = "test-bootstrap-admin-key"


@pytest.fixture
async def fleet():
    scripted = ScriptedFleet()
    await scripted.start()
    yield scripted
    await scripted.stop()


@pytest.fixture
def gateway_settings(fleet, pg_dsn, redis_url):
    return GatewaySettings(
        **fleet.settings_overrides(),
        postgres_dsn=pg_dsn,
        redis_url=redis_url,
        bootstrap_admin_key=ADMIN_KEY,
        rate_limit_per_user="1000/minute",
        rate_limit_per_key="10000/second",
        # Generous budgets: the tests check behaviour, not latency, on a shared machine.
        feature_store_timeout=2.0,
        candidate_gen_timeout=2.0,
        ranking_timeout=2.0,
        request_timeout=10.0,
        readiness_cache_seconds=0.0,
        cursor_secret="test-cursor-secret",
        metrics_port=0,
        jobs_command=[sys.executable, "-c", "import sys; print('ran job', sys.argv[1])"],
    )


@contextlib.asynccontextmanager
async def running_app(settings: GatewaySettings):
    """The gateway app with its start-up and shutdown run around the block."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


def http_client(application, key: str | None = ADMIN_KEY) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://gateway", headers=headers)


@pytest.fixture
async def app(gateway_settings):
    async with running_app(gateway_settings) as application:
        yield application


@pytest.fixture
async def client(app):
    async with http_client(app) as http:
        yield http


@pytest.fixture
async def anonymous(app):
    async with http_client(app, None) as http:
        yield http

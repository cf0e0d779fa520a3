"""Fixtures for the gateway tests: the scripted fleet on real gRPC servers, the gateway
app over real Redis and Postgres, and HTTP clients holding keys of each scope."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from gateway_scripted_fleet import ScriptedFleet
from gateway_test_support import ADMIN_KEY, http_client, running_app
from recfleet_gateway.settings import GatewaySettings


@pytest.fixture
async def fleet():
    scripted = ScriptedFleet()
    await scripted.start()
    yield scripted
    await scripted.stop()


@pytest.fixture
async def canary_fleet():
    """A scripted fleet whose ranking has a canary track too."""
    scripted = ScriptedFleet(ranking_canary=True)
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


@pytest.fixture
async def served(app):
    """The gateway on a real port, for the CLI."""
    import uvicorn
    from recfleet_runtime.ports import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
        await asyncio.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task

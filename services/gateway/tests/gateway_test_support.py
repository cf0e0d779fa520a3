"""Helpers the gateway tests share: the app with its lifespan, HTTP clients holding a
key, and the problem+json assertion. (A module of its own: test modules import it by
this unique name.)"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys

import httpx
from prometheus_client import REGISTRY, generate_latest
from recfleet_gateway.app import create_app
from recfleet_gateway.settings import GatewaySettings

ADMIN_KEY = "test-bootstrap-admin-key"
PROBLEM_KEYS = {"type", "title", "status", "detail", "request_id"}


@contextlib.asynccontextmanager
async def running_app(settings: GatewaySettings):
    """The gateway app with its start-up and shutdown run around the block."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


def http_client(application, key: str | None = ADMIN_KEY) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://gateway", headers=headers)


def assert_problem(reply, status: int) -> dict:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/problem+json"
    body = reply.json()
    assert set(body) >= PROBLEM_KEYS
    assert body["status"] == status
    assert body["request_id"] == reply.headers["X-Request-ID"]
    return body


def metrics_text() -> str:
    """What this process's registry exposes: the app runs in the test's process, and the
    gateway serves metrics on a port of its own (not through the app)."""
    return generate_latest(REGISTRY).decode()


async def recfleetctl(url: str, *args: str) -> tuple[int, str]:
    """(exit code, output) of `recfleetctl --url URL --key <admin key> ARGS...`."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "recfleet_ctl",
        "--url",
        url,
        "--key",
        ADMIN_KEY,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "250"},
    )
    output, _ = await process.communicate()
    return process.returncode, output.decode()

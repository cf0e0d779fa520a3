"""`python -m recfleet_gateway`: the REST gateway on uvicorn (uvloop, httptools)."""

import os
import secrets

import uvicorn
from recfleet_runtime.logging import configure_logging

from .settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    configure_logging("gateway", settings.log_level, settings.track)
    if settings.workers > 1 and not settings.cursor_secret:
        # Workers of one process share the port: a cursor issued by one may come back to
        # another, so they must sign with the same secret (replicas need the chart's Secret).
        os.environ["RECFLEET_GATEWAY_CURSOR_SECRET"] = secrets.token_hex(32)
    # A factory string lets uvicorn start several workers, each building its own app.
    uvicorn.run(
        "recfleet_gateway.app:create_app",
        factory=True,
        workers=settings.workers,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=int(settings.grace_seconds),
    )


if __name__ == "__main__":
    main()

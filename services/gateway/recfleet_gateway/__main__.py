"""`python -m recfleet_gateway`: the REST gateway on uvicorn (uvloop, httptools).

Metrics are served on their own port (`RECFLEET_GATEWAY_METRICS_PORT`), which no route
exposes, by this process for all of its workers: every worker writes its samples to a
shared directory (Prometheus multiprocess mode), so each scrape sees the replica's
totals whichever worker would have answered it.
"""

import os
import shutil
import tempfile

# Before anything imports prometheus_client: its metric values are chosen at import. The
# workers inherit the directory through the environment.
OWN_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
METRICS_DIR = os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="recfleet-gateway-metrics-"))

import secrets

import uvicorn
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector
from recfleet_runtime.logging import configure_logging

from .rest.protocol import header_deadline_protocol
from .settings import GatewaySettings


def serve_metrics(port: int) -> None:
    """/metrics for every worker of this replica, from the shared directory (emptied
    first: a directory given from outside may hold a previous run's samples)."""
    for stale in os.listdir(METRICS_DIR):
        os.remove(os.path.join(METRICS_DIR, stale))
    if port:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        start_http_server(port, registry=registry)


def main() -> None:
    settings = GatewaySettings()
    configure_logging("gateway", settings.log_level, settings.track)
    if settings.workers > 1 and not settings.cursor_secret:
        # Workers of one process share the port: a cursor issued by one may come back to
        # another, so they must sign with the same secret (replicas need the chart's Secret).
        os.environ["RECFLEET_GATEWAY_CURSOR_SECRET"] = secrets.token_hex(32)
    serve_metrics(settings.metrics_port)
    try:
        # A factory string lets uvicorn start several workers, each building its own app.
        # On SIGTERM each worker drains first (see lifecycle.py), then uvicorn gives
        # in-flight requests `grace_seconds`. The HTTP protocol is uvicorn's httptools one
        # with a deadline on each request's headers (rest/protocol.py).
        uvicorn.run(
            "recfleet_gateway.app:create_app",
            factory=True,
            workers=settings.workers,
            host=settings.host,
            port=settings.port,
            loop="uvloop",
            http=header_deadline_protocol(settings.header_timeout_seconds),
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=int(settings.grace_seconds),
        )
    finally:
        if OWN_METRICS_DIR:
            shutil.rmtree(METRICS_DIR, ignore_errors=True)


if __name__ == "__main__":
    main()

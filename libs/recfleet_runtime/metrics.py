"""Prometheus metrics: the standard gRPC server/client families plus a helper for a
service's own `recfleet_<service>_*` metrics, served on a separate port together with the
process's liveness and readiness probes."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

# Every latency threshold an alert or SLO compares against is a bucket edge (5, 10, 25,
# 80, 150, 200 ms), so histogram_quantile does not interpolate across the threshold.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.08, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0)

GRPC_SERVER_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
GRPC_SERVER_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time to handle an RPC on the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
    buckets=LATENCY_BUCKETS,
)
GRPC_CLIENT_HANDLED = Counter(
    "grpc_client_handled_total",
    "RPCs completed by clients, by downstream, track and status code.",
    ["grpc_service", "grpc_method", "grpc_code", "downstream", "track"],
)
GRPC_CLIENT_SECONDS = Histogram(
    "grpc_client_handling_seconds",
    "Time from sending an RPC to its answer, by downstream and track.",
    ["grpc_service", "grpc_method", "downstream", "track"],
    buckets=LATENCY_BUCKETS,
)
BREAKER_STATE = Counter(
    "recfleet_circuit_breaker_transitions_total",
    "Circuit breaker state changes, by dependency and the state entered.",
    ["dependency", "state"],
)


class Heartbeat:
    """When a process's main loop last went round, and whether it has started its work.

    The loop calls `beat()` every iteration (also when a poll brought nothing) and while it
    waits on a dependency with retries; a loop that stops beating for `max_age_seconds`
    is stuck, and /healthz/live says so, so the kubelet restarts the pod. Creation counts
    as a beat: start-up gets the same allowance.
    """

    def __init__(self, max_age_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._last = clock()
        self._ready = False

    def beat(self) -> None:
        self._last = self._clock()

    def set_ready(self, ready: bool) -> None:
        """True once the loop does its work (a consumer polls), False when it stops."""
        self._ready = ready

    def age(self) -> float:
        return max(0.0, self._clock() - self._last)

    def alive(self) -> bool:
        return self.age() <= self.max_age_seconds

    def ready(self) -> bool:
        return self._ready and self.alive()


def _probe_app(heartbeat: Heartbeat | None, registry: CollectorRegistry) -> WSGIApplication:
    """/healthz/live and /healthz/ready from `heartbeat`; every other path is
    prometheus_client's own app, so /metrics is byte for byte what it serves."""
    metrics: WSGIApplication = make_wsgi_app(registry)

    def answer(start_response: StartResponse, ok: bool, body: dict[str, object]) -> list[bytes]:
        start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in ("/healthz/live", "/healthz/ready"):
            return metrics(environ, start_response)
        if heartbeat is None:
            return answer(start_response, True, {"status": "ok"})
        age = round(heartbeat.age(), 3)
        alive = heartbeat.alive()
        body = {"heartbeat_age_seconds": age, "liveness_seconds": heartbeat.max_age_seconds}
        if path == "/healthz/live":
            return answer(start_response, alive, {"status": "ok" if alive else "stalled", **body})
        ready = heartbeat.ready()
        status = "ok" if ready else ("stalled" if not alive else "starting")
        return answer(start_response, ready, {"status": status, **body})

    return app


class _QuietHandler(WSGIRequestHandler):
    """Probes and scrapes arrive every few seconds: no access log."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def start_probe_server(
    port: int,
    heartbeat: Heartbeat | None = None,
    addr: str = "0.0.0.0",
    registry: CollectorRegistry = REGISTRY,
) -> WSGIServer:
    """Serve /metrics, /healthz/live and /healthz/ready on `port` (0: any free port) from a
    daemon thread; returns the server (`server_port`, `shutdown()`).

    Without a heartbeat both probes answer 200 while the process serves HTTP at all.
    """

    class Server(ThreadingWSGIServer):
        address_family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

    server = make_server(addr, port, _probe_app(heartbeat, registry), Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


def start_metrics_server(port: int, heartbeat: Heartbeat | None = None) -> WSGIServer | None:
    """Serve /metrics and the probes on their own port (0 disables it, as in unit tests)."""
    if port:
        return start_probe_server(port, heartbeat)
    return None

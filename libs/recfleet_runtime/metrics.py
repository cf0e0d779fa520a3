"""Prometheus metrics: the standard gRPC server/client families plus a helper for a
service's own `recfleet_<service>_*` metrics, served on a separate port."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

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


def start_metrics_server(port: int) -> None:
    """Serve /metrics on its own port (0 disables it, as in unit tests)."""
    if port:
        start_http_server(port)

"""gRPC clients for downstream services.

Every call has a deadline: its own budget, capped by what is left of the caller's.
Retries on UNAVAILABLE are declared once, in the channel's service config, and only for
the idempotent reads named by the caller. Each dependency has its own circuit breaker.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import grpc

from . import tracing
from .context import REQUEST_ID_HEADER, remaining, request_id_var
from .metrics import GRPC_CLIENT_HANDLED, GRPC_CLIENT_SECONDS
from .resilience import CircuitBreaker

# Codes that say the dependency is unhealthy (they open the breaker); the others say the
# request was bad and leave the breaker alone.
BREAKER_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
)


# Callbacks told of every call's outcome: (downstream name, track, ok, seconds). The
# gateway's canary analysis listens here.
CallObserver = Callable[[str, str, bool, float], None]
_observers: list[CallObserver] = []


def add_call_observer(observer: CallObserver) -> None:
    _observers.append(observer)


def remove_call_observer(observer: CallObserver) -> None:
    if observer in _observers:
        _observers.remove(observer)


def service_config(service: str, idempotent_methods: Iterable[str], max_attempts: int = 3) -> str:
    """A gRPC service config that retries UNAVAILABLE for the idempotent methods only."""
    names = [{"service": service, "method": method} for method in idempotent_methods]
    if not names:
        return json.dumps({"methodConfig": []})
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": names,
                    "retryPolicy": {
                        "maxAttempts": max_attempts,
                        "initialBackoff": "0.01s",
                        "maxBackoff": "0.1s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


def open_channel(target: str, service: str, idempotent_methods: Iterable[str] = ()) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        target,
        options=[
            ("grpc.service_config", service_config(service, idempotent_methods)),
            ("grpc.enable_retries", 1),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ],
        interceptors=tracing.instrument_grpc_client_interceptors(),
    )


@dataclass
class Downstream:
    """One downstream endpoint (a service's stable or canary track, or one shard).

    `call` applies the deadline, the breaker, request-id metadata and client metrics.
    """

    name: str
    target: str
    stub_class: type
    service: str
    timeout: float = 0.5
    idempotent_methods: tuple[str, ...] = ()
    track: str = "stable"
    breaker: CircuitBreaker = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.channel = open_channel(self.target, self.service, self.idempotent_methods)
        self.stub = self.stub_class(self.channel)
        if self.breaker is None:
            self.breaker = CircuitBreaker(f"{self.name}:{self.track}")

    async def call(self, method: str, request, timeout: float | None = None):
        self.breaker.before_call()
        budget = remaining(timeout if timeout is not None else self.timeout)
        if budget <= 0:
            self._record(method, grpc.StatusCode.DEADLINE_EXCEEDED, 0.0)
            raise DeadlineSpentError(self.name)
        metadata = (
            ((REQUEST_ID_HEADER, request_id),) if (request_id := request_id_var.get()) else ()
        )
        started = time.perf_counter()
        try:
            response = await getattr(self.stub, method)(request, timeout=budget, metadata=metadata)
        except grpc.aio.AioRpcError as error:
            self._record(method, error.code(), time.perf_counter() - started)
            if error.code() in BREAKER_CODES:
                self.breaker.record_failure()
            else:
                self.breaker.record_success()
            raise
        self._record(method, grpc.StatusCode.OK, time.perf_counter() - started)
        self.breaker.record_success()
        return response

    def _record(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        GRPC_CLIENT_HANDLED.labels(self.service, method, code.name, self.name, self.track).inc()
        GRPC_CLIENT_SECONDS.labels(self.service, method, self.name, self.track).observe(seconds)
        ok = code not in BREAKER_CODES
        for observer in _observers:
            observer(self.name, self.track, ok, seconds)

    async def close(self) -> None:
        await self.channel.close()


class DeadlineSpentError(RuntimeError):
    """The caller's deadline left nothing for this call; it was not sent."""

    def __init__(self, dependency: str):
        super().__init__(f"no time left for {dependency}")
        self.dependency = dependency

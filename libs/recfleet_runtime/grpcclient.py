"""gRPC clients for downstream services.

`Downstream` is the transport to one endpoint: its channel, its generated stub and the
policy every call follows. A call names the stub's bound method (`client.stub.Retrieve`),
so the request and response types come from the generated `_pb2_grpc.pyi` stubs; services
wrap it in thin typed clients with one method per RPC.

Every call has a deadline: its own budget, capped by what is left of the caller's, and
carries the request id and the W3C trace context (OpenTelemetry's client interceptor
when spans are exported, else `tracing.outgoing_trace_context` added to the metadata).
Retries on UNAVAILABLE are declared once, in the channel's service config, and only for
the idempotent reads named by the caller. Each dependency has its own circuit breaker.
Every channel balances its calls round-robin over all the addresses its target resolves to.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import grpc
from prometheus_client import Counter, Histogram

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


# Every channel spreads its calls over all the addresses its target resolves to. A
# Kubernetes headless Service (clusterIP: None) resolves to one address per ready pod, so
# `dns:///ranking-headless:50051` (or `ranking-headless:50051`) reaches every replica; the
# default pick_first policy would send everything to the first one. Servers close
# connections after a maximum age (grpcserver), which makes the channel resolve the name
# again and take in pods added since.
LOAD_BALANCING: list[dict[str, dict[str, object]]] = [{"round_robin": {}}]
# Pings on every connection, busy or idle, so a pod that vanished without closing its
# connections (node lost, network cut) is dropped from the rotation within
# KEEPALIVE_SECONDS + KEEPALIVE_TIMEOUT_SECONDS. The servers permit this rate.
KEEPALIVE_SECONDS = 30.0
KEEPALIVE_TIMEOUT_SECONDS = 10.0
# gRPC resolves a name again at most this often (its own default is 30 s). A new pod gets
# calls within about this long plus the servers' connection age.
MIN_SECONDS_BETWEEN_RESOLUTIONS = 10.0


def service_config(service: str, idempotent_methods: Iterable[str], max_attempts: int = 3) -> str:
    """A gRPC service config: round_robin over every address of the target, and retries
    of UNAVAILABLE for the idempotent methods only."""
    names = [{"service": service, "method": method} for method in idempotent_methods]
    method_config = []
    if names:
        method_config.append(
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
        )
    return json.dumps({"loadBalancingConfig": LOAD_BALANCING, "methodConfig": method_config})


def open_channel(
    target: str,
    service: str,
    idempotent_methods: Iterable[str] = (),
    min_seconds_between_resolutions: float = MIN_SECONDS_BETWEEN_RESOLUTIONS,
) -> grpc.aio.Channel:
    """A channel to every address of `target` (`host:port` or `dns:///host:port`)."""
    return grpc.aio.insecure_channel(
        target,
        options=[
            ("grpc.service_config", service_config(service, idempotent_methods)),
            # The config above is the one in force: DNS TXT records cannot replace it.
            ("grpc.service_config_disable_resolution", 1),
            ("grpc.enable_retries", 1),
            ("grpc.dns_min_time_between_resolutions_ms", int(min_seconds_between_resolutions * 1000)),
            ("grpc.keepalive_time_ms", int(KEEPALIVE_SECONDS * 1000)),
            ("grpc.keepalive_timeout_ms", int(KEEPALIVE_TIMEOUT_SECONDS * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ],
        # Client spans only when they are exported; otherwise `Downstream.call` carries the
        # trace context itself.
        interceptors=tracing.instrument_grpc_client_interceptors() if tracing.exporting() else None,
    )


StubT = TypeVar("StubT")
RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
RequestT_contra = TypeVar("RequestT_contra", contravariant=True)
ResponseT_co = TypeVar("ResponseT_co", covariant=True)
Metadata = tuple[tuple[str, str], ...]


class UnaryRpc(Protocol[RequestT_contra, ResponseT_co]):
    """A unary method of a generated `grpc.aio` stub, bound to its channel (`stub.Rank`)."""

    def __call__(
        self, request: RequestT_contra, *, timeout: float | None = ..., metadata: Metadata = ...
    ) -> Awaitable[ResponseT_co]: ...


@dataclass
class Downstream(Generic[StubT]):
    """One downstream endpoint (a service's stable or canary track, or one shard).

    `stub` is the generated stub on the endpoint's channel; `call` sends one of its methods
    with the deadline, the breaker, request-id metadata and client metrics applied.
    """

    name: str
    target: str
    # The generated stub class (`features_pb2_grpc.FeatureStoreStub`); on a `grpc.aio`
    # channel it makes the async stub of the `.pyi` (`FeatureStoreAsyncStub`).
    stub_class: Callable[[grpc.aio.Channel], StubT]
    service: str
    timeout: float = 0.5
    idempotent_methods: tuple[str, ...] = ()
    track: str = "stable"
    breaker: CircuitBreaker = field(default=None)  # type: ignore[assignment]
    min_seconds_between_resolutions: float = MIN_SECONDS_BETWEEN_RESOLUTIONS

    def __post_init__(self) -> None:
        self.channel = open_channel(
            self.target, self.service, self.idempotent_methods, self.min_seconds_between_resolutions
        )
        self.stub: StubT = self.stub_class(self.channel)
        if self.breaker is None:
            self.breaker = CircuitBreaker(f"{self.name}:{self.track}")
        # Decided with the channel's interceptors: OpenTelemetry's propagate when present.
        self._carry_trace_context = not tracing.exporting()
        # The labelled metric children of each (method, code), looked up once: `.labels()`
        # builds and hashes the label tuple under a lock on every call.
        self._metrics: dict[tuple[str, grpc.StatusCode], tuple[Counter, Histogram]] = {}

    async def call(
        self,
        rpc: UnaryRpc[RequestT, ResponseT],
        request: RequestT,
        *,
        method: str,
        timeout: float | None = None,
        observed: bool = True,
    ) -> ResponseT:
        """`rpc(request)` within the budget (`timeout`, else the endpoint's, capped by what
        is left of the caller's deadline). `method` is the RPC's name in the metrics
        (`grpc_method`) and in nothing else: `client.call(client.stub.Rank, request,
        method="Rank")`. A batched call passes `observed=False` and reports its entries
        with `record_entries`, so that call observers count requests, not batches."""
        self.breaker.before_call()
        budget = remaining(timeout if timeout is not None else self.timeout)
        if budget <= 0:
            self._record(method, grpc.StatusCode.DEADLINE_EXCEEDED, 0.0, observed)
            raise DeadlineSpentError(self.name)
        metadata: Metadata = ((REQUEST_ID_HEADER, request_id),) if (request_id := request_id_var.get()) else ()
        if self._carry_trace_context:
            metadata += tracing.outgoing_trace_context()
        started = time.perf_counter()
        try:
            response = await rpc(request, timeout=budget, metadata=metadata)
        except grpc.aio.AioRpcError as error:
            self._record(method, error.code(), time.perf_counter() - started, observed)
            if error.code() in BREAKER_CODES:
                self.breaker.record_failure()
            else:
                self.breaker.record_success()
            raise
        self._record(method, grpc.StatusCode.OK, time.perf_counter() - started, observed)
        self.breaker.record_success()
        return response

    def record_entries(
        self, method: str, codes: Iterable[grpc.StatusCode], seconds: float, count_failures: bool = True
    ) -> None:
        """The entries of a batched call, each as the unary `method` would have been
        recorded: metrics, call observers (canary analysis counts requests) and, unless
        the batch's own failure was already counted (`count_failures=False`), a breaker
        failure for each entry that failed the way an unhealthy dependency does."""
        for code in codes:
            self._record(method, code, seconds)
            if count_failures and code in BREAKER_CODES:
                self.breaker.record_failure()

    def _record(self, method: str, code: grpc.StatusCode, seconds: float, observed: bool = True) -> None:
        children = self._metrics.get((method, code))
        if children is None:
            children = self._metrics[(method, code)] = (
                GRPC_CLIENT_HANDLED.labels(self.service, method, code.name, self.name, self.track),
                GRPC_CLIENT_SECONDS.labels(self.service, method, self.name, self.track),
            )
        handled, latency = children
        handled.inc()
        latency.observe(seconds)
        if not observed:
            return
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

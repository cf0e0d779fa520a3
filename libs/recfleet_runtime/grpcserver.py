"""The grpc.aio server bootstrap every service uses.

- standard health service, NOT_SERVING until the service says it is ready;
- server reflection;
- an interceptor that records grpc_server_* metrics, binds the caller's request id to the
  logs, turns the caller's deadline into `context.deadline_var` for downstream calls and
  writes the access log line of the calls worth one (sampled, failed or slow);
- OpenTelemetry server spans when spans are exported; otherwise only the caller's W3C
  trace context is carried (`tracing.enter_hop`), so log lines keep their trace id;
- runs on uvloop (`run_service`);
- a maximum connection age, so clients re-resolve and spread calls over new pods;
- graceful shutdown on SIGTERM/SIGINT: health NOT_SERVING, drain, then stop(grace).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, cast

import grpc
import structlog
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter

from . import tracing
from .context import REQUEST_ID_HEADER, deadline_var, request_id_var
from .heap import settle_heap
from .metrics import GRPC_SERVER_HANDLED, GRPC_SERVER_SECONDS, start_metrics_server
from .settings import ServiceSettings

log = structlog.get_logger("recfleet.grpc")
OVERALL = ""
HEALTH_SERVICE = "grpc.health.v1.Health"


def _split_method(full_method: str) -> tuple[str, str]:
    _, service, method = full_method.split("/", 2)
    return service, method


if TYPE_CHECKING:
    # A unary-unary behaviour as grpc.aio runs it: a coroutine function of the aio context
    # (types-grpcio types `RpcMethodHandler.unary_unary` for the synchronous server only).
    AioBehaviour = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


# Calls that take at least this long write their access line even when their trace is
# not sampled (`ServiceSettings.access_log_slow_ms`).
ACCESS_LOG_SLOW_MS = 100.0


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):
    """Metrics, request id, deadline and (with `carry_trace_context`) W3C trace context
    for unary-unary RPCs, and the access log.

    One access line per call at debug level; at info only for the calls someone will look
    for: those whose trace is sampled (so a sampled request can be followed through every
    service's log), those that failed and those that took `slow_ms` or more. Writing a
    JSON line for every call cost 3-5% of each server's CPU. Health checks stay at debug.

    `carry_trace_context` is for processes that do not run OpenTelemetry's server
    interceptor (spans are not exported): this one then makes the caller's trace context
    current (`tracing.enter_hop`), for the log lines and the calls this one makes.

    The observed handler of each method is built once and reused: the per-call values
    (request id, deadline, trace context) come from the call's context.

    An exception of one of the `unavailable` types (a store the service cannot reach)
    ends the call with UNAVAILABLE, which callers retry elsewhere or degrade on, rather
    than UNKNOWN with the exception's text."""

    def __init__(
        self,
        carry_trace_context: bool = False,
        slow_ms: float = ACCESS_LOG_SLOW_MS,
        unavailable: tuple[type[BaseException], ...] = (),
    ) -> None:
        self._observed: dict[str, tuple[object, grpc.RpcMethodHandler[Any, Any]]] = {}
        self._carry_trace_context = carry_trace_context
        self._slow_seconds = slow_ms / 1000
        self._unavailable = unavailable

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        full_method = handler_call_details.method
        known = self._observed.get(full_method)
        if known is not None and known[0] is handler.unary_unary:
            return known[1]
        observed = _observed_handler(
            full_method, handler, self._carry_trace_context, self._slow_seconds, self._unavailable
        )
        self._observed[full_method] = (handler.unary_unary, observed)
        return observed


# The metadata this interceptor reads; only `-bin` keys carry bytes, these are text.
_TRACE_HEADERS = frozenset({tracing.TRACEPARENT, tracing.TRACESTATE})


def _read_metadata(context: grpc.aio.ServicerContext[Any, Any]) -> tuple[str | None, dict[str, str]]:
    """The caller's request id and W3C trace headers, in one pass over the metadata."""
    request_id: str | None = None
    trace_headers: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str):
            request_id = value
        elif key in _TRACE_HEADERS and isinstance(value, str):
            trace_headers[key] = value
    return request_id, trace_headers


def _observed_handler(
    full_method: str,
    handler: grpc.RpcMethodHandler[Any, Any],
    carry_trace_context: bool,
    slow_seconds: float,
    unavailable: tuple[type[BaseException], ...] = (),
) -> grpc.RpcMethodHandler[Any, Any]:
    service, method = _split_method(full_method)
    # Called for unary-unary handlers only (intercept_service checks), which grpc.aio runs
    # as coroutine functions of the aio context.
    behaviour = cast("AioBehaviour", handler.unary_unary)
    handled: dict[grpc.StatusCode, Counter] = {}
    seconds = GRPC_SERVER_SECONDS.labels("unary", service, method)
    # Health probes arrive every second from every balancer: their lines stay at debug.
    health_check = service == HEALTH_SERVICE
    noted, quiet = (log.debug, log.debug) if health_check else (log.info, log.debug)

    async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started = time.perf_counter()
        remaining = context.time_remaining()
        deadline_token = deadline_var.set(time.monotonic() + remaining if remaining is not None else None)
        request_id, trace_headers = _read_metadata(context)
        request_token = request_id_var.set(request_id)
        trace_token = tracing.enter_hop(trace_headers) if carry_trace_context else None
        code = grpc.StatusCode.OK
        try:
            return await behaviour(request, context)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except unavailable as error:
            code = grpc.StatusCode.UNAVAILABLE
            log.warning("rpc failed: a store is unavailable", grpc_method=method, error=repr(error))
            await context.abort(code, f"a store this service needs is unavailable ({type(error).__name__}); retry")
        except Exception:
            code = grpc.StatusCode.UNKNOWN
            log.exception("rpc failed", grpc_method=method)
            raise
        finally:
            if code is grpc.StatusCode.OK and context.code() not in (None, grpc.StatusCode.OK):
                code = context.code()
            elapsed = time.perf_counter() - started
            counter = handled.get(code)
            if counter is None:
                counter = handled[code] = GRPC_SERVER_HANDLED.labels("unary", service, method, code.name)
            counter.inc()
            seconds.observe(elapsed)
            # The line carries the trace and request ids (the logging processors add them).
            worth_a_line = code is not grpc.StatusCode.OK or elapsed >= slow_seconds or tracing.current_trace_sampled()
            access = noted if worth_a_line else quiet
            access("rpc", grpc_method=method, grpc_code=code.name, ms=round(elapsed * 1000, 3))
            if trace_token is not None:
                tracing.leave_hop(trace_token)
            deadline_var.reset(deadline_token)
            request_id_var.reset(request_token)

    return grpc.unary_unary_rpc_method_handler(
        observed,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class Health:
    """The service's view of its health: every registered service name moves together."""

    def __init__(self, servicer: health.aio.HealthServicer, service_names: Iterable[str]):
        self._servicer = servicer
        self._names = [OVERALL, *service_names]
        self.serving = False

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        self.serving = serving
        for name in self._names:
            await self._servicer.set(name, status)


# Clients ping every KEEPALIVE_SECONDS (grpcclient), with or without calls in flight, to
# notice a pod that vanished without closing its connections. The server must accept that:
# by default it allows one ping per 5 minutes (2 hours on an idle connection) and answers
# a client pinging faster with GOAWAY too_many_pings. It accepts one per this many ms.
MIN_PING_INTERVAL_MS = 10_000


def server_options(settings: ServiceSettings) -> list[tuple[str, int]]:
    """Channel args of every service's server.

    Connections are closed after `max_connection_age_seconds` (gRPC adds +/-10% jitter, so
    clients do not all reconnect at once) and calls in flight get the grace period: each
    client then re-resolves the service's name, and pods added since get their share.
    """
    return [
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)),
        ("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace_seconds * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
    ]


class GrpcService:
    """Builds, runs and gracefully stops one grpc.aio server."""

    def __init__(
        self,
        name: str,
        settings: ServiceSettings,
        service_names: Iterable[str],
        unavailable: tuple[type[BaseException], ...] = (),
    ):
        """`unavailable`: exception types that mean a store cannot be reached (answered
        UNAVAILABLE; see ObservabilityInterceptor)."""
        self.name = name
        self.settings = settings
        self.service_names = list(service_names)
        slow_ms = settings.access_log_slow_ms
        interceptors: list[grpc.aio.ServerInterceptor]
        if tracing.exporting():
            interceptors = [
                tracing.instrument_grpc_server(),
                ObservabilityInterceptor(slow_ms=slow_ms, unavailable=unavailable),
            ]
        else:
            # No span would leave the process: carry the trace context without recording.
            interceptors = [
                ObservabilityInterceptor(carry_trace_context=True, slow_ms=slow_ms, unavailable=unavailable)
            ]
        self.server = grpc.aio.server(interceptors=interceptors, options=server_options(settings))
        self._health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health_servicer, self.server)
        reflection.enable_server_reflection(
            [*self.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self.server,
        )
        self.health = Health(self._health_servicer, self.service_names)
        self.port: int | None = None
        self._stopping = asyncio.Event()

    async def start(self, address: str | None = None) -> int:
        address = address or f"[::]:{self.settings.grpc_port}"
        self.port = self.server.add_insecure_port(address)
        await self.health.set_serving(False)
        await self.server.start()
        log.info("grpc server started", port=self.port, services=self.service_names)
        return self.port

    async def stop(self) -> None:
        """Health to NOT_SERVING, wait for balancers to notice, then drain in-flight calls."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        await self.health.set_serving(False)
        log.info("draining", drain_seconds=self.settings.drain_seconds, grace_seconds=self.settings.grace_seconds)
        await asyncio.sleep(self.settings.drain_seconds)
        await self.server.stop(self.settings.grace_seconds)
        log.info("grpc server stopped")

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


async def serve(
    service: GrpcService,
    warm_up: Callable[[], Awaitable[bool]],
    background: Iterable[Callable[[], Coroutine[Any, Any, None]]] = (),
    close: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run a service until SIGTERM/SIGINT.

    `warm_up` loads indexes, models and connections; health turns SERVING only when it
    returns True. `background` coroutines (pollers, consumers) run alongside the server.
    """
    start_metrics_server(service.settings.metrics_port)
    await service.start()
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    tasks = [asyncio.create_task(job()) for job in background]
    try:
        if await warm_up():
            # What warm-up loaded (index, model, clients) lives as long as the process.
            settle_heap()
            await service.health.set_serving(True)
            log.info("serving", service=service.name)
        else:
            log.error("warm-up failed; staying NOT_SERVING", service=service.name)
        await stop_requested.wait()
    finally:
        await service.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if close is not None:
            await close()


def run_service(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Entrypoint helper: run `main` on a fresh uvloop event loop (grpc.aio serves on it,
    and it costs less CPU per call than the standard library's)."""
    uvloop.run(main())

"""OpenTelemetry tracing. A tracer provider is always installed so every log line has a
trace id; spans are exported only when the standard OTEL_* variables ask for it.

Two modes, chosen once per process by `configure_tracing`:

- an exporter is configured (`exporting()`): full instrumentation, OpenTelemetry's gRPC
  server and client interceptors and its FastAPI middleware record spans and propagate
  the W3C trace context;
- no exporter (the default deployment): no span would ever leave the process, so the
  instrumentation is skipped and each hop only carries the trace context along
  (`enter_hop` / `leave_hop` on the way in, `outgoing_trace_context` on the way out). Log
  lines keep their `trace_id` and `span_id`, and a sampled `traceparent` stays sampled
  on every hop, at a fraction of the instrumentation's CPU.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    import contextvars

    import grpc

# The W3C trace context headers (gRPC metadata keys are lower case).
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

_configured = False
_exporting = False


def configure_tracing(service: str) -> None:
    global _configured, _exporting
    if _configured:
        return
    _configured = True
    exporter = os.environ.get(
        "OTEL_TRACES_EXPORTER", "otlp" if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") else "none"
    )
    _exporting = exporter in ("otlp", "console")
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)})
    if exporter == "none" and "OTEL_TRACES_SAMPLER" not in os.environ:
        # Nothing would export the spans: record none. Unsampled spans still carry trace
        # and span ids, so log lines keep their trace id and traceparent still propagates.
        provider = TracerProvider(resource=resource, sampler=ParentBased(ALWAYS_OFF))
    else:
        # OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG choose the sampler (the chart
        # sets a parent-based ratio).
        provider = TracerProvider(resource=resource)
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)


def instrument_grpc_server() -> grpc.aio.ServerInterceptor:
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor()
    return interceptor


def instrument_grpc_client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    interceptors: list[grpc.aio.ClientInterceptor] = aio_client_interceptors()
    return interceptors


def exporting() -> bool:
    """Whether spans leave the process (an exporter is configured)."""
    return _exporting


# Redis and Postgres client spans carry no context to another process: when nothing
# exports spans their instrumentation is pure cost on every command, so it is skipped.


def instrument_redis() -> None:
    if not _exporting:
        return
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    instrumentor = RedisInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


def instrument_psycopg() -> None:
    if not _exporting:
        return
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    instrumentor = PsycopgInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(enable_commenter=False)


# Trace context without instrumentation (used when `exporting()` is False).

_PROPAGATOR = TraceContextTextMapPropagator()
_IDS = RandomIdGenerator()
_UNSAMPLED = TraceFlags(TraceFlags.DEFAULT)


def enter_hop(carrier: Mapping[str, str]) -> contextvars.Token[otel_context.Context]:
    """Make this hop's trace context current, from the caller's W3C headers in `carrier`
    (`traceparent`, `tracestate`; lower-case keys).

    The hop keeps the caller's trace id and sampled flag and gets a span id of its own,
    as the server span of the full instrumentation would, but records nothing. Without a
    valid `traceparent` a fresh random trace starts, unsampled (what the parent-based
    always-off sampler decides for a root). Pair with `leave_hop(token)`."""
    parent = trace.get_current_span(_PROPAGATOR.extract(carrier)).get_span_context()
    if parent.is_valid:
        trace_id, flags, state = parent.trace_id, parent.trace_flags, parent.trace_state
    else:
        trace_id, flags, state = _IDS.generate_trace_id(), _UNSAMPLED, None
    span = NonRecordingSpan(SpanContext(trace_id, _IDS.generate_span_id(), False, flags, state))
    return otel_context.attach(trace.set_span_in_context(span))


def leave_hop(token: contextvars.Token[otel_context.Context]) -> None:
    otel_context.detach(token)


def outgoing_trace_context() -> tuple[tuple[str, str], ...]:
    """The current trace context as W3C headers for the next hop (empty when none)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return tuple(carrier.items())


def current_trace_sampled() -> bool:
    """Whether the current call's trace is sampled (`traceparent` flags 01)."""
    return trace.get_current_span().get_span_context().trace_flags.sampled

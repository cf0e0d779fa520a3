"""OpenTelemetry tracing. A tracer provider is always installed so every log line has a
trace id; spans are exported only when the standard OTEL_* variables ask for it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

if TYPE_CHECKING:
    import grpc

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

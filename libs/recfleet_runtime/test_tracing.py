"""Trace context and access logs across real grpc.aio servers.

Without an exporter (the default, and these tests' process) the servers and clients carry
the W3C trace context themselves; with one, OpenTelemetry's interceptors record spans.
The tracer provider is process-global, so the exporter cases run in a fresh interpreter.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap

import grpc
import pytest
import structlog
from recfleet.ranking.v1 import ranking_pb2, ranking_pb2_grpc

from recfleet_runtime.grpcclient import Downstream
from recfleet_runtime.grpcserver import GrpcService
from recfleet_runtime.logging import configure_logging
from recfleet_runtime.settings import ServiceSettings

SERVICE = "recfleet.ranking.v1.RankingService"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"


def traceparent(flags: str, trace_id: str = TRACE_ID) -> str:
    return f"00-{trace_id}-{CALLER_SPAN_ID}-{flags}"


class Hop(ranking_pb2_grpc.RankingServiceServicer):
    """Records the metadata of each call. Rank calls `downstream` (when given), sleeps
    `delay`, then answers; GetModelStatus answers at once, or fails with `failing`."""

    def __init__(self, downstream: Downstream | None = None, delay: float = 0.0):
        self.downstream = downstream
        self.delay = delay
        self.failing: grpc.StatusCode | None = None
        self.metadata: list[dict[str, str]] = []

    async def GetModelStatus(self, request, context):
        self.metadata.append(dict(context.invocation_metadata()))
        if self.failing is not None:
            await context.abort(self.failing, "scripted failure")
        return ranking_pb2.ModelStatus(ranker_version="v1", model_loaded=True)

    async def Rank(self, request, context):
        self.metadata.append(dict(context.invocation_metadata()))
        if self.downstream is not None:
            stub = self.downstream.stub
            await self.downstream.call(
                stub.GetModelStatus, ranking_pb2.GetModelStatusRequest(), method="GetModelStatus"
            )
        await asyncio.sleep(self.delay)
        return ranking_pb2.RankResponse(served_by="rules")


async def start(servicer: Hop) -> GrpcService:
    service = GrpcService("test", ServiceSettings(metrics_port=0, drain_seconds=0), [SERVICE])
    ranking_pb2_grpc.add_RankingServiceServicer_to_server(servicer, service.server)
    await service.start("127.0.0.1:0")
    return service


def downstream(port: int) -> Downstream:
    return Downstream(
        name="ranking", target=f"127.0.0.1:{port}", stub_class=ranking_pb2_grpc.RankingServiceStub, service=SERVICE
    )


@pytest.fixture
def json_logs(capsys):
    """Call it first to log as the services do (JSON, default level INFO); it returns a
    function that reads the lines written since its last call."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level

    def configure():
        # Here rather than in the fixture: the output is captured from the test's body.
        configure_logging("test")
        return lambda: [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]

    yield configure
    structlog.reset_defaults()
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


def access_lines(lines: list[dict], method: str) -> list[dict]:
    return [line for line in lines if line.get("event") == "rpc" and line.get("grpc_method") == method]


async def call(port: int, rpc: str, metadata: tuple[tuple[str, str], ...] = ()) -> grpc.StatusCode:
    """One call with a plain client (no recfleet plumbing), as another team's would be."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = ranking_pb2_grpc.RankingServiceStub(channel)
        request = ranking_pb2.RankRequest() if rpc == "Rank" else ranking_pb2.GetModelStatusRequest()
        try:
            await getattr(stub, rpc)(request, metadata=metadata, timeout=5)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK


async def test_the_callers_trace_reaches_the_log_and_the_next_hop(json_logs):
    log_lines = json_logs()
    leaf = Hop()
    leaf_server = await start(leaf)
    middle_server = await start(Hop(downstream=downstream(leaf_server.port)))
    sent = traceparent("01")
    assert (
        await call(middle_server.port, "Rank", (("traceparent", sent), ("x-request-id", "req-7"))) is grpc.StatusCode.OK
    )
    await asyncio.gather(leaf_server.stop(), middle_server.stop())

    [middle_line] = access_lines(log_lines(), "Rank")
    assert middle_line["trace_id"] == TRACE_ID and middle_line["request_id"] == "req-7"
    # The middle hop has a span id of its own, and it is the parent the leaf is told of.
    assert middle_line["span_id"] != CALLER_SPAN_ID
    version, trace_id, parent_id, flags = leaf.metadata[-1]["traceparent"].split("-")
    assert (version, trace_id, parent_id, flags) == ("00", TRACE_ID, middle_line["span_id"], "01")
    assert leaf.metadata[-1]["x-request-id"] == "req-7"


async def test_a_call_without_trace_context_starts_a_trace_of_its_own():
    leaf = Hop()
    leaf_server = await start(leaf)
    middle_server = await start(Hop(downstream=downstream(leaf_server.port)))
    await call(middle_server.port, "Rank")
    await call(middle_server.port, "Rank")
    await asyncio.gather(leaf_server.stop(), middle_server.stop())

    first, second = (metadata["traceparent"].split("-") for metadata in leaf.metadata)
    assert first[1] != second[1] and int(first[1], 16) != 0
    assert first[3] == second[3] == "00"  # a fresh trace is not sampled


async def test_only_sampled_failed_or_slow_calls_write_an_access_line(json_logs):
    log_lines = json_logs()
    servicer = Hop(delay=0.15)
    server = await start(servicer)
    for flags in ("00", None):  # unsampled, and no trace context at all
        metadata = (("traceparent", traceparent(flags)),) if flags else ()
        assert await call(server.port, "GetModelStatus", metadata) is grpc.StatusCode.OK
    assert access_lines(log_lines(), "GetModelStatus") == []

    await call(server.port, "GetModelStatus", (("traceparent", traceparent("01")),))
    [sampled] = access_lines(log_lines(), "GetModelStatus")
    assert sampled["trace_id"] == TRACE_ID and sampled["grpc_code"] == "OK" and sampled["level"] == "info"

    servicer.failing = grpc.StatusCode.INVALID_ARGUMENT
    await call(server.port, "GetModelStatus", (("traceparent", traceparent("00")),))
    [failed] = access_lines(log_lines(), "GetModelStatus")
    assert failed["trace_id"] == TRACE_ID and failed["grpc_code"] == "INVALID_ARGUMENT"

    # Rank sleeps 150 ms: past the 100 ms of `access_log_slow_ms`.
    await call(server.port, "Rank", (("traceparent", traceparent("00")),))
    [slow] = access_lines(log_lines(), "Rank")
    assert slow["trace_id"] == TRACE_ID and slow["grpc_code"] == "OK" and slow["ms"] >= 100
    await server.stop()


PROBE = """
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from recfleet_runtime import tracing
tracing.configure_tracing("probe")
tracing.instrument_redis()
tracing.instrument_psycopg()
print(tracing.exporting(), RedisInstrumentor().is_instrumented_by_opentelemetry,
      PsycopgInstrumentor().is_instrumented_by_opentelemetry)
"""


def run_probe(probe: str, exporter: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if exporter:
        env["OTEL_TRACES_EXPORTER"] = exporter
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize(
    ("exporter", "expected"),
    [(None, "False False False"), ("none", "False False False"), ("console", "True True True")],
)
def test_store_clients_are_instrumented_only_when_spans_are_exported(exporter, expected):
    assert run_probe(PROBE, exporter).split("\n")[-2] == expected


# One call through a GrpcService and a Downstream; the console exporter prints each span.
GRPC_PROBE = textwrap.dedent(
    """
    import asyncio, sys
    import structlog
    from opentelemetry import trace
    from recfleet.ranking.v1 import ranking_pb2, ranking_pb2_grpc
    from recfleet_runtime import tracing
    from recfleet_runtime.grpcclient import Downstream
    from recfleet_runtime.grpcserver import GrpcService
    from recfleet_runtime.settings import ServiceSettings

    class Ranking(ranking_pb2_grpc.RankingServiceServicer):
        async def GetModelStatus(self, request, context):
            return ranking_pb2.ModelStatus(model_loaded=True)

    async def main():
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout: the spans
        tracing.configure_tracing("probe")
        service = GrpcService("probe", ServiceSettings(metrics_port=0, drain_seconds=0), [{service!r}])
        ranking_pb2_grpc.add_RankingServiceServicer_to_server(Ranking(), service.server)
        port = await service.start("127.0.0.1:0")
        client = Downstream("ranking", f"127.0.0.1:{{port}}", ranking_pb2_grpc.RankingServiceStub, {service!r})
        await client.call(client.stub.GetModelStatus, ranking_pb2.GetModelStatusRequest(), method="GetModelStatus")
        await client.close()
        await service.stop()
        trace.get_tracer_provider().force_flush()

    asyncio.run(main())
    """
).format(service=SERVICE)


def test_with_an_exporter_grpc_calls_are_traced_by_opentelemetry():
    out = run_probe(GRPC_PROBE, "console")
    spans = json.loads("[" + out.replace("}\n{", "},\n{") + "]")
    kinds = {span["kind"] for span in spans if span["name"] == f"/{SERVICE}/GetModelStatus"}
    assert kinds == {"SpanKind.CLIENT", "SpanKind.SERVER"}
    [server] = [span for span in spans if span["kind"] == "SpanKind.SERVER"]
    [client] = [span for span in spans if span["kind"] == "SpanKind.CLIENT"]
    assert server["context"]["trace_id"] == client["context"]["trace_id"]
    assert server["parent_id"] == client["context"]["span_id"]

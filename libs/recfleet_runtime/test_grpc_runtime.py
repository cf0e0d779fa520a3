"""The gRPC plumbing every service shares, exercised over real grpc.aio servers."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from recfleet.ranking.v1 import ranking_pb2, ranking_pb2_grpc

from recfleet_runtime.context import request_id_var
from recfleet_runtime.grpcclient import DeadlineSpentError, Downstream
from recfleet_runtime.grpcserver import GrpcService
from recfleet_runtime.resilience import CircuitOpenError
from recfleet_runtime.settings import ServiceSettings

SERVICE = "recfleet.ranking.v1.RankingService"


class ScriptedRanking(ranking_pb2_grpc.RankingServiceServicer):
    """Answers GetModelStatus after failing `fail_first` times; Rank sleeps `delay`,
    optionally calling a downstream and reporting the budget it saw."""

    def __init__(self, fail_first: int = 0, delay: float = 0.0, downstream: Downstream | None = None):
        self.fail_first = fail_first
        self.delay = delay
        self.downstream = downstream
        self.calls = 0
        self.seen_remaining: list[float] = []
        self.seen_request_ids: list[str | None] = []

    async def GetModelStatus(self, request, context):
        self.calls += 1
        self.seen_remaining.append(context.time_remaining() or -1)
        self.seen_request_ids.append(dict(context.invocation_metadata()).get("x-request-id"))
        if self.calls <= self.fail_first:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return ranking_pb2.ModelStatus(ranker_version="v1", model_loaded=True)

    async def Rank(self, request, context):
        self.calls += 1
        if self.downstream is not None:
            request = ranking_pb2.GetModelStatusRequest()
            stub = self.downstream.stub
            await self.downstream.call(stub.GetModelStatus, request, method="GetModelStatus", timeout=5.0)
        await asyncio.sleep(self.delay)
        return ranking_pb2.RankResponse(served_by="rules")


async def start(servicer, **settings) -> GrpcService:
    service = GrpcService("test", ServiceSettings(metrics_port=0, **settings), [SERVICE])
    ranking_pb2_grpc.add_RankingServiceServicer_to_server(servicer, service.server)
    await service.start("127.0.0.1:0")
    return service


async def health_status(port: int, name: str = "") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=name), timeout=2)
        return reply.status


def downstream(port: int, **kwargs) -> Downstream:
    return Downstream(
        name="ranking",
        target=f"127.0.0.1:{port}",
        stub_class=ranking_pb2_grpc.RankingServiceStub,
        service=SERVICE,
        **kwargs,
    )


async def test_health_is_not_serving_until_ready_and_after_stop():
    service = await start(ScriptedRanking(), drain_seconds=1.0, grace_seconds=0.5)
    assert await health_status(service.port) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert await health_status(service.port, SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
    await service.health.set_serving(True)
    assert await health_status(service.port, SERVICE) == health_pb2.HealthCheckResponse.SERVING

    stopping = asyncio.create_task(service.stop())
    status = None
    deadline = time.monotonic() + 0.9
    while time.monotonic() < deadline and status != health_pb2.HealthCheckResponse.NOT_SERVING:
        status = await health_status(service.port)
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING  # seen during the drain
    await stopping
    with pytest.raises(grpc.aio.AioRpcError):
        await health_status(service.port)


async def test_deadline_of_the_caller_caps_downstream_calls():
    leaf_servicer = ScriptedRanking()
    leaf = await start(leaf_servicer)
    middle = await start(ScriptedRanking(downstream=downstream(leaf.port)))
    client = downstream(middle.port)
    await client.call(client.stub.Rank, ranking_pb2.RankRequest(), method="Rank", timeout=0.3)
    # The middle hop asked for 5 s, but only what was left of the caller's 0.3 s went on
    # (gRPC carries deadlines as rounded timeouts, hence the small margin).
    assert 0 < leaf_servicer.seen_remaining[0] < 0.35
    await asyncio.gather(client.close(), leaf.stop(), middle.stop())


async def test_request_id_travels_in_metadata():
    servicer = ScriptedRanking()
    server = await start(servicer)
    client = downstream(server.port)
    token = request_id_var.set("req-123")
    try:
        await client.call(client.stub.GetModelStatus, ranking_pb2.GetModelStatusRequest(), method="GetModelStatus")
    finally:
        request_id_var.reset(token)
    assert servicer.seen_request_ids == ["req-123"]
    await asyncio.gather(client.close(), server.stop())


async def test_unavailable_is_retried_for_idempotent_reads_only():
    servicer = ScriptedRanking(fail_first=2)
    server = await start(servicer)
    idempotent = downstream(server.port, idempotent_methods=("GetModelStatus",))
    reply = await idempotent.call(
        idempotent.stub.GetModelStatus, ranking_pb2.GetModelStatusRequest(), method="GetModelStatus", timeout=2
    )
    assert reply.model_loaded and servicer.calls == 3

    servicer.calls, servicer.fail_first = 0, 1
    not_declared = downstream(server.port)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await not_declared.call(
            not_declared.stub.GetModelStatus, ranking_pb2.GetModelStatusRequest(), method="GetModelStatus", timeout=2
        )
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE and servicer.calls == 1
    await asyncio.gather(idempotent.close(), not_declared.close(), server.stop())


async def test_breaker_opens_on_a_dead_dependency_and_stops_calling_it():
    dead = downstream(1, timeout=0.2)  # nothing listens on port 1
    dead.breaker.failure_threshold = 2
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError):
            await dead.call(dead.stub.GetModelStatus, ranking_pb2.GetModelStatusRequest(), method="GetModelStatus")
    started = time.perf_counter()
    with pytest.raises(CircuitOpenError):
        await dead.call(dead.stub.GetModelStatus, ranking_pb2.GetModelStatusRequest(), method="GetModelStatus")
    assert time.perf_counter() - started < 0.05  # refused locally, no network wait
    await dead.close()


async def test_no_call_goes_out_once_the_deadline_is_spent():
    from recfleet_runtime.context import deadline_var

    servicer = ScriptedRanking()
    server = await start(servicer)
    client = downstream(server.port)
    token = deadline_var.set(time.monotonic() - 1)
    try:
        with pytest.raises(DeadlineSpentError):
            await client.call(client.stub.GetModelStatus, ranking_pb2.GetModelStatusRequest(), method="GetModelStatus")
    finally:
        deadline_var.reset(token)
    assert servicer.calls == 0
    await asyncio.gather(client.close(), server.stop())


async def test_graceful_shutdown_lets_in_flight_calls_finish():
    server = await start(ScriptedRanking(delay=0.3), drain_seconds=0.05, grace_seconds=2)
    client = downstream(server.port, timeout=5)
    in_flight = asyncio.create_task(client.call(client.stub.Rank, ranking_pb2.RankRequest(), method="Rank"))
    await asyncio.sleep(0.1)
    await server.stop()
    reply = await in_flight
    assert reply.served_by == "rules"
    with pytest.raises(grpc.aio.AioRpcError):
        await client.call(client.stub.Rank, ranking_pb2.RankRequest(), method="Rank", timeout=0.5)
    await client.close()

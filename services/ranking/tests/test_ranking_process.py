"""`python -m recfleet_ranking` as its own process: settings from the environment, health,
a Rank call, and a clean stop on SIGTERM."""

import asyncio
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from recfleet.common.v1 import common_pb2
from recfleet.ranking.v1 import ranking_pb2, ranking_pb2_grpc
from recfleet_runtime.ports import free_port


@pytest.fixture
def ranking_process(pg_dsn, artifact_dir):
    port = free_port()
    env = {
        **os.environ,
        "RECFLEET_RANKING_GRPC_PORT": str(port),
        "RECFLEET_RANKING_METRICS_PORT": "0",
        "RECFLEET_RANKING_FEATURE_STORE_TARGET": f"127.0.0.1:{free_port()}",
        "RECFLEET_RANKING_DRAIN_SECONDS": "0",
        "RECFLEET_RANKING_MAX_CANDIDATES": "5",
        "RECFLEET_POSTGRES_DSN": pg_dsn,
        "RECFLEET_ARTIFACT_URL": str(artifact_dir),
    }
    process = subprocess.Popen([sys.executable, "-m", "recfleet_ranking"], env=env, stdout=subprocess.DEVNULL)
    yield process, port
    if process.poll() is None:
        process.kill()
        process.wait()


async def test_process_serves_ranks_and_stops_on_sigterm(ranking_process):
    process, port = ranking_process
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and status != health_pb2.HealthCheckResponse.SERVING:
            try:
                status = (await health.Check(health_pb2.HealthCheckRequest(), timeout=1)).status
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.2)
        assert status == health_pb2.HealthCheckResponse.SERVING
        reply = await ranking_pb2_grpc.RankingServiceStub(channel).Rank(
            ranking_pb2.RankRequest(
                user_id="u1",
                candidates=[common_pb2.ScoredItem(item_id=str(i), score=i) for i in range(5)],
                constraints=common_pb2.UserConstraints(age=40),
            ),
            timeout=5,
        )
        assert [item.item_id for item in reply.items] == ["4", "3", "2", "1", "0"]
        assert reply.served_by == "rules"
        assert set(reply.degraded) == {"feature-store-unavailable"}
        try:
            await ranking_pb2_grpc.RankingServiceStub(channel).Rank(
                ranking_pb2.RankRequest(
                    user_id="u1", candidates=[common_pb2.ScoredItem(item_id=str(i)) for i in range(6)]
                ),
                timeout=5,
            )
        except grpc.aio.AioRpcError as error:
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "at most 5" in error.details()
        else:
            raise AssertionError("six candidates were accepted with RECFLEET_RANKING_MAX_CANDIDATES=5")
    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 30) == 0

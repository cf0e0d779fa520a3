"""Without a broker acknowledgement nothing is reported accepted: UNAVAILABLE instead."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kafka import KafkaAdminClient
from recfleet.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from recfleet_ingest.app import IngestApi
from recfleet_ingest.settings import IngestSettings
from recfleet_runtime.ports import free_port
from recfleet_store.kafka import LocalBroker

from .conftest import create_topics, make_settings
from .helpers import event


async def started(settings, warm_up_seconds: float) -> tuple[IngestApi, grpc.aio.Channel, bool]:
    api = IngestApi(settings, warm_up_seconds=warm_up_seconds)
    await api.service.start("127.0.0.1:0")
    ready = await api.warm_up()
    await api.service.health.set_serving(ready)
    return api, grpc.aio.insecure_channel(f"127.0.0.1:{api.service.port}"), ready


async def stopped(api: IngestApi, channel: grpc.aio.Channel) -> None:
    await channel.close()
    await api.service.stop()
    await api.close()


async def test_no_broker_means_not_serving_and_unavailable(pg_dsn, redis_url):
    settings = make_settings(pg_dsn, redis_url, f"127.0.0.1:{free_port()}", produce_timeout_seconds=1.0)
    api, channel, ready = await started(settings, warm_up_seconds=1.0)
    try:
        assert not ready
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await ingest_pb2_grpc.EventIngestStub(channel).Ingest(ingest_pb2.IngestRequest(events=[event()]), timeout=5)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await stopped(api, channel)


@dataclass
class OwnBroker:
    """An ingest API, ready, on a broker of its own (which a test may stop or replace)."""

    broker: LocalBroker
    settings: IngestSettings
    stub: ingest_pb2_grpc.EventIngestStub


@contextlib.asynccontextmanager
async def api_on_own_broker(pg_dsn: str, redis_url: str):
    broker = LocalBroker.start()
    settings = make_settings(pg_dsn, redis_url, broker.bootstrap, produce_timeout_seconds=2.0)
    create_topics(settings)
    api, channel, ready = await started(settings, warm_up_seconds=20.0)
    own = OwnBroker(broker, settings, ingest_pb2_grpc.EventIngestStub(channel))
    try:
        assert ready
        assert (await own.stub.Ingest(ingest_pb2.IngestRequest(events=[event()]), timeout=10)).accepted == 1
        yield own
    finally:
        own.broker.stop()
        await stopped(api, channel)


async def test_broker_gone_after_start_means_unavailable_not_accepted(pg_dsn, redis_url):
    async with api_on_own_broker(pg_dsn, redis_url) as own:
        own.broker.stop()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await own.stub.Ingest(ingest_pb2.IngestRequest(events=[event(), event()]), timeout=10)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "event log unavailable" in raised.value.details()


async def test_a_broker_restarted_without_its_state_is_written_to_again(pg_dsn, redis_url):
    """A memory-only broker (or a cluster rebuilt from scratch) no longer knows the
    producer's id: kafka-python's idempotent producer then sits in a fatal error. The API
    replaces it, so once the broker is back, events are accepted again."""
    async with api_on_own_broker(pg_dsn, redis_url) as own:
        own.broker.stop()
        own.broker = LocalBroker.start(port=own.broker.port)
        create_topics(own.settings)
        outcomes = []
        for _ in range(10):
            try:
                reply = await own.stub.Ingest(ingest_pb2.IngestRequest(events=[event()]), timeout=10)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE  # refused, never half-accepted
                outcomes.append("unavailable")
                await asyncio.sleep(0.5)
                continue
            outcomes.append(reply.accepted)
            break
        assert outcomes[-1] == 1, outcomes


async def test_missing_topics_mean_not_serving_and_the_api_creates_none(pg_dsn, redis_url, kafka_bootstrap):
    """Topics are made by `recfleet-jobs create-topics` (a Helm hook) with the cluster's
    partitions and replication; an API pod only waits for them."""
    settings = make_settings(pg_dsn, redis_url, kafka_bootstrap)
    api, channel, ready = await started(settings, warm_up_seconds=2.0)
    try:
        assert not ready
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            existing = set(admin.list_topics())
        finally:
            admin.close()
        assert not {settings.events_topic, settings.dead_letter_topic, settings.users_topic} & existing

        create_topics(settings)
        assert await api.warm_up()
    finally:
        await stopped(api, channel)

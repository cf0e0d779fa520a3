"""Ingest over real gRPC, a real broker and Postgres: validation, durability, idempotency."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import grpc
import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition
from recfleet.ingest.v1 import ingest_pb2
from recfleet_ingest import sink

from .helpers import count_rows, event, wait_until


def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 10.0) -> list:
    """Every record of a topic's partitions, read without a group."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=1000)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records = []
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


async def test_hundred_events_land_in_postgres_exactly_once_even_when_posted_twice(api, settings, start_role):
    _, stub = api
    batch = ingest_pb2.IngestRequest(events=[event(user=f"u{i % 7}", item=f"i{i}") for i in range(100)])
    first = await stub.Ingest(batch, timeout=10)
    second = await stub.Ingest(batch, timeout=10)
    assert first.accepted == second.accepted == 100
    assert list(first.event_ids) == [e.event_id for e in batch.events]

    start_role(sink.run, settings)
    dsn = settings.postgres_dsn
    assert await asyncio.to_thread(wait_until, lambda: count_rows(dsn, "SELECT count(*) FROM events") >= 100)
    await asyncio.sleep(1.0)  # the second copy of each event has had time to arrive
    assert count_rows(dsn, "SELECT count(*) FROM events") == 100
    assert count_rows(dsn, "SELECT count(DISTINCT event_id) FROM events") == 100
    assert count_rows(dsn, "SELECT count(*) FROM event_ids") == 100


async def test_generated_ids_and_fields_travel_on_the_topic_keyed_by_user(api, settings):
    _, stub = api
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    request = ingest_pb2.IngestRequest(
        events=[event(user="alice", item="m:42", kind="rating", value=4.5, event_id="", at=at)], request_id="req-1"
    )
    request.events[0].context.update({"surface": "home", "position": 3})
    reply = await stub.Ingest(request, timeout=10)
    assert reply.accepted == 1 and len(reply.event_ids[0]) == 36

    records = await asyncio.to_thread(read_topic, settings.kafka_bootstrap_servers, settings.events_topic, 1)
    assert len(records) == 1
    assert records[0].key == b"alice"
    assert orjson.loads(records[0].value) == {
        "event_id": reply.event_ids[0],
        "user_id": "alice",
        "item_id": "m:42",
        "type": "rating",
        "value": 4.5,
        "timestamp": "2026-01-02T03:04:05.000000Z",
        "context": {"surface": "home", "position": 3.0},
        "request_id": "req-1",
    }


async def test_rejections_name_index_field_and_reason(api):
    _, stub = api
    future = datetime.now(UTC) + timedelta(hours=1)
    events = [
        event(),  # 0 fine
        event(user="bad user"),  # 1 id charset
        event(kind="hover"),  # 2 unknown type
        event(kind="rating"),  # 3 rating without value
        event(kind="rating", value=7),  # 4 rating out of range
        event(at=future),  # 5 future timestamp
        event(event_id="not-a-uuid"),  # 6
        event(item="x" * 129),  # 7 too long
        event(value=float("nan")),  # 8
        event(at=datetime(1980, 1, 1, tzinfo=UTC)),  # 9
    ]
    reply = await stub.Ingest(ingest_pb2.IngestRequest(events=events), timeout=10)
    assert reply.accepted == 1
    got = {(r.index, r.field) for r in reply.rejected}
    assert got == {
        (1, "user_id"),
        (2, "type"),
        (3, "value"),
        (4, "value"),
        (5, "timestamp"),
        (6, "event_id"),
        (7, "item_id"),
        (8, "value"),
        (9, "timestamp"),
    }
    reasons = {r.index: r.error for r in reply.rejected}
    assert "future" in reasons[5] and "0.5..5.0" in reasons[4]


async def test_a_batch_of_only_bad_events_is_invalid_argument_with_every_reason(api):
    _, stub = api
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Ingest(ingest_pb2.IngestRequest(events=[event(user=""), event(kind="hover")]), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "[0] user_id" in raised.value.details() and "[1] type" in raised.value.details()


async def test_more_than_the_batch_limit_is_refused_naming_the_limit(api):
    _, stub = api
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Ingest(ingest_pb2.IngestRequest(events=[event() for _ in range(501)]), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "500" in raised.value.details()

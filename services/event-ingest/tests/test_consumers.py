"""The consumer roles over the real broker, Postgres and Redis: real-time features,
erasure, and the dead-letter topic."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import orjson
import psycopg
import pytest
import redis
from kafka import KafkaProducer
from pydantic import SecretStr
from recfleet.ingest.v1 import ingest_pb2
from recfleet_ingest import realtime, sink
from recfleet_ingest.servicer import event_fields
from recfleet_ingest.validation import validate_event
from recfleet_store import keys
from recfleet_store.suppression import user_hash

from .helpers import count_rows, event, wait_until
from .test_ingest_api import read_topic


async def test_realtime_updater_fills_seen_recent_counters_and_drops_the_cache(api, settings, start_role):
    ingest, stub = api
    client = redis.Redis.from_url(settings.redis_url)
    client.hset(keys.item("m1"), mapping={"categories": orjson.dumps(["Drama", "War"])})
    client.hset(keys.item("m2"), mapping={"categories": orjson.dumps(["Drama"])})
    client.hset(keys.user("u1"), mapping={"interaction_count": 5, "category_counts": orjson.dumps({"Comedy": 2})})
    client.hset(keys.result_cache("u1"), "digest", b"{}")

    base = datetime.now(UTC).replace(microsecond=0)
    events = [
        event("u1", "m1", at=base - timedelta(seconds=30)),
        event("u1", "m2", at=base - timedelta(seconds=20)),
        event("u1", "m3", at=base - timedelta(seconds=10)),
    ]
    assert (await stub.Ingest(ingest_pb2.IngestRequest(events=events), timeout=10)).accepted == 3
    # A user erased after their event reached the topic gets no features from it.
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO erased_users (user_hash, receipt_id) VALUES (%s, 'r-0')",
            (user_hash(settings.erasure_hash_key.get_secret_value(), "gone"),),
        )
    late = validate_event({"user_id": "gone", "item_id": "m1", "type": "view"}, datetime.now(UTC))
    await asyncio.to_thread(ingest.producer.send_and_wait, settings.events_topic, [("gone", late.to_json())])

    start_role(realtime.run, settings)
    assert await asyncio.to_thread(wait_until, lambda: client.scard(keys.user_seen("u1")) == 3)
    assert await asyncio.to_thread(wait_until, lambda: client.hget(keys.item("m3"), "interaction_count") == b"1")
    assert client.lrange(keys.user_recent("u1"), 0, -1) == [b"m3", b"m2", b"m1"]
    user = client.hgetall(keys.user("u1"))
    assert orjson.loads(user[b"interaction_count"]) == 8
    assert orjson.loads(user[b"category_counts"]) == {"Comedy": 2, "Drama": 2, "War": 1}
    assert orjson.loads(user[b"last_seen_at"]) == int((base - timedelta(seconds=10)).timestamp())
    assert orjson.loads(client.hget(keys.item("m1"), "interaction_count")) == 1
    assert not client.exists(keys.result_cache("u1"))
    await asyncio.sleep(1.0)
    assert not client.exists(keys.user("gone"), keys.user_seen("gone"), keys.user_recent("gone"))
    assert orjson.loads(client.hget(keys.item("m1"), "interaction_count")) == 1
    client.close()


async def test_erasure_removes_events_writes_a_tombstone_and_drops_later_events(api, settings, start_role):
    ingest, stub = api
    start_role(sink.run, settings)
    dsn = settings.postgres_dsn
    await stub.Ingest(
        ingest_pb2.IngestRequest(events=[event("eve", f"i{i}") for i in range(5)] + [event("bob", "i1")]), timeout=10
    )
    assert await asyncio.to_thread(wait_until, lambda: count_rows(dsn, "SELECT count(*) FROM events") == 6)

    reply = await stub.EraseUser(ingest_pb2.EraseUserRequest(user_id="eve", receipt_id="r-1"), timeout=10)
    assert reply.events_removed == 5 and reply.tombstone_written
    # The suppression list keeps eve's keyed hash, never her id.
    assert erased_rows(dsn) == [(None, user_hash(settings.erasure_hash_key.get_secret_value(), "eve"), "r-1")]
    assert count_rows(dsn, "SELECT count(*) FROM erased_users e WHERE position('eve' IN e::text) > 0") == 0
    assert count_rows(dsn, "SELECT count(*) FROM events WHERE user_id = 'eve'") == 0
    assert count_rows(dsn, "SELECT count(*) FROM event_ids WHERE user_id = 'eve'") == 0
    tombstones = await asyncio.to_thread(read_topic, settings.kafka_bootstrap_servers, settings.users_topic, 1)
    assert [(r.key, r.value) for r in tombstones] == [(b"eve", None)]

    mixed = await stub.Ingest(ingest_pb2.IngestRequest(events=[event("eve", "i9"), event("bob", "i2")]), timeout=10)
    assert mixed.accepted == 1
    assert [(r.index, r.field, r.error) for r in mixed.rejected] == [(0, "user_id", "user erased")]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Ingest(ingest_pb2.IngestRequest(events=[event("eve", "i9")]), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # An event of eve that reached the topic anyway (sent before the erasure, or by
    # another API replica that has not refreshed yet) is dropped by the sink.
    late = ingest_pb2.Event(event_id=str(uuid.uuid4()), user_id="eve", item_id="i7", type="view")
    record = validate_event(event_fields(late), datetime.now(UTC)).to_json()
    await asyncio.to_thread(ingest.producer.send_and_wait, settings.events_topic, [("eve", record)])
    assert await asyncio.to_thread(
        wait_until, lambda: count_rows(dsn, "SELECT count(*) FROM events WHERE user_id = 'bob'") == 2
    )
    await asyncio.sleep(1.0)
    assert count_rows(dsn, "SELECT count(*) FROM events WHERE user_id = 'eve'") == 0


def erased_rows(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT user_id, user_hash, receipt_id FROM erased_users ORDER BY receipt_id").fetchall()


async def test_only_the_key_that_hashed_an_erasure_matches_it(api, settings, start_role):
    ingest, stub = api
    dsn = settings.postgres_dsn
    await stub.EraseUser(ingest_pb2.EraseUserRequest(user_id="eve", receipt_id="r-1"), timeout=10)
    # A row the previous release wrote, by plain id, counts under any key until
    # `recfleet-jobs rehash-suppression` hashes it.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO erased_users (user_id, receipt_id) VALUES ('old', 'r-0')")

    def late(user: str) -> tuple[str, bytes]:
        message = ingest_pb2.Event(event_id=str(uuid.uuid4()), user_id=user, item_id="i1", type="view")
        return user, validate_event(event_fields(message), datetime.now(UTC)).to_json()

    await asyncio.to_thread(
        ingest.producer.send_and_wait, settings.events_topic, [late("eve"), late("old"), late("bob")]
    )
    same_key = start_role(sink.run, settings)
    assert await asyncio.to_thread(
        wait_until, lambda: count_rows(dsn, "SELECT count(*) FROM events WHERE user_id = 'bob'") == 1
    )
    assert count_rows(dsn, "SELECT count(*) FROM events WHERE user_id IN ('eve', 'old')") == 0
    same_key.close()

    # A sink under another key reads the same records: eve's hash matches nothing there.
    other = settings.model_copy(
        update={"erasure_hash_key": SecretStr("another-erasure-hash-key"), "sink_group": f"{settings.sink_group}-b"}
    )
    start_role(sink.run, other)
    assert await asyncio.to_thread(
        wait_until, lambda: count_rows(dsn, "SELECT count(*) FROM events WHERE user_id = 'eve'") == 1
    )
    assert count_rows(dsn, "SELECT count(*) FROM events WHERE user_id = 'old'") == 0

    # The API reads the plain row as a hash as well, from its next refresh on.
    refresh = asyncio.create_task(ingest.refresh_erased_forever())
    try:
        await asyncio.sleep(settings.erased_refresh_seconds * 2)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Ingest(ingest_pb2.IngestRequest(events=[event("old", "i2")]), timeout=10)
    finally:
        refresh.cancel()
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "user erased" in raised.value.details()


async def test_malformed_records_go_to_the_dead_letter_topic_with_the_reason(settings, start_role):
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    good = {
        "event_id": str(uuid.uuid4()),
        "user_id": "u1",
        "item_id": "i1",
        "type": "view",
        "timestamp": "2026-01-01T00:00:00Z",
    }
    producer.send(settings.events_topic, key=b"u1", value=b"{not json")
    producer.send(
        settings.events_topic, key=b"u1", value=orjson.dumps({**good, "event_id": str(uuid.uuid4()), "type": "hover"})
    )
    producer.send(settings.events_topic, key=b"u1", value=orjson.dumps(good))
    # A valid event that Postgres refuses (here: a constraint the database gained since):
    # dead-lettered, and the rest of its batch is still stored.
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE events ADD CONSTRAINT no_poison CHECK (item_id <> 'poison')")
    producer.send(
        settings.events_topic,
        key=b"u1",
        value=orjson.dumps({**good, "event_id": str(uuid.uuid4()), "item_id": "poison"}),
    )
    producer.send(settings.events_topic, key=b"u1", value=orjson.dumps({**good, "event_id": str(uuid.uuid4())}))
    producer.flush()
    producer.close()

    start_role(sink.run, settings)
    dead = await asyncio.to_thread(read_topic, settings.kafka_bootstrap_servers, settings.dead_letter_topic, 3, 20.0)
    letters = sorted((orjson.loads(r.value) for r in dead), key=lambda d: d["reason"])
    assert [d["source"] for d in letters] == ["sink", "sink", "sink"]
    assert letters[0]["reason"].startswith("postgres: ") and '"item_id":"poison"' in letters[0]["event"]
    assert letters[1]["event"] == "{not json" and letters[1]["reason"].startswith("record: not JSON")
    assert letters[2]["reason"].startswith("type: must be one of")
    assert dead[0].key == b"u1"
    dsn = settings.postgres_dsn
    assert await asyncio.to_thread(wait_until, lambda: count_rows(dsn, "SELECT count(*) FROM events") == 2)

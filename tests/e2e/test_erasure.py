"""Issue 3's export-then-erasure acceptance through the REST API with the real fleet:
after the receipt says completed, no store holds anything for the user (each checked
directly)."""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest
import redis
from kafka import KafkaConsumer, TopicPartition
from recfleet_store.suppression import user_hash

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

USER = "15"  # a MovieLens user: ratings, trained vector, materialized features


def count(conn, sql: str) -> int:
    return conn.execute(sql, (USER,)).fetchone()[0]


def test_export_then_erasure_leaves_nothing(api, fleet):
    assert (
        api.put(
            f"/v1/users/{USER}/profile", json={"age": 30, "country": "GB", "preferred_categories": ["Drama"]}
        ).status_code
        == 200
    )
    event = {"event_id": str(uuid.uuid4()), "user_id": USER, "item_id": "1", "type": "click"}
    assert api.post("/v1/events", json={"events": [event]}).status_code == 202
    assert api.get("/v1/recommendations", params={"user_id": USER, "limit": 5}).status_code == 200
    deadline = time.monotonic() + 10
    with psycopg.connect(fleet.config.postgres_dsn) as conn:
        # This click itself: other tests of the session may have sent this user clicks.
        while conn.execute("SELECT count(*) FROM events WHERE event_id = %s", (event["event_id"],)).fetchone()[0] == 0:
            assert time.monotonic() < deadline, "the click never reached Postgres"
            time.sleep(0.2)

    export = api.get(f"/v1/users/{USER}/export")
    assert export.status_code == 200, export.text
    body = export.json()
    assert len(body["events"]) > 10 and any(e["event_id"] == event["event_id"] for e in body["events"])
    text = str(body["feature_store"])
    assert "GB" in text and "Drama" in text  # the profile
    assert "als-" in text  # the stored user vector's version

    reply = api.delete(f"/v1/users/{USER}")
    assert reply.status_code == 202, reply.text
    receipt = reply.json()["receipt_id"]
    deadline = time.monotonic() + 30
    while (state := api.get(f"/v1/erasures/{receipt}").json())["status"] != "completed":
        assert state["status"] != "failed" and time.monotonic() < deadline, state
        time.sleep(0.3)

    with psycopg.connect(fleet.config.postgres_dsn) as conn:
        for table in ("events", "event_ids", "user_profiles", "user_vectors", "exposures"):
            assert count(conn, f"SELECT count(*) FROM {table} WHERE user_id = %s") == 0, table
        assert count(conn, "SELECT count(*) FROM offline_features WHERE entity = 'user' AND entity_id = %s") == 0
        # The suppression list keeps the user's keyed hash, never the id.
        assert count(conn, "SELECT count(*) FROM erased_users WHERE user_id = %s") == 0
        hashed = user_hash(fleet.erasure_hash_key(), USER)
        assert conn.execute("SELECT count(*) FROM erased_users WHERE user_hash = %s", (hashed,)).fetchone()[0] == 1
    client = redis.Redis.from_url(fleet.config.redis_url)
    # Every per-user key carries the user id as its hash tag: rf:u:{15}, rf:uv:{15}, rf:cache:{15}, ...
    leftovers = [key for key in client.scan_iter(count=1000) if f"{{{USER}}}".encode() in key]
    assert not leftovers, leftovers

    consumer = KafkaConsumer(
        bootstrap_servers=fleet.kafka_bootstrap, enable_auto_commit=False, consumer_timeout_ms=3000
    )
    partitions = [TopicPartition("recfleet.users.v1", p) for p in consumer.partitions_for_topic("recfleet.users.v1")]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    tombstones = [m for m in consumer if m.key == USER.encode() and m.value is None]
    consumer.close()
    assert tombstones, "no tombstone on the compacted users topic"

    # Events that arrive after the erasure are dropped.
    late = {"event_id": str(uuid.uuid4()), "user_id": USER, "item_id": "2", "type": "click"}
    api.post("/v1/events", json={"events": [late]})
    time.sleep(2)
    with psycopg.connect(fleet.config.postgres_dsn) as conn:
        assert count(conn, "SELECT count(*) FROM events WHERE user_id = %s") == 0

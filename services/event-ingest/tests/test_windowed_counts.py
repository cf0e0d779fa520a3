"""Windowed item counts (1 hour, 24 hours, 7 days) by event time, from events posted to
the API through the real broker to Redis, and served by the feature store as they are."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import grpc
import orjson
import pytest
import redis
from recfleet.features.v1 import features_pb2, features_pb2_grpc
from recfleet.ingest.v1 import ingest_pb2
from recfleet_features.app import FeatureStoreApp
from recfleet_features.settings import FeatureSettings
from recfleet_ingest import realtime
from recfleet_store import keys

from .helpers import event, wait_until

WINDOWS = ("interactions_1h", "interactions_24h", "interactions_7d")


@pytest.fixture
async def feature_store(settings):
    """The feature store on the same Redis and Postgres, in-process on a free port; yields its stub."""
    app = FeatureStoreApp(
        FeatureSettings(
            redis_url=settings.redis_url,
            postgres_dsn=settings.postgres_dsn,
            grpc_port=0,
            metrics_port=0,
            drain_seconds=0,
            grace_seconds=0,
        )
    )
    port = await app.service.start("127.0.0.1:0")
    assert await app.warm_up()
    await app.service.health.set_serving(True)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield features_pb2_grpc.FeatureStoreStub(channel)
    await channel.close()
    await app.service.stop()
    await app.close()


def numbers(client: redis.Redis, item: str, *names: str) -> list:
    return [None if raw is None else orjson.loads(raw) for raw in client.hmget(keys.item(item), *names)]


async def test_item_counts_per_window_follow_event_time(api, settings, start_role, feature_store):
    _, stub = api
    client = redis.Redis.from_url(settings.redis_url)
    now = datetime.now(UTC).replace(microsecond=0)
    ages = [timedelta(0), timedelta(minutes=30), timedelta(hours=3), timedelta(days=2), timedelta(days=10)]
    events = [event(f"u{n}", "hot", at=now - age) for n, age in enumerate(ages)]
    events.append(event("u9", "old", at=now - timedelta(days=10)))
    assert (await stub.Ingest(ingest_pb2.IngestRequest(events=events), timeout=10)).accepted == 6
    started = int(time.time())

    start_role(realtime.run, settings)
    assert await asyncio.to_thread(
        wait_until,
        lambda: (
            numbers(client, "hot", "interaction_count", "interactions_7d") == [5, 4]
            and numbers(client, "old", "interaction_count") == [1]
        ),
    )

    # now and 30 minutes ago in the hour; 3 hours ago too in the day; 2 days ago too in
    # the week; 10 days ago in none (but in the all-time count).
    assert numbers(client, "hot", *WINDOWS) == [2, 3, 4]
    assert numbers(client, "old", *WINDOWS) == [0, 0, 0]
    stamps = numbers(client, "hot", *(f"_ts:{name}" for name in WINDOWS))
    assert len(set(stamps)) == 1 and started <= stamps[0] <= time.time()
    # The buckets: the two events of the last hour in 5-minute buckets, the four of the
    # week in hourly ones; nothing for events older than a week.
    buckets = {name.decode(): int(count) for name, count in client.hgetall(keys.item_buckets("hot")).items()}
    assert sum(c for name, c in buckets.items() if name.startswith("300:")) == 2
    assert sum(c for name, c in buckets.items() if name.startswith("3600:")) == 4
    assert 7 * 86400 < client.ttl(keys.item_buckets("hot")) <= 8 * 86400
    assert not client.exists(keys.item_buckets("old"))

    reply = await feature_store.GetItemFeatures(
        features_pb2.GetItemFeaturesRequest(item_ids=["hot", "old"], feature_names=[*WINDOWS, "interaction_count"]),
        timeout=5,
    )
    hot, old = reply.rows
    assert [hot.values[name].number for name in WINDOWS] == [2, 3, 4]
    assert hot.values["interaction_count"].number == 5 and not hot.defaulted
    assert [old.values[name].number for name in WINDOWS] == [0, 0, 0]

    # A later batch with a late event (20 minutes old) adds to the counts already there.
    late = [event("u1", "hot", at=datetime.now(UTC) - timedelta(minutes=20))]
    assert (await stub.Ingest(ingest_pb2.IngestRequest(events=late), timeout=10)).accepted == 1
    assert await asyncio.to_thread(wait_until, lambda: numbers(client, "hot", "interaction_count") == [6])
    assert await asyncio.to_thread(wait_until, lambda: numbers(client, "hot", *WINDOWS) == [3, 4, 5])
    client.close()

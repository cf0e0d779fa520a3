"""The feature-store service over real Redis, Postgres and a real gRPC server on port 0."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import numpy as np
import psycopg
import pytest
import pytest_asyncio
import redis
import redis.asyncio as aioredis
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from recfleet.common.v1 import common_pb2
from recfleet.features.v1 import features_pb2, features_pb2_grpc
from recfleet_features.app import FeatureStoreApp
from recfleet_features.settings import FeatureSettings
from recfleet_runtime.ports import free_port
from recfleet_store import keys

USER_FEATURES = {
    "interaction_count",
    "last_seen_at",
    "category_counts",
    "preferred_categories",
    "blocked_categories",
    "liked_items",
    "age",
    "country",
}
ITEM_FEATURES = {
    "title",
    "categories",
    "creator",
    "published_at",
    "tags",
    "age_rating",
    "regions",
    "available",
    "popularity",
    "popularity_7d",
    "interaction_count",
    "last_interaction_at",
    "interactions_1h",
    "interactions_24h",
    "interactions_7d",
}


class CountingConnection(aioredis.Connection):
    """Counts the writes to the Redis socket: one per command, one per pipeline."""

    sends = 0

    async def send_packed_command(self, command, check_health=True):
        CountingConnection.sends += 1
        return await super().send_packed_command(command, check_health)


class Fleet:
    def __init__(self, app: FeatureStoreApp, channel: grpc.aio.Channel, redis_url: str, pg_dsn: str):
        self.app = app
        self.stub = features_pb2_grpc.FeatureStoreStub(channel)
        self.channel = channel
        self.redis = redis.Redis.from_url(redis_url)
        self.pg_dsn = pg_dsn

    def pg(self, sql: str, params=()):
        with psycopg.connect(self.pg_dsn) as conn:
            return conn.execute(sql, params).fetchall()


def settings(pg_dsn: str, redis_url: str, **extra) -> FeatureSettings:
    return FeatureSettings(
        postgres_dsn=pg_dsn,
        redis_url=redis_url,
        metrics_port=0,
        serving_version_cache_seconds=0,
        drain_seconds=0,
        grace_seconds=0.5,
        **extra,
    )


@pytest_asyncio.fixture
async def fleet(pg_dsn, redis_url):
    app = FeatureStoreApp(settings(pg_dsn, redis_url), redis_pool_kwargs={"connection_class": CountingConnection})
    port = await app.service.start("127.0.0.1:0")
    assert await app.warm_up()
    await app.service.health.set_serving(True)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield Fleet(app, channel, redis_url, pg_dsn)
    await channel.close()
    await app.service.server.stop(0)
    await app.close()


def cache_hits() -> float:
    return REGISTRY.get_sample_value("recfleet_features_item_rows_total", {"result": "cache_hit"}) or 0.0


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def put_json(client: redis.Redis, key: str, values: dict) -> None:
    client.hset(key, mapping={name: json.dumps(value) for name, value in values.items()})


def value_of(feature_value: features_pb2.FeatureValue):
    kind = feature_value.WhichOneof("kind")
    if kind == "strings":
        return list(feature_value.strings.values)
    return getattr(feature_value, kind)


async def expect_invalid(call, request, message: str):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(request, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == message


async def test_registry_lists_every_contract_feature(fleet):
    reply = await fleet.stub.ListFeatureViews(features_pb2.ListFeatureViewsRequest(), timeout=5)
    by_entity = {"user": set(), "item": set()}
    for view in reply.views:
        by_entity[view.entity].add(view.name)
        assert view.type in ("number", "text", "strings") and view.version >= 1 and view.source
    assert by_entity == {"user": USER_FEATURES, "item": ITEM_FEATURES}
    available = next(v for v in reply.views if v.entity == "item" and v.name == "available")
    assert available.default_value.number == 1
    windowed = {v.name: v for v in reply.views if v.entity == "item" and v.name.startswith("interactions_")}
    assert {name: v.freshness_seconds for name, v in windowed.items()} == {
        "interactions_1h": 300,
        "interactions_24h": 3600,
        "interactions_7d": 21600,
    }
    assert all(v.type == "number" and v.default_value.number == 0 for v in windowed.values())


async def test_user_read_is_one_round_trip_with_defaults_vector_and_constraints(fleet):
    user = uid("u")
    put_json(
        fleet.redis,
        keys.user(user),
        {
            "interaction_count": 7,
            "category_counts": {"Drama": 5, "Comedy": 2},
            "blocked_categories": ["Horror"],
            "preferred_categories": ["Drama"],
            "age": 15,
            "country": "DE",
        },
    )
    vector = np.arange(4, dtype="<f4") / 10
    fleet.redis.hset(keys.user_vectors(user), mapping={"als-A": vector.tobytes(), "als-OLD": b"\0" * 16})
    fleet.redis.set(keys.SERVING_VERSION, "als-A")
    fleet.redis.sadd(keys.user_seen(user), "i1", "i2")
    request = features_pb2.GetUserFeaturesRequest(user_id=user)
    await fleet.stub.GetUserFeatures(request, timeout=5)  # opens the pooled connection

    before = CountingConnection.sends
    reply = await fleet.stub.GetUserFeatures(request, timeout=5)
    assert CountingConnection.sends - before == 1

    values = {name: value_of(v) for name, v in reply.features.values.items()}
    assert set(values) == USER_FEATURES
    assert values["interaction_count"] == 7 and reply.interaction_count == 7
    assert json.loads(values["category_counts"]) == {"Drama": 5, "Comedy": 2}
    assert set(reply.features.defaulted) == {"last_seen_at", "liked_items"}
    assert values["last_seen_at"] == 0 and values["liked_items"] == []
    assert reply.vector_status == ""
    assert reply.user_vector.model_version == "als-A"
    assert list(reply.user_vector.values) == pytest.approx(vector.tolist())
    assert list(reply.constraints.blocked_categories) == ["Horror"]
    assert list(reply.constraints.preferred_categories) == ["Drama"]
    assert reply.constraints.age == 15 and reply.constraints.country == "DE"
    assert sorted(reply.constraints.seen_item_ids) == ["i1", "i2"]


async def test_vector_of_another_version_is_reported_not_returned(fleet):
    user = uid("u")
    fleet.redis.hset(keys.user_vectors(user), mapping={"als-B": np.ones(3, dtype="<f4").tobytes()})
    reply = await fleet.stub.GetUserFeatures(
        features_pb2.GetUserFeaturesRequest(user_id=user, model_version="als-C"), timeout=5
    )
    assert reply.vector_status == "version-mismatch:als-B"
    assert not reply.HasField("user_vector")
    assert reply.interaction_count == 0
    assert set(reply.features.defaulted) == USER_FEATURES

    fleet.redis.set(keys.SERVING_VERSION, "als-B")
    served = await fleet.stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_id=user), timeout=5)
    assert served.vector_status == "" and served.user_vector.model_version == "als-B"

    stranger = await fleet.stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_id=uid("u")), timeout=5)
    assert stranger.vector_status == "missing"


async def test_no_vector_is_returned_before_any_model_version_serves(fleet):
    user = uid("u")
    fleet.redis.hset(keys.user_vectors(user), mapping={"als-B": np.ones(3, dtype="<f4").tobytes()})
    fleet.redis.delete(keys.SERVING_VERSION)
    reply = await fleet.stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_id=user), timeout=5)
    assert reply.vector_status == "no-serving-model"
    assert not reply.HasField("user_vector")


async def unary_answer(
    fleet: Fleet, request: features_pb2.GetUserFeaturesRequest
) -> features_pb2.GetUserFeaturesResult:
    """What GetUserFeatures answers for `request` alone, shaped as a batch entry."""
    try:
        reply = await fleet.stub.GetUserFeatures(request, timeout=5)
    except grpc.aio.AioRpcError as error:
        return features_pb2.GetUserFeaturesResult(
            status=common_pb2.CallStatus(code=error.code().value[0], message=error.details())
        )
    return features_pb2.GetUserFeaturesResult(response=reply, status=common_pb2.CallStatus(code=0))


async def test_batch_answers_each_user_as_alone_in_one_round_trip(fleet):
    with_vector, without_vector, stranger = uid("u"), uid("u"), uid("u")
    put_json(fleet.redis, keys.user(with_vector), {"interaction_count": 9, "age": 41, "country": "FR"})
    fleet.redis.hset(keys.user_vectors(with_vector), "als-A", (np.arange(3, dtype="<f4") / 4).tobytes())
    fleet.redis.sadd(keys.user_seen(with_vector), "i3", "i1")
    put_json(fleet.redis, keys.user(without_vector), {"blocked_categories": ["Horror"], "liked_items": ["i9"]})
    fleet.redis.set(keys.SERVING_VERSION, "als-A")
    requests = [
        features_pb2.GetUserFeaturesRequest(user_id=with_vector),
        features_pb2.GetUserFeaturesRequest(user_id="bad id"),
        features_pb2.GetUserFeaturesRequest(user_id=without_vector, feature_names=["age", "liked_items"]),
        features_pb2.GetUserFeaturesRequest(user_id=with_vector, model_version="als-B"),
        features_pb2.GetUserFeaturesRequest(user_id=stranger, feature_names=["shoe_size"]),
        features_pb2.GetUserFeaturesRequest(user_id=stranger, model_version="als-A"),
    ]

    before = CountingConnection.sends
    batch = await fleet.stub.GetUserFeaturesBatch(
        features_pb2.GetUserFeaturesBatchRequest(requests=requests), timeout=5
    )
    # Four users are read (two entries are rejected before any read): one round trip.
    assert CountingConnection.sends - before == 1

    alone = [await unary_answer(fleet, request) for request in requests]
    assert list(batch.results) == alone
    vector, bad, subset, mismatch, unknown, cold = batch.results
    assert vector.response.user_vector.model_version == "als-A" and list(vector.response.constraints.seen_item_ids) == [
        "i1",
        "i3",
    ]
    assert (bad.status.code, bad.status.message) == (
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        "user_id: must be 1-128 characters of A-Z a-z 0-9 _ . : - (got 'bad id')",
    )
    assert set(subset.response.features.values) == {"age", "liked_items"}
    assert value_of(subset.response.features.values["liked_items"]) == ["i9"]
    assert list(subset.response.constraints.blocked_categories) == ["Horror"]
    assert subset.response.vector_status == "missing"
    assert mismatch.response.vector_status == "version-mismatch:als-A"
    assert unknown.status.message == "feature_names: unknown user feature(s) 'shoe_size'"
    assert cold.response.vector_status == "missing" and set(cold.response.features.defaulted) == USER_FEATURES


async def test_batch_entry_with_a_value_that_is_not_json_matches_the_unary_answer(fleet):
    odd, plain = uid("u"), uid("u")
    fleet.redis.hset(keys.user(odd), mapping={"age": "30", "country": "not json"})
    put_json(fleet.redis, keys.user(plain), {"age": 22, "country": "SE"})
    requests = [features_pb2.GetUserFeaturesRequest(user_id=user) for user in (odd, plain, odd)]
    batch = await fleet.stub.GetUserFeaturesBatch(
        features_pb2.GetUserFeaturesBatchRequest(requests=requests), timeout=5
    )
    assert list(batch.results) == [await unary_answer(fleet, request) for request in requests]
    assert batch.results[0].response.constraints.age == 30 and "country" in batch.results[0].response.features.defaulted
    assert batch.results[1].response.constraints.country == "SE"


async def test_batch_size_is_bounded_and_an_empty_batch_reads_nothing(fleet):
    too_many = [features_pb2.GetUserFeaturesRequest(user_id=f"u{n}") for n in range(257)]
    await expect_invalid(
        fleet.stub.GetUserFeaturesBatch,
        features_pb2.GetUserFeaturesBatchRequest(requests=too_many),
        "requests: at most 256 per call (got 257)",
    )
    before = CountingConnection.sends
    empty = await fleet.stub.GetUserFeaturesBatch(features_pb2.GetUserFeaturesBatchRequest(), timeout=5)
    assert list(empty.results) == [] and CountingConnection.sends == before


async def test_item_read_of_500_items_is_one_round_trip_with_defaults(fleet):
    items = [f"it{i}" for i in range(500)]
    for item in items[:250]:
        put_json(fleet.redis, keys.item(item), {"title": f"T {item}", "categories": ["Drama"], "popularity": 0.5})
    request = features_pb2.GetItemFeaturesRequest(item_ids=items)
    await fleet.stub.GetItemFeatures(request, timeout=5)

    before = CountingConnection.sends
    hits_before = cache_hits()
    reply = await fleet.stub.GetItemFeatures(request, timeout=5)
    assert CountingConnection.sends - before == 1
    # Nothing changed in Redis since the first read: every row is reused.
    assert cache_hits() - hits_before == 500

    assert [row.entity_id for row in reply.rows] == items
    known, unknown = reply.rows[0], reply.rows[499]
    assert value_of(known.values["title"]) == "T it0"
    assert value_of(known.values["categories"]) == ["Drama"]
    assert value_of(known.values["popularity"]) == 0.5
    assert "title" not in known.defaulted and "available" in known.defaulted
    assert set(unknown.defaulted) == ITEM_FEATURES
    assert value_of(unknown.values["available"]) == 1

    subset = await fleet.stub.GetItemFeatures(
        features_pb2.GetItemFeaturesRequest(item_ids=["it1"], feature_names=["popularity", "title"]), timeout=5
    )
    assert set(subset.rows[0].values) == {"popularity", "title"}


async def test_stale_values_fall_back_to_the_default(fleet):
    item = uid("i")
    old = Timestamp()
    old.FromDatetime(datetime.now(UTC) - timedelta(days=3))
    row = features_pb2.FeatureRow(entity_id=item)
    row.values["popularity"].number = 0.9
    row.values["interaction_count"].number = 4
    reply = await fleet.stub.WriteFeatures(
        features_pb2.WriteFeaturesRequest(entity="item", rows=[row], event_time=old), timeout=5
    )
    assert reply.written == 2
    read = await fleet.stub.GetItemFeatures(features_pb2.GetItemFeaturesRequest(item_ids=[item]), timeout=5)
    # popularity is fresh for 2 days; interaction_count never goes stale.
    assert "popularity" in read.rows[0].defaulted and value_of(read.rows[0].values["popularity"]) == 0
    assert value_of(read.rows[0].values["interaction_count"]) == 4

    fresh = features_pb2.FeatureRow(entity_id=item)
    fresh.values["popularity"].number = 0.7
    await fleet.stub.WriteFeatures(features_pb2.WriteFeaturesRequest(entity="item", rows=[fresh]), timeout=5)
    read = await fleet.stub.GetItemFeatures(features_pb2.GetItemFeaturesRequest(item_ids=[item]), timeout=5)
    assert "popularity" not in read.rows[0].defaulted and value_of(read.rows[0].values["popularity"]) == 0.7

    stored = fleet.pg(
        "SELECT feature, value FROM offline_features WHERE entity = 'item' AND entity_id = %s ORDER BY event_time",
        (item,),
    )
    assert ("popularity", 0.9) in stored and ("popularity", 0.7) in stored and ("interaction_count", 4) in stored


async def test_windowed_counts_fall_back_to_zero_once_no_event_refreshed_them(fleet):
    item = uid("i")
    now = time.time()
    # As the realtime consumer writes them: each count with the time it was computed.
    put_json(
        fleet.redis,
        keys.item(item),
        {
            "interactions_1h": 5,
            "_ts:interactions_1h": now - 400,
            "interactions_24h": 7,
            "_ts:interactions_24h": now - 400,
            "interactions_7d": 9,
            "_ts:interactions_7d": now - 7 * 3600,
            "interaction_count": 12,
        },
    )
    names = ["interactions_1h", "interactions_24h", "interactions_7d", "interaction_count"]
    read = await fleet.stub.GetItemFeatures(
        features_pb2.GetItemFeaturesRequest(item_ids=[item], feature_names=names), timeout=5
    )
    row = read.rows[0]
    assert {name: value_of(row.values[name]) for name in names} == {
        "interactions_1h": 0,
        "interactions_24h": 7,
        "interactions_7d": 0,
        "interaction_count": 12,
    }
    assert set(row.defaulted) == {"interactions_1h", "interactions_7d"}

    put_json(fleet.redis, keys.item(item), {"interactions_1h": 2, "_ts:interactions_1h": time.time()})
    read = await fleet.stub.GetItemFeatures(
        features_pb2.GetItemFeaturesRequest(item_ids=[item], feature_names=names), timeout=5
    )
    assert value_of(read.rows[0].values["interactions_1h"]) == 2
    assert "interactions_1h" not in read.rows[0].defaulted


async def test_bad_reads_and_writes_say_which_field_and_why(fleet):
    await expect_invalid(
        fleet.stub.GetItemFeatures,
        features_pb2.GetItemFeaturesRequest(item_ids=[f"x{i}" for i in range(1001)]),
        "item_ids: at most 1000 per call (got 1001)",
    )
    await expect_invalid(
        fleet.stub.GetItemFeatures,
        features_pb2.GetItemFeaturesRequest(item_ids=["ok", "bad id"]),
        "item_ids[1]: must be 1-128 characters of A-Z a-z 0-9 _ . : - (got 'bad id')",
    )
    await expect_invalid(
        fleet.stub.GetUserFeatures,
        features_pb2.GetUserFeaturesRequest(user_id="u1", feature_names=["age", "shoe_size"]),
        "feature_names: unknown user feature(s) 'shoe_size'",
    )
    row = features_pb2.FeatureRow(entity_id="i1")
    row.values["title"].number = 3
    await expect_invalid(
        fleet.stub.WriteFeatures,
        features_pb2.WriteFeaturesRequest(entity="item", rows=[row]),
        "rows[0].values['title']: must be of type text",
    )
    await expect_invalid(
        fleet.stub.WriteFeatures,
        features_pb2.WriteFeaturesRequest(entity="shop", rows=[row]),
        "entity: must be one of user, item (got 'shop')",
    )
    await expect_invalid(
        fleet.stub.GetPopularItems,
        features_pb2.GetPopularItemsRequest(window="30d"),
        "window: must be one of all, 7d, trending (got '30d')",
    )
    await expect_invalid(
        fleet.stub.GetPopularItems,
        features_pb2.GetPopularItemsRequest(limit=5, exclude_item_ids=["ok", "no/slash"]),
        "exclude_item_ids[1]: must be 1-128 characters of A-Z a-z 0-9 _ . : - (got 'no/slash')",
    )
    items = [features_pb2.Item(item_id="a1"), features_pb2.Item(item_id="a2", age_rating=12)]
    await expect_invalid(
        fleet.stub.UpsertItems,
        features_pb2.UpsertItemsRequest(items=items),
        "items[1].age_rating: must be one of 0, 7, 13, 16, 18 (got 12)",
    )
    await expect_invalid(
        fleet.stub.UpsertItems,
        features_pb2.UpsertItemsRequest(items=[features_pb2.Item(item_id="a1", regions=["DE", "fr"])]),
        "items[0].regions[1]: must be an ISO 3166 alpha-2 code in upper case, e.g. DE (got 'fr')",
    )
    await expect_invalid(
        fleet.stub.PutUserProfile,
        features_pb2.PutUserProfileRequest(profile=features_pb2.UserProfile(user_id="u1", country="Germany")),
        "profile.country: must be an ISO 3166 alpha-2 code in upper case, e.g. DE (got 'Germany')",
    )
    assert fleet.pg("SELECT count(*) FROM items WHERE item_id IN ('a1', 'a2')") == [(0,)]


async def test_new_item_appears_in_popular_for_its_category_before_any_retrain(fleet):
    category = uid("Genre")
    for rank, item in enumerate(["p1", "p2", "p3"]):
        fleet.redis.zadd(keys.popular("all", category), {item: 10 - rank})
        fleet.redis.zadd(keys.popular("all"), {item: 10 - rank})
    fleet.redis.hset(keys.item("p2"), "available", "0")
    new = uid("new")
    published = Timestamp()
    published.FromDatetime(datetime(2026, 1, 2, tzinfo=UTC))
    item = features_pb2.Item(
        item_id=new,
        title="Fresh",
        categories=[category, "Drama"],
        creator="Studio",
        published_at=published,
        tags=["x"],
        age_rating=13,
        regions=["FR", "DE"],
        available=True,
    )
    reply = await fleet.stub.UpsertItems(features_pb2.UpsertItemsRequest(items=[item]), timeout=5)
    assert (reply.upserted, reply.created) == (1, 1)
    again = await fleet.stub.UpsertItems(features_pb2.UpsertItemsRequest(items=[item]), timeout=5)
    assert (again.upserted, again.created) == (1, 0)

    popular = await fleet.stub.GetPopularItems(
        features_pb2.GetPopularItemsRequest(category=category, limit=10, exclude_item_ids=["p3"]), timeout=5
    )
    assert [(i.item_id, i.source) for i in popular.items] == [("p1", "popular"), (new, "popular")]
    trending = await fleet.stub.GetPopularItems(
        features_pb2.GetPopularItemsRequest(window="trending", limit=5), timeout=5
    )
    assert [(i.item_id, i.source) for i in trending.items] == [(new, "trending")]

    stored = fleet.redis.hgetall(keys.item(new))
    assert {k.decode(): json.loads(v) for k, v in stored.items()} == {
        "title": "Fresh",
        "categories": [category, "Drama"],
        "creator": "Studio",
        "published_at": int(published.seconds),
        "tags": ["x"],
        "age_rating": 13,
        "regions": ["DE", "FR"],
        "available": 1,
    }
    assert fleet.pg("SELECT title, categories, age_rating, regions FROM items WHERE item_id = %s", (new,)) == [
        ("Fresh", [category, "Drama"], 13, ["DE", "FR"])
    ]

    item.available = False
    await fleet.stub.UpsertItems(features_pb2.UpsertItemsRequest(items=[item]), timeout=5)
    popular = await fleet.stub.GetPopularItems(
        features_pb2.GetPopularItemsRequest(category=category, limit=10), timeout=5
    )
    assert [i.item_id for i in popular.items] == ["p1", "p3"]
    assert fleet.redis.zscore(keys.popular("trending"), new) is None


async def test_profile_is_stored_in_both_stores_and_returned(fleet):
    user = uid("u")
    profile = features_pb2.UserProfile(
        user_id=user,
        preferred_categories=["Drama", " Comedy ", "Drama"],
        blocked_categories=["Horror"],
        liked_items=["1", "2"],
        age=17,
        country="FR",
    )
    reply = await fleet.stub.PutUserProfile(features_pb2.PutUserProfileRequest(profile=profile), timeout=5)
    assert list(reply.profile.preferred_categories) == ["Drama", "Comedy"]
    assert reply.profile.age == 17 and reply.profile.country == "FR"
    assert fleet.pg("SELECT preferred_categories, age, country FROM user_profiles WHERE user_id = %s", (user,)) == [
        (["Drama", "Comedy"], 17, "FR")
    ]
    read = await fleet.stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_id=user), timeout=5)
    assert list(read.constraints.blocked_categories) == ["Horror"] and read.constraints.age == 17
    assert value_of(read.features.values["liked_items"]) == ["1", "2"]


async def test_export_holds_everything_and_erase_leaves_nothing(fleet):
    user = uid("u")
    other = uid("u")
    await fleet.stub.PutUserProfile(
        features_pb2.PutUserProfileRequest(profile=features_pb2.UserProfile(user_id=user, age=30, country="DE")),
        timeout=5,
    )
    row = features_pb2.FeatureRow(entity_id=user)
    row.values["interaction_count"].number = 2
    await fleet.stub.WriteFeatures(features_pb2.WriteFeaturesRequest(entity="user", rows=[row]), timeout=5)
    event_ids = [uuid.uuid4(), uuid.uuid4()]
    with psycopg.connect(fleet.pg_dsn) as conn:
        for n, event_id in enumerate(event_ids):
            conn.execute(
                "INSERT INTO events (event_id, user_id, item_id, type, ts) VALUES (%s, %s, %s, 'click', now())",
                (event_id, user, f"item{n}"),
            )
        conn.execute(
            "INSERT INTO user_vectors (user_id, model_version, vector) VALUES (%s, 'als-A', %s), (%s, 'als-A', %s)",
            (user, [0.5, 0.25], other, [1.0, 1.0]),
        )
    fleet.redis.hset(keys.user_vectors(user), "als-A", np.array([0.5, 0.25], dtype="<f4").tobytes())
    fleet.redis.sadd(keys.user_seen(user), "item0", "item1")
    fleet.redis.lpush(keys.user_recent(user), "item0", "item1")
    fleet.redis.hset(keys.result_cache(user), "digest", "cached")
    fleet.redis.set(f"rf:rl:{{{user}}}:minute", 3)
    fleet.redis.hset(keys.user(other), "age", "40")

    reply = await fleet.stub.ExportUser(features_pb2.ExportUserRequest(user_id=user), timeout=5)
    exported = json.loads(reply.json)
    assert exported["user_id"] == user
    assert exported["profile"]["age"] == 30 and exported["profile"]["country"] == "DE"
    assert exported["online_features"]["interaction_count"] == 2 and exported["online_features"]["age"] == 30
    assert [f["feature"] for f in exported["offline_features"]] == ["interaction_count"]
    assert exported["user_vectors"]["postgres"] == [{"model_version": "als-A", "vector": [0.5, 0.25]}]
    assert exported["user_vectors"]["redis"] == {"als-A": [0.5, 0.25]}
    assert exported["seen_items"] == ["item0", "item1"] and exported["recent_items"] == ["item1", "item0"]
    assert sorted(e["event_id"] for e in exported["events"]) == sorted(map(str, event_ids))

    erased = await fleet.stub.EraseUser(features_pb2.EraseUserRequest(user_id=user, receipt_id="r1"), timeout=5)
    assert dict(erased.removed) == {
        "postgres.user_profiles": 1,
        "postgres.offline_features": 1,
        "postgres.user_vectors": 1,
        "redis.keys": 6,
    }
    assert [k for k in fleet.redis.scan_iter(match="*") if user.encode() in k] == []
    for table, where in (
        ("user_profiles", "user_id = %s"),
        ("offline_features", "entity = 'user' AND entity_id = %s"),
        ("user_vectors", "user_id = %s"),
    ):
        assert fleet.pg(f"SELECT count(*) FROM {table} WHERE {where}", (user,)) == [(0,)], table
    assert fleet.pg("SELECT count(*) FROM user_vectors WHERE user_id = %s", (other,)) == [(1,)]
    assert fleet.redis.exists(keys.user(other)) == 1


async def test_health_stays_not_serving_while_postgres_does_not_answer(redis_url):
    app = FeatureStoreApp(settings("postgresql://postgres@127.0.0.1:1/nothing", redis_url, startup_timeout_seconds=1.0))
    port = await app.service.start("127.0.0.1:0")
    try:
        assert await app.warm_up() is False
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="recfleet.features.v1.FeatureStore"), timeout=2
            )
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await app.service.server.stop(0)
        await app.close()


async def test_a_value_that_is_not_json_counts_as_missing_without_losing_the_row(fleet):
    put_json(fleet.redis, keys.item("good"), {"title": "Good", "popularity": 0.3})
    fleet.redis.hset(keys.item("odd"), mapping={"title": "not json", "popularity": "0.8"})
    reply = await fleet.stub.GetItemFeatures(
        features_pb2.GetItemFeaturesRequest(item_ids=["odd", "good"], feature_names=["title", "popularity"]),
        timeout=5,
    )
    odd, good = reply.rows
    assert list(odd.defaulted) == ["title"] and value_of(odd.values["popularity"]) == 0.8
    assert value_of(good.values["title"]) == "Good" and list(good.defaulted) == []


async def test_a_user_value_that_is_not_json_counts_as_missing_without_losing_the_others(fleet):
    user = uid("u")
    fleet.redis.hset(keys.user(user), mapping={"age": "30", "country": "not json", "interaction_count": "4"})
    reply = await fleet.stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_id=user), timeout=5)
    assert reply.constraints.age == 30 and reply.constraints.country == "" and reply.interaction_count == 4
    assert "country" in reply.features.defaulted and "age" not in reply.features.defaulted


async def test_item_rows_follow_changes_in_redis(fleet):
    put_json(fleet.redis, keys.item("c1"), {"popularity": 0.1})
    request = features_pb2.GetItemFeaturesRequest(item_ids=["c1"], feature_names=["popularity"])
    first = await fleet.stub.GetItemFeatures(request, timeout=5)
    put_json(fleet.redis, keys.item("c1"), {"popularity": 0.6})
    second = await fleet.stub.GetItemFeatures(request, timeout=5)
    assert value_of(first.rows[0].values["popularity"]) == 0.1
    assert value_of(second.rows[0].values["popularity"]) == 0.6


def start_redis(port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return process
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


async def wait_for_status(port: int, wanted: int, timeout: float = 10) -> int:
    status = None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(int(timeout / 0.1)):
            status = (await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)).status
            if status == wanted:
                break
            await asyncio.sleep(0.1)
    return status


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
async def test_health_follows_redis_going_away_and_coming_back(pg_dsn):
    redis_port = free_port()
    server = start_redis(redis_port)
    app = FeatureStoreApp(settings(pg_dsn, f"redis://127.0.0.1:{redis_port}/0", store_check_seconds=0.1))
    port = await app.service.start("127.0.0.1:0")
    watcher = asyncio.create_task(app.watch_stores())
    try:
        assert await app.warm_up()
        await app.service.health.set_serving(True)
        server.terminate()
        server.wait()
        assert await wait_for_status(port, health_pb2.HealthCheckResponse.NOT_SERVING) == (
            health_pb2.HealthCheckResponse.NOT_SERVING
        )
        # A read meanwhile is UNAVAILABLE (a status callers degrade on), not UNKNOWN.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await features_pb2_grpc.FeatureStoreStub(channel).GetUserFeatures(
                    features_pb2.GetUserFeaturesRequest(user_id="u1"), timeout=5
                )
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        server = start_redis(redis_port)
        assert await wait_for_status(port, health_pb2.HealthCheckResponse.SERVING) == (
            health_pb2.HealthCheckResponse.SERVING
        )
    finally:
        watcher.cancel()
        server.terminate()
        server.wait()
        await app.service.server.stop(0)
        await app.close()


async def test_batch_upsert_counts_only_new_items_as_created(fleet):
    a, b, c = uid("a"), uid("b"), uid("c")
    first = await fleet.stub.UpsertItems(
        features_pb2.UpsertItemsRequest(items=[features_pb2.Item(item_id=i, available=True) for i in (a, b)]),
        timeout=5,
    )
    second = await fleet.stub.UpsertItems(
        features_pb2.UpsertItemsRequest(
            items=[features_pb2.Item(item_id=a, title="renamed", available=True), features_pb2.Item(item_id=c)]
        ),
        timeout=5,
    )
    assert (first.upserted, first.created) == (2, 2)
    assert (second.upserted, second.created) == (2, 1)
    assert fleet.pg("SELECT title FROM items WHERE item_id = %s", (a,)) == [("renamed",)]
    assert json.loads(fleet.redis.hget(keys.item(c), "available")) == 0


async def test_popular_pages_past_unavailable_items_in_one_round_trip(fleet):
    category = uid("Genre")
    ids = [f"{category}-{n}" for n in range(60)]
    fleet.redis.zadd(keys.popular("7d", category), {item: 100 - n for n, item in enumerate(ids)})
    for item in ids[:40]:
        fleet.redis.hset(keys.item(item), "available", "0")
    request = features_pb2.GetPopularItemsRequest(window="7d", category=category, limit=5, exclude_item_ids=[ids[41]])
    await fleet.stub.GetPopularItems(request, timeout=5)

    before = CountingConnection.sends
    reply = await fleet.stub.GetPopularItems(request, timeout=5)
    assert CountingConnection.sends - before == 1
    assert [i.item_id for i in reply.items] == [ids[40], *ids[42:46]]
    assert [i.score for i in reply.items] == [60, 58, 57, 56, 55]


async def test_columnar_item_read_matches_the_rows(fleet):
    put_json(fleet.redis, keys.item("k1"), {"title": "One", "categories": ["Drama", "War"], "popularity": 0.25})
    put_json(fleet.redis, keys.item("k3"), {"title": "Three"})
    names = ["title", "categories", "popularity"]
    reply = await fleet.stub.GetItemFeatures(
        features_pb2.GetItemFeaturesRequest(item_ids=["k1", "k2", "k3"], feature_names=names, columnar=True),
        timeout=5,
    )
    assert not reply.rows
    columns = {column.name: column for column in reply.columns}
    assert [column.name for column in reply.columns] == names
    assert list(columns["title"].texts) == ["One", "", "Three"]
    assert list(columns["title"].defaulted) == [1]
    assert [list(v.values) for v in columns["categories"].lists] == [["Drama", "War"], [], []]
    assert list(columns["categories"].defaulted) == [1, 2]
    assert list(columns["popularity"].numbers) == [0.25, 0, 0]
    assert list(columns["popularity"].defaulted) == [1, 2]

    every = await fleet.stub.GetItemFeatures(
        features_pb2.GetItemFeaturesRequest(item_ids=["k1"], columnar=True), timeout=5
    )
    assert {column.name for column in every.columns} == ITEM_FEATURES


async def test_a_burst_larger_than_the_redis_pool_is_served_not_refused(pg_dsn, redis_url):
    """Calls beyond the pool's size wait their turn for a connection; none fails."""
    app = FeatureStoreApp(settings(pg_dsn, redis_url, redis_max_connections=2))
    port = await app.service.start("127.0.0.1:0")
    try:
        assert await app.warm_up()
        await app.service.health.set_serving(True)
        user = uid("burst")
        put_json(redis.Redis.from_url(redis_url), keys.user(user), {"age": 33})
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = features_pb2_grpc.FeatureStoreStub(channel)
            request = features_pb2.GetUserFeaturesRequest(user_id=user, feature_names=["age"])
            replies = await asyncio.gather(
                *(stub.GetUserFeatures(request, timeout=10) for _ in range(50)), return_exceptions=True
            )
        failures = [reply for reply in replies if isinstance(reply, BaseException)]
        assert failures == []
        assert {value_of(reply.features.values["age"]) for reply in replies} == {33}
    finally:
        await app.service.server.stop(0)
        await app.close()


async def test_postgres_going_away_keeps_online_reads_serving(cuttable_pg_dsn, redis_url):
    app = FeatureStoreApp(settings(cuttable_pg_dsn.dsn, redis_url, store_check_seconds=0.1))
    port = await app.service.start("127.0.0.1:0")
    watcher = asyncio.create_task(app.watch_stores())
    try:
        assert await app.warm_up()
        await app.service.health.set_serving(True)
        cuttable_pg_dsn.cut()
        assert not await app.offline_answers()
        await asyncio.sleep(0.5)  # several store checks
        assert await wait_for_status(port, health_pb2.HealthCheckResponse.SERVING) == (
            health_pb2.HealthCheckResponse.SERVING
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await features_pb2_grpc.FeatureStoreStub(channel).GetUserFeatures(
                features_pb2.GetUserFeaturesRequest(user_id=uid("u")), timeout=5
            )
        assert reply.vector_status in ("missing", "no-serving-model")  # answered from Redis
    finally:
        watcher.cancel()
        await app.service.server.stop(0)
        await app.close()

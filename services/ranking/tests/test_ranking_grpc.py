"""A real ranking server over gRPC, with the real feature-store service reading Redis."""

import asyncio

import grpc
import orjson
import psycopg
import pytest
import redis
from recfleet.common.v1 import common_pb2
from recfleet.features.v1 import features_pb2, features_pb2_grpc
from recfleet.ranking.v1 import ranking_pb2, ranking_pb2_grpc
from recfleet_features.app import FeatureStoreApp
from recfleet_features.settings import FeatureSettings
from recfleet_models.ranking.artifacts import write_ranker
from recfleet_ranking.__main__ import build
from recfleet_ranking.adapters.catalog_changes import follow_catalog_changes
from recfleet_ranking.settings import RankingSettings
from recfleet_runtime.ports import free_port
from recfleet_store import keys
from recfleet_store.artifacts import DirectoryArtifactStore
from recfleet_store.registry import promote, register_version

NOW = 1_790_000_000

ITEMS = {
    "1": {"categories": ["Drama"], "age_rating": 0, "popularity": 0.9},
    "2": {"categories": ["Horror", "Thriller"], "age_rating": 16, "popularity": 0.8},
    "3": {"categories": ["Comedy"], "age_rating": 18, "popularity": 0.7},
    "4": {"categories": ["Comedy"], "regions": ["DE"], "popularity": 0.6},
    "5": {"categories": ["Drama"], "available": 0, "popularity": 0.5},
    "6": {"categories": ["Action"], "age_rating": 13, "popularity": 0.4},
    "7": {"categories": ["Comedy", "Drama"], "popularity": 0.3},
    "8": {"categories": ["Action"], "popularity": 0.2},
}


def fill_redis(redis_url):
    client = redis.Redis.from_url(redis_url)
    for item_id, features in ITEMS.items():
        values = {
            "creator": "",
            "published_at": NOW,
            "age_rating": 0,
            "regions": [],
            "available": 1,
            "popularity_7d": 0.1,
            **features,
        }
        client.hset(keys.item(item_id), mapping={k: orjson.dumps(v) for k, v in values.items()})
    client.close()


async def start_feature_store(redis_url, pg_dsn) -> tuple[FeatureStoreApp, str]:
    """The real feature-store service over the seeded Redis: (app, target)."""
    fill_redis(redis_url)
    app = FeatureStoreApp(
        FeatureSettings(
            redis_url=redis_url, postgres_dsn=pg_dsn, grpc_port=0, metrics_port=0, drain_seconds=0, grace_seconds=0
        )
    )
    port = await app.service.start("127.0.0.1:0")
    assert await app.warm_up()
    await app.service.health.set_serving(True)
    return app, f"127.0.0.1:{port}"


@pytest.fixture
async def feature_store(redis_url, pg_dsn):
    app, target = await start_feature_store(redis_url, pg_dsn)
    yield target
    await app.service.stop()
    await app.close()


async def start_ranking(feature_store_target, dsn, artifact_dir, **overrides):
    settings = RankingSettings(
        grpc_port=0,
        metrics_port=0,
        drain_seconds=0,
        grace_seconds=0,
        feature_store_target=feature_store_target,
        feature_store_timeout=1.0,
        postgres_dsn=dsn,
        artifact_url=str(artifact_dir),
        **overrides,
    )
    service, servicer = build(settings)
    port = await service.start("127.0.0.1:0")
    await servicer.versions.refresh()
    await service.health.set_serving(True)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return service, servicer, channel, ranking_pb2_grpc.RankingServiceStub(channel)


async def stop_ranking(service, servicer, channel):
    await channel.close()
    await service.stop()
    await servicer.versions.close()
    await servicer.feature_store.close()


def request(**fields):
    fields.setdefault("user_id", "u1")
    fields.setdefault(
        "candidates", [common_pb2.ScoredItem(item_id=i, score=1.0 - int(i) / 10, source="als") for i in ITEMS]
    )
    return ranking_pb2.RankRequest(**fields)


async def test_rank_filters_and_explains_with_features_from_the_feature_store(feature_store, pg_dsn, artifact_dir):
    service, servicer, channel, stub = await start_ranking(feature_store, pg_dsn, artifact_dir)
    try:
        minor = await stub.Rank(
            request(
                constraints=common_pb2.UserConstraints(
                    age=14, country="FR", blocked_categories=["Thriller"], seen_item_ids=["8"]
                ),
                explain=True,
                limit=10,
            ),
            timeout=5,
        )
        assert [i.item_id for i in minor.items] == ["1", "6", "7"]
        assert dict(minor.filtered) == {"seen": 1, "blocked-category": 1, "age": 1, "region": 1, "unavailable": 1}
        assert minor.served_by == "rules" and list(minor.degraded) == ["ranker-unavailable"]
        top = minor.items[0]
        assert top.explanation.candidate_score == pytest.approx(0.9)
        assert sum(top.explanation.contributions.values()) == pytest.approx(top.score, abs=1e-6)
        assert [i.rank for i in minor.items] == [1, 2, 3]

        adult_in_de = await stub.Rank(request(constraints=common_pb2.UserConstraints(age=30, country="de")), timeout=5)
        assert {i.item_id for i in adult_in_de.items} == {"1", "2", "3", "4", "6", "7", "8"}
        assert all(not i.HasField("explanation") for i in adult_in_de.items)

        comedy = await stub.Rank(request(category="Comedy", constraints=common_pb2.UserConstraints(age=30)), timeout=5)
        assert [i.item_id for i in comedy.items] == ["3", "7"]
        assert comedy.filtered["category"] == 4
    finally:
        await stop_ranking(service, servicer, channel)


async def test_feature_store_down_still_answers_degraded(pg_dsn, artifact_dir):
    service, servicer, channel, stub = await start_ranking(f"127.0.0.1:{free_port()}", pg_dsn, artifact_dir)
    try:
        adult = await stub.Rank(request(limit=3, constraints=common_pb2.UserConstraints(age=30)), timeout=5)
        assert "feature-store-unavailable" in adult.degraded
        assert [i.item_id for i in adult.items] == ["1", "2", "3"]
        # Without the item's age rating, a minor or a user of unknown age is shown nothing.
        minor = await stub.Rank(request(constraints=common_pb2.UserConstraints(age=12)), timeout=5)
        assert len(minor.items) == 0 and minor.filtered["age"] == len(ITEMS)
    finally:
        await stop_ranking(service, servicer, channel)


async def test_learned_ranker_from_the_registry_and_version_requests(
    feature_store, fresh_pg_dsn, artifact_dir, popularity_model
):
    store = DirectoryArtifactStore(artifact_dir)
    prefix = write_ranker(store, "ranker-20260101T000000Z", *popularity_model)
    with psycopg.connect(fresh_pg_dsn, autocommit=True) as conn:
        register_version(conn, "ranker-20260101T000000Z", "ranker", prefix, {}, {})
        promote(conn, "ranker", "ranker-20260101T000000Z")
    service, servicer, channel, stub = await start_ranking(feature_store, fresh_pg_dsn, artifact_dir)
    try:
        status = await stub.GetModelStatus(ranking_pb2.GetModelStatusRequest(), timeout=5)
        assert status.model_loaded and status.ranker_version == "ranker-20260101T000000Z"
        adult = common_pb2.UserConstraints(age=30, country="DE")
        ranked = await stub.Rank(request(constraints=adult, explain=True), timeout=5)
        assert ranked.served_by == "ranker" and ranked.ranker_version == "ranker-20260101T000000Z"
        assert list(ranked.degraded) == []
        assert "popularity_rel" in ranked.items[0].explanation.contributions
        # The model learned "popular first": item 1 is the most popular.
        assert ranked.items[0].item_id == "1"

        other = await stub.Rank(request(constraints=adult, ranker_version="ranker-20990101T000000Z"), timeout=5)
        assert other.served_by == "ranker" and list(other.degraded) == ["ranker-version-unavailable"]

        # An experiment's "rules" variant: the rule formula although a ranker serves, and
        # that is not reported as a degradation.
        rules = await stub.Rank(request(constraints=adult, force_rules=True, explain=True), timeout=5)
        assert rules.served_by == "rules" and rules.ranker_version == "" and list(rules.degraded) == []
        assert "popularity_rel" not in rules.items[0].explanation.contributions
    finally:
        await stop_ranking(service, servicer, channel)

    # The model's files disappear: a fresh server ranks with rules.
    store.delete_prefix(prefix)
    service, servicer, channel, stub = await start_ranking(feature_store, fresh_pg_dsn, artifact_dir)
    try:
        ranked = await stub.Rank(request(constraints=common_pb2.UserConstraints(age=30)), timeout=5)
        assert ranked.served_by == "rules" and "ranker-unavailable" in ranked.degraded
        assert len(ranked.items) == 6
    finally:
        await stop_ranking(service, servicer, channel)


async def test_bad_requests_and_the_error_drill(pg_dsn, artifact_dir):
    service, servicer, channel, stub = await start_ranking(f"127.0.0.1:{free_port()}", pg_dsn, artifact_dir)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as bad_user:
            await stub.Rank(request(user_id="no spaces"), timeout=5)
        assert bad_user.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "user_id" in bad_user.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as bad_item:
            await stub.Rank(
                request(candidates=[common_pb2.ScoredItem(item_id="ok"), common_pb2.ScoredItem(item_id="")]), timeout=5
            )
        assert "candidates[1].item_id" in bad_item.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as bad_limit:
            await stub.Rank(request(limit=-1), timeout=5)
        assert "limit" in bad_limit.value.details()
    finally:
        await stop_ranking(service, servicer, channel)

    service, servicer, channel, stub = await start_ranking(
        f"127.0.0.1:{free_port()}", pg_dsn, artifact_dir, inject_error_rate=1.0
    )
    try:
        with pytest.raises(grpc.aio.AioRpcError) as drill:
            await stub.Rank(request(), timeout=5)
        assert drill.value.code() is grpc.StatusCode.INTERNAL
        assert "inject_error_rate" in drill.value.details()
    finally:
        await stop_ranking(service, servicer, channel)


async def test_item_features_are_reused_for_the_cache_ttl_and_outlive_a_feature_store_outage(
    redis_url, pg_dsn, artifact_dir
):
    app, target = await start_feature_store(redis_url, pg_dsn)
    service, servicer, channel, stub = await start_ranking(target, pg_dsn, artifact_dir, item_cache_seconds=1.0)
    adult = common_pb2.UserConstraints(age=30)
    try:
        first = await stub.Rank(request(constraints=adult), timeout=5)
        assert "5" not in {i.item_id for i in first.items} and first.filtered["unavailable"] == 1

        # Item 5 comes back into the catalog: ranking sees it within the cache's TTL.
        client = redis.Redis.from_url(redis_url)
        client.hset(keys.item("5"), "available", b"1")
        client.close()
        cached = await stub.Rank(request(constraints=adult), timeout=5)
        assert "5" not in {i.item_id for i in cached.items}
        await asyncio.sleep(1.2)
        fresh = await stub.Rank(request(constraints=adult), timeout=5)
        assert "5" in {i.item_id for i in fresh.items} and "unavailable" not in fresh.filtered

        # The feature store goes away: what ranking read before still filters a minor.
        await app.service.stop()
        await asyncio.sleep(1.2)
        minor = await stub.Rank(request(constraints=common_pb2.UserConstraints(age=14, country="DE")), timeout=5)
        assert "feature-store-unavailable" in minor.degraded
        assert {i.item_id for i in minor.items} == {"1", "4", "5", "6", "7", "8"}
        assert minor.filtered["age"] == 2
    finally:
        await stop_ranking(service, servicer, channel)
        await app.close()


async def test_a_catalog_upsert_reaches_ranking_at_once_through_the_announcement(
    feature_store, redis_url, pg_dsn, artifact_dir
):
    service, servicer, channel, stub = await start_ranking(feature_store, pg_dsn, artifact_dir, item_cache_seconds=600)
    follower = asyncio.create_task(follow_catalog_changes(redis_url, servicer.item_cache))
    features_channel = grpc.aio.insecure_channel(feature_store)
    catalog = features_pb2_grpc.FeatureStoreStub(features_channel)
    adult = common_pb2.UserConstraints(age=30)
    try:
        await asyncio.sleep(0.3)  # subscribed
        first = await stub.Rank(request(constraints=adult), timeout=5)
        assert "1" in {i.item_id for i in first.items}
        # Item 1 is withdrawn through the feature store: far inside the 600 s TTL, ranking
        # stops showing it as soon as the announcement arrives.
        withdrawn = features_pb2.Item(item_id="1", categories=["Drama"], available=False)
        await catalog.UpsertItems(features_pb2.UpsertItemsRequest(items=[withdrawn]), timeout=5)
        for _ in range(50):
            ranked = await stub.Rank(request(constraints=adult), timeout=5)
            if "1" not in {i.item_id for i in ranked.items}:
                break
            await asyncio.sleep(0.05)
        assert "1" not in {i.item_id for i in ranked.items} and ranked.filtered["unavailable"] == 2
    finally:
        follower.cancel()
        await features_channel.close()
        await stop_ranking(service, servicer, channel)

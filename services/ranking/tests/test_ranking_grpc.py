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
from recfleet_ranking.settings import RankingSettings
from recfleet_runtime.ports import free_port
from recfleet_store import keys
from recfleet_store.artifacts import DirectoryArtifactStore
from recfleet_store.catalog_changes import follow_until_cancelled
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


async def start_serving_ranker(feature_store_target, dsn, artifact_dir, popularity_model):
    """Ranking with `ranker-20260101T000000Z` (the popularity model) registered and serving."""
    store = DirectoryArtifactStore(artifact_dir)
    prefix = write_ranker(store, "ranker-20260101T000000Z", *popularity_model)
    with psycopg.connect(dsn, autocommit=True) as conn:
        register_version(conn, "ranker-20260101T000000Z", "ranker", prefix, {}, {})
        promote(conn, "ranker", "ranker-20260101T000000Z")
    return await start_ranking(feature_store_target, dsn, artifact_dir)


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
        # No ranker is promoted in this registry: rules answer by decision, not degraded.
        assert minor.served_by == "rules" and list(minor.degraded) == []
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
    follower = asyncio.create_task(follow_until_cancelled(redis_url, servicer.item_cache))
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


def packed_request(unpacked: ranking_pb2.RankRequest, with_sources: bool = True) -> ranking_pb2.RankRequest:
    """The same request with its candidates as parallel arrays, answered packed."""
    packed = ranking_pb2.RankRequest()
    packed.CopyFrom(unpacked)
    del packed.candidates[:]
    packed.candidate_list.item_ids.extend([c.item_id for c in unpacked.candidates])
    packed.candidate_list.scores.extend([c.score for c in unpacked.candidates])
    if with_sources:
        packed.candidate_list.sources.extend([c.source for c in unpacked.candidates])
    packed.packed = True
    return packed


def unpacked_view(response: ranking_pb2.RankResponse):
    """What a packed answer says, in the shape of an unpacked one's items."""
    ranked = response.ranked
    explanations = list(response.explanations) or [ranking_pb2.Explanation()] * len(ranked.item_ids)
    sources = list(ranked.sources) or [""] * len(ranked.item_ids)
    items = []
    for rank, (i, s, src, e) in enumerate(zip(ranked.item_ids, ranked.scores, sources, explanations, strict=True), 1):
        item = ranking_pb2.RankedItem(item_id=i, rank=rank, score=s, source=src)
        if e.ByteSize():
            item.explanation.CopyFrom(e)
        items.append(item)
    return items


def same_answer_fields(a: ranking_pb2.RankResponse, b: ranking_pb2.RankResponse) -> None:
    assert (a.served_by, a.ranker_version, list(a.degraded), dict(a.filtered)) == (
        b.served_by,
        b.ranker_version,
        list(b.degraded),
        dict(b.filtered),
    )


async def test_packed_candidates_and_answers_equal_the_unpacked_ones(
    feature_store, fresh_pg_dsn, artifact_dir, popularity_model
):
    service, servicer, channel, stub = await start_serving_ranker(
        feature_store, fresh_pg_dsn, artifact_dir, popularity_model
    )
    with_duplicates = [
        *request().candidates,
        common_pb2.ScoredItem(item_id="3", score=0.95, source="popular"),
        common_pb2.ScoredItem(item_id="1", score=0.1, source="popular"),
    ]
    adult = common_pb2.UserConstraints(age=30, country="DE", seen_item_ids=["8"])
    try:
        for fields in (
            {"constraints": adult, "explain": True},
            {"constraints": adult, "explain": False, "limit": 4},
            {"constraints": adult, "explain": True, "force_rules": True, "candidates": with_duplicates},
            {"constraints": common_pb2.UserConstraints(age=14), "explain": True, "category": "Drama"},
        ):
            unpacked = request(**fields)
            expected = await stub.Rank(unpacked, timeout=5)
            assert expected.items and not expected.HasField("ranked") and not expected.explanations
            for with_sources in (True, False):
                answer = await stub.Rank(packed_request(unpacked, with_sources), timeout=5)
                assert not answer.items
                same_answer_fields(answer, expected)
                want = list(expected.items)
                if not with_sources:
                    for item in want:
                        item.source = ""
                assert unpacked_view(answer) == want
                assert len(answer.explanations) == (len(want) if unpacked.explain else 0)
        # Unpacked candidates answered packed, and packed candidates answered unpacked.
        answer = await stub.Rank(request(constraints=adult, packed=True), timeout=5)
        assert unpacked_view(answer) == list((await stub.Rank(request(constraints=adult), timeout=5)).items)
        old_style = packed_request(request(constraints=adult))
        old_style.packed = False
        assert (await stub.Rank(old_style, timeout=5)).items == (await stub.Rank(request(constraints=adult))).items
    finally:
        await stop_ranking(service, servicer, channel)


@pytest.mark.parametrize(
    ("candidate_list", "message"),
    [
        ({"item_ids": ["1", "2", "3", "4"], "scores": [0.1, 0.2, 0.3, float("nan")]}, "candidate_list.scores[3]"),
        ({"item_ids": ["1", "2", "3"], "scores": [0.1, float("inf"), 0.3]}, "candidate_list.scores[1]"),
        ({"item_ids": ["1", "2", "bad id"], "scores": [0.1, 0.2, 0.3]}, "candidate_list.item_ids[2]"),
        ({"item_ids": ["1", "2", "3"], "scores": [0.1, 0.2]}, "candidate_list.scores"),
        ({"item_ids": ["1", "2"], "scores": [0.1, 0.2], "sources": ["als"]}, "candidate_list.sources"),
        ({"item_ids": [str(i) for i in range(11)], "scores": [0.5] * 11}, "candidate_list.item_ids: at most 10"),
        (
            {"item_ids": ["1", "2"], "scores": [0.1, 0.2], "source_scores": [{"source": "als", "scores": [0.1]}]},
            "candidate_list.source_scores[0].scores: one score per item id, got 1 for 2 item ids",
        ),
        (
            {
                "item_ids": ["1", "2"],
                "scores": [0.1, 0.2],
                "source_scores": [{"source": "als", "scores": [0.1, 0.2]}, {"source": "", "scores": [0.1, 0.2]}],
            },
            "candidate_list.source_scores[1].source: must be 1-128 characters",
        ),
        (
            {
                "item_ids": ["1", "2"],
                "scores": [0.1, 0.2],
                "source_scores": [{"source": "ease", "scores": [0.1, 0.2]}, {"source": "ease", "scores": [0.3, 0.4]}],
            },
            "candidate_list.source_scores[1].source: 'ease' is given twice",
        ),
        (
            {
                "item_ids": ["1"],
                "scores": [0.1],
                "source_scores": [{"source": f"s{n}", "scores": [0.1]} for n in range(9)],
            },
            "candidate_list.source_scores: at most 8 sources, got 9",
        ),
        (
            {"item_ids": ["1"], "scores": [0.1], "source_scores": [{"source": "ease", "scores": [float("nan")]}]},
            "candidate_list.source_scores[0].scores[0]: must be a finite number",
        ),
    ],
)
async def test_malformed_packed_candidates_are_refused_naming_the_field(candidate_list, message, pg_dsn, artifact_dir):
    service, servicer, channel, stub = await start_ranking(
        f"127.0.0.1:{free_port()}", pg_dsn, artifact_dir, max_candidates=10
    )
    try:
        bad = ranking_pb2.RankRequest(
            user_id="u1", candidate_list=common_pb2.ScoredItemList(**candidate_list), packed=True
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Rank(bad, timeout=5)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert message in refused.value.details()
    finally:
        await stop_ranking(service, servicer, channel)


async def test_explanations_carry_each_candidates_source_scores(feature_store, pg_dsn, artifact_dir):
    service, servicer, channel, stub = await start_ranking(feature_store, pg_dsn, artifact_dir)
    ids = [*ITEMS, "3"]
    candidates = common_pb2.ScoredItemList(
        item_ids=ids,
        scores=[1.0 - int(i) / 10 for i in ITEMS] + [0.95],
        sources=["als", "als+ease", "ease", "als", "als", "als+ease", "ease", "als", "ease"],
        # Item "3" is given twice: its better score (0.95) comes with that entry's source scores.
        source_scores=[
            common_pb2.SourceScores(source="als", scores=[int(i) / 100 for i in ITEMS] + [0.5]),
            common_pb2.SourceScores(source="ease", scores=[int(i) / 10 for i in ITEMS] + [5.0]),
        ],
    )
    adult = common_pb2.UserConstraints(age=30, country="DE", seen_item_ids=["8"])
    try:
        packed = await stub.Rank(
            ranking_pb2.RankRequest(
                user_id="u1", candidate_list=candidates, constraints=adult, explain=True, packed=True
            ),
            timeout=5,
        )
        explained = dict(zip(packed.ranked.item_ids, packed.explanations, strict=True))
        assert "8" not in explained and "5" not in explained
        assert dict(explained["3"].source_scores) == pytest.approx({"als": 0.5, "ease": 5.0})
        for item_id in ("1", "2", "4", "6", "7"):
            assert dict(explained[item_id].source_scores) == pytest.approx(
                {"als": int(item_id) / 100, "ease": int(item_id) / 10}
            )
        assert dict(zip(packed.ranked.item_ids, packed.ranked.sources, strict=True))["3"] == "ease"

        unpacked = await stub.Rank(
            ranking_pb2.RankRequest(user_id="u1", candidate_list=candidates, constraints=adult, explain=True),
            timeout=5,
        )
        assert unpacked_view(packed) == list(unpacked.items)

        quiet = await stub.Rank(
            ranking_pb2.RankRequest(user_id="u1", candidate_list=candidates, constraints=adult, packed=True), timeout=5
        )
        assert not quiet.explanations
        plain = await stub.Rank(request(constraints=adult, explain=True), timeout=5)
        assert all(not item.explanation.source_scores for item in plain.items)
    finally:
        await stop_ranking(service, servicer, channel)


async def test_rank_batch_answers_each_request_as_rank_alone(
    feature_store, fresh_pg_dsn, artifact_dir, popularity_model
):
    service, servicer, channel, stub = await start_serving_ranker(
        feature_store, fresh_pg_dsn, artifact_dir, popularity_model
    )
    # One instant for the batch and each call alone: freshness moves with the clock, and a
    # millisecond can change a score's last float32 bit.
    servicer.pipeline.clock = lambda: 1_780_000_000.0
    adult = common_pb2.UserConstraints(age=30, country="DE")
    requests = [
        request(user_id="u1", constraints=adult, explain=True),
        request(user_id="bad user"),
        request(user_id="u2", constraints=common_pb2.UserConstraints(age=14), limit=3),
        packed_request(request(user_id="u3", constraints=adult, explain=True)),
        ranking_pb2.RankRequest(user_id="u4", candidate_list=common_pb2.ScoredItemList(item_ids=["1"], scores=[])),
        request(user_id="u5", constraints=adult, force_rules=True),
        request(user_id="u6", constraints=adult, ranker_version="ranker-20990101T000000Z"),
        request(user_id="u7", constraints=adult, candidates=[]),
        request(user_id="u8", constraints=adult, limit=-1),
        request(user_id="u9", constraints=common_pb2.UserConstraints(seen_item_ids=list(ITEMS))),
    ]
    try:
        batch = await stub.RankBatch(ranking_pb2.RankBatchRequest(requests=requests), timeout=5)
        assert len(batch.results) == len(requests)
        for entry, result in zip(requests, batch.results, strict=True):
            try:
                alone = await stub.Rank(entry, timeout=5)
            except grpc.aio.AioRpcError as error:
                assert (result.status.code, result.status.message) == (error.code().value[0], error.details())
                assert not result.HasField("response")
            else:
                assert result.status.code == grpc.StatusCode.OK.value[0]
                assert result.response == alone
        codes = [result.status.code for result in batch.results]
        assert codes.count(grpc.StatusCode.INVALID_ARGUMENT.value[0]) == 3
        served = [result.response.served_by for result in batch.results if result.status.code == 0]
        assert served.count("ranker") >= 3  # more than one entry shared the model
        assert (await stub.RankBatch(ranking_pb2.RankBatchRequest(), timeout=5)).results == []
    finally:
        await stop_ranking(service, servicer, channel)


async def test_rank_batch_without_the_feature_store_degrades_only_entries_that_needed_it(pg_dsn, artifact_dir):
    service, servicer, channel, stub = await start_ranking(f"127.0.0.1:{free_port()}", pg_dsn, artifact_dir)
    requests = [
        request(user_id="u1", constraints=common_pb2.UserConstraints(age=30), limit=3),
        request(user_id="u2", candidates=[]),
        packed_request(request(user_id="u3", constraints=common_pb2.UserConstraints(age=12))),
    ]
    try:
        batch = await stub.RankBatch(ranking_pb2.RankBatchRequest(requests=requests), timeout=5)
        assert [list(result.response.degraded) for result in batch.results] == [
            ["feature-store-unavailable"],
            [],
            ["feature-store-unavailable"],
        ]
        for entry, result in zip(requests, batch.results, strict=True):
            assert result.response == await stub.Rank(entry, timeout=5)
    finally:
        await stop_ranking(service, servicer, channel)


async def test_rank_batch_reads_more_items_than_one_read_may_carry(redis_url, pg_dsn, artifact_dir):
    """On a cold cache the entries together lack more items than one GetItemFeatures may
    ask for (the feature store's limit, ranking's max_candidates): the batch reads them in
    several calls, degrading nothing."""
    fill_redis(redis_url)
    features = FeatureStoreApp(
        FeatureSettings(
            redis_url=redis_url,
            postgres_dsn=pg_dsn,
            grpc_port=0,
            metrics_port=0,
            drain_seconds=0,
            grace_seconds=0,
            max_items_per_read=5,
        )
    )
    port = await features.service.start("127.0.0.1:0")
    assert await features.warm_up()
    await features.service.health.set_serving(True)
    service, servicer, channel, stub = await start_ranking(f"127.0.0.1:{port}", pg_dsn, artifact_dir, max_candidates=5)
    adult = common_pb2.UserConstraints(age=30, country="DE")
    requests = [
        request(user_id="u1", constraints=adult, candidates=request().candidates[:5]),
        request(user_id="u2", constraints=adult, candidates=request().candidates[3:]),
        request(user_id="u3", constraints=adult, candidates=request().candidates[1:4]),
    ]
    try:
        batch = await stub.RankBatch(ranking_pb2.RankBatchRequest(requests=requests), timeout=5)
        assert [list(result.response.degraded) for result in batch.results] == [[]] * 3
        assert {i.item_id for i in batch.results[1].response.items} == {"4", "6", "7", "8"}
        for entry, result in zip(requests, batch.results, strict=True):
            assert result.response == await stub.Rank(entry, timeout=5)
    finally:
        await stop_ranking(service, servicer, channel)
        await features.service.stop()
        await features.close()

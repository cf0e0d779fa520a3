"""Cold start: a new user's preferred categories get their share of the ranked list, even
from a learned ranker that ranks them away, with the diversity rules still holding."""

from collections import Counter

import orjson
import pytest
import redis
from recfleet.common.v1 import common_pb2
from recfleet.ranking.v1 import ranking_pb2
from recfleet_models.ranking.cold_start import ColdStartPolicy
from recfleet_models.ranking.diversity import PREFERRED_QUOTA
from recfleet_models.ranking.features import Candidate, UserContext
from recfleet_ranking.pipeline import RankingPipeline, RankQuery
from recfleet_store import keys

from .test_ranking_grpc import start_feature_store, start_serving_ranker, stop_ranking

NOW = 1_790_000_000
OTHER_CATEGORIES = ["Drama", "Comedy", "Action", "Thriller", "Crime", "Romance", "Sci-Fi", "War", "Western", "Horror"]
ANIMATION_PRIMARIES = ["Animation", "Adventure", "Children", "Fantasy", "Musical"]


def catalog() -> dict[str, dict]:
    """30 popular items of other categories, then 15 little-known animated films whose
    primary categories vary (Animation first, or second after another one)."""
    items: dict[str, dict] = {}
    for i in range(30):
        items[f"p{i}"] = {"categories": [OTHER_CATEGORIES[i % 10]], "popularity": 0.95 - i * 0.01}
    for i in range(15):
        primary = ANIMATION_PRIMARIES[i % 5]
        categories = ["Animation"] if primary == "Animation" else [primary, "Animation"]
        items[f"a{i}"] = {"categories": categories, "popularity": 0.02 + i * 0.01}
    return items


ITEMS = catalog()


def candidates() -> list[Candidate]:
    """Retrieval order: popular items first, as the cold-start sources interleave them."""
    return [
        Candidate(
            item_id,
            1.0 - index / 100,
            "category-popular" if item_id.startswith("a") else "popular",
            categories=tuple(item["categories"]),
            age_rating=0,
            popularity=item["popularity"],
            published_at=NOW - 86_400 * 200,
        )
        for index, (item_id, item) in enumerate(ITEMS.items())
    ]


def animated(item_ids) -> int:
    return sum("Animation" in ITEMS[i]["categories"] for i in item_ids)


def primaries(item_ids) -> Counter:
    return Counter(ITEMS[i]["categories"][0] for i in item_ids)


def user(interaction_count: int) -> UserContext:
    return UserContext(
        "u1", age=30, preferred_categories=frozenset({"Animation"}), features={"interaction_count": interaction_count}
    )


def test_a_cold_user_gets_half_of_the_top_ten_from_the_preferred_category(popularity_ranker):
    pipeline = RankingPipeline()
    warm = pipeline.rank(RankQuery(user(40), candidates(), limit=20), popularity_ranker, now=NOW)
    assert warm.served_by == "ranker"
    # The learned ranker alone ranks the little-known animated films away.
    assert animated(e.item_id for e in warm.items[:10]) == 0
    cold = pipeline.rank(RankQuery(user(0), candidates(), limit=20, explain=True), popularity_ranker, now=NOW)
    ids = [e.item_id for e in cold.items]
    assert cold.served_by == "ranker"
    assert animated(ids[:10]) >= 5 and animated(ids[10:20]) >= 5
    assert ids[0].startswith("a")
    assert max(primaries(ids).values()) <= 3
    assert all(e.source == "category-popular" for e in cold.items if e.item_id.startswith("a"))
    assert any(PREFERRED_QUOTA in e.rules for e in cold.items)
    # The caller may say a user with history is cold.
    said = pipeline.rank(RankQuery(user(40), candidates(), limit=20, cold_start=True), popularity_ranker, now=NOW)
    assert [e.item_id for e in said.items] == ids
    # The quota can be turned off.
    off = RankingPipeline(cold_start=ColdStartPolicy(preferred_share=0.0))
    assert animated(e.item_id for e in off.rank(RankQuery(user(0), candidates(), limit=10), None, now=NOW).items) < 5


def fill_catalog(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    for item_id, item in ITEMS.items():
        values = {
            "creator": "",
            "published_at": NOW - 86_400 * 200,
            "age_rating": 0,
            "regions": [],
            "available": 1,
            "popularity_7d": 0.1,
            **item,
        }
        client.hset(keys.item(item_id), mapping={k: orjson.dumps(v) for k, v in values.items()})
    client.close()


@pytest.fixture
async def cold_start_feature_store(redis_url, pg_dsn):
    app, target = await start_feature_store(redis_url, pg_dsn)
    fill_catalog(redis_url)
    yield target
    await app.service.stop()
    await app.close()


def rank_request(interaction_count: int, **fields) -> ranking_pb2.RankRequest:
    listed = candidates()
    return ranking_pb2.RankRequest(
        user_id="newcomer-1",
        candidate_list=common_pb2.ScoredItemList(
            item_ids=[c.item_id for c in listed], scores=[c.score for c in listed], sources=[c.source for c in listed]
        ),
        packed=True,
        limit=20,
        constraints=common_pb2.UserConstraints(age=30, preferred_categories=["Animation"]),
        user_features={"interaction_count": float(interaction_count)},
        **fields,
    )


async def test_rank_gives_a_cold_user_their_preferred_category_over_grpc(
    cold_start_feature_store, fresh_pg_dsn, artifact_dir, popularity_model
):
    service, servicer, channel, stub = await start_serving_ranker(
        cold_start_feature_store, fresh_pg_dsn, artifact_dir, popularity_model
    )
    try:
        warm = await stub.Rank(rank_request(40), timeout=5)
        assert warm.served_by == "ranker"
        assert animated(warm.ranked.item_ids[:10]) == 0

        cold = await stub.Rank(rank_request(0, explain=True), timeout=5)
        ids = list(cold.ranked.item_ids)
        assert cold.served_by == "ranker" and list(cold.degraded) == []
        assert len(ids) == 20
        assert animated(ids[:10]) >= 5
        assert max(primaries(ids).values()) <= 3
        sources = dict(zip(ids, cold.ranked.sources, strict=True))
        assert {sources[i] for i in ids if i.startswith("a")} == {"category-popular"}
        assert any(PREFERRED_QUOTA in e.rules for e in cold.explanations)

        # A user with history whom the caller marks cold (no personal vector) gets it too.
        marked = await stub.Rank(rank_request(40, cold_start=True), timeout=5)
        assert list(marked.ranked.item_ids) == ids
    finally:
        await stop_ranking(service, servicer, channel)

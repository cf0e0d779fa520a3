"""Concurrent recommendation requests share their downstream calls (batched RPCs), and
each still gets exactly the answer it would get alone."""

from __future__ import annotations

import asyncio

import pytest
import redis
from gateway_test_support import http_client, running_app

USERS = [f"warm-{n}" for n in range(12)]


def lists(bodies: list[dict]) -> list[list[tuple[str, float, str]]]:
    return [[(i["item_id"], i["score"], i["source"]) for i in body["items"]] for body in bodies]


async def recommend_all(client, users: list[str]) -> list[dict]:
    replies = await asyncio.gather(*(client.get("/v1/recommendations", params={"user_id": u}) for u in users))
    assert [r.status_code for r in replies] == [200] * len(users), [r.text for r in replies]
    return [r.json() for r in replies]


@pytest.fixture
def slow_features(fleet):
    # Requests pile up behind the first feature read, as they do under load.
    fleet.features.servicer.user_features_delay = 0.05
    return fleet


async def test_concurrent_requests_share_calls_and_get_the_lists_they_would_get_alone(
    slow_features, gateway_settings, redis_url
):
    fleet = slow_features
    async with running_app(gateway_settings) as app, http_client(app) as client:
        together = await recommend_all(client, USERS)
    features, ranking = fleet.features.servicer.calls, fleet.ranking.servicer.calls
    assert features.count("GetUserFeatures") == len(USERS)
    assert ranking.count("Rank") == len(USERS)
    # Every call went out batched, and the batches carried several requests each.
    assert 0 < features.count("GetUserFeaturesBatch") < len(USERS)
    assert 0 < ranking.count("RankBatch") < len(USERS)
    for shard in fleet.shards:
        assert 0 < shard.servicer.calls.count("RetrieveBatch") < shard.servicer.calls.count("Retrieve") == len(USERS)
    assert all(fleet.ranking.servicer.packed), "ranking is asked for packed answers"

    redis.Redis.from_url(redis_url).flushdb()
    alone_settings = gateway_settings.model_copy(update={"coalesce_max_batch": 1})
    async with running_app(alone_settings) as app, http_client(app) as client:
        alone = [(await recommend_all(client, [user]))[0] for user in USERS]
    assert "RankBatch" not in fleet.ranking.servicer.calls[-len(USERS) :]
    assert lists(together) == lists(alone)
    assert all(body["served_by"] == "rules" and body["degraded"] == [] for body in together)
    assert len({tuple(items) for items in lists(together)}) > 1, "each user gets their own list"


async def test_one_failing_entry_does_not_fail_its_batch(slow_features, client):
    users = ["warm-old-1", *USERS[:5], "warm-old-2"]
    bodies = await recommend_all(client, users)
    for user, body in zip(users, bodies, strict=True):
        if user.startswith("warm-old-"):
            # Every shard refused the old version for this user alone: cold-start candidates.
            assert "candidate-gen-shard-0-version-mismatch" in body["degraded"]
            assert body["cold_start"] is True
        else:
            assert body["degraded"] == [] and body["items"]
    assert 0 < slow_features.shards[0].servicer.calls.count("RetrieveBatch") < len(users)


async def test_servers_without_batched_rpcs_get_unary_calls(slow_features, client):
    servers = [slow_features.features, slow_features.ranking, *slow_features.shards]
    for server in servers:
        server.servicer.batches_unimplemented = True
    bodies = await recommend_all(client, USERS[:6])
    assert all(body["degraded"] == [] and body["items"] for body in bodies)
    assert slow_features.ranking.servicer.calls.count("Rank") == 6
    # Only the batches already out when the first refusal came back were tried.
    assert slow_features.ranking.servicer.calls.count("RankBatch") <= 2


@pytest.mark.parametrize("whole_batch", [False, True], ids=["entries-fail", "batch-fails"])
async def test_observers_and_metrics_count_requests_not_batches(slow_features, app, client, whole_batch):
    """The canary analysis and the client metrics see each request's outcome, whether its
    entry failed or the batch that carried it did."""
    import grpc
    from recfleet_runtime.grpcclient import add_call_observer, remove_call_observer
    from recfleet_runtime.metrics import GRPC_CLIENT_HANDLED
    from recfleet_runtime.resilience import CircuitBreaker

    # Every request reaches ranking: the default breaker opens after 5 failures, and the
    # requests of a batch that leaves after that would not be sent at all.
    ranking_client = app.state.gateway.fleet.ranking.stable
    ranking_client.breaker = CircuitBreaker(ranking_client.breaker.dependency, failure_threshold=100)

    seen: list[tuple[str, bool]] = []

    def observer(name: str, track: str, ok: bool, seconds: float) -> None:
        seen.append((name, ok))

    def internal_rank_errors() -> float:
        value = GRPC_CLIENT_HANDLED.labels(
            "recfleet.ranking.v1.RankingService", "Rank", "INTERNAL", "ranking", "stable"
        )._value.get()
        return float(value)

    ranking = slow_features.ranking.servicer
    if whole_batch:
        ranking.failing_batches = grpc.StatusCode.INTERNAL
    else:
        ranking.failing = grpc.StatusCode.INTERNAL
    before = internal_rank_errors()
    add_call_observer(observer)
    try:
        bodies = await recommend_all(client, USERS[:8])
    finally:
        remove_call_observer(observer)
    assert all("ranking-unavailable" in body["degraded"] for body in bodies)
    assert 0 < ranking.calls.count("RankBatch") < 8
    assert [ok for name, ok in seen if name == "ranking"] == [False] * 8
    assert internal_rank_errors() - before == 8

"""Model promotion through REST: the gates (an ALS index built for the fleet's shards,
validation metrics no worse than the serving version's beyond the margin), `force`, cached
lists that follow a promotion or rollback, and users with history served cold-start
lists that say why."""

from __future__ import annotations

import asyncio
import time

import grpc
import psycopg
import pytest
import redis
from gateway_test_support import assert_problem, http_client, running_app
from prometheus_client import REGISTRY
from recfleet_store import keys, registry

ALS_A = "als-20261201T000000Z-a"
ALS_B = "als-20261202T000000Z-b"


@pytest.fixture
def pg_dsn(fresh_pg_dsn):
    """A database per test: these tests change which versions serve."""
    return fresh_pg_dsn


def register(dsn: str, version: str, metrics: dict | None = None, shards: int | None = 2) -> None:
    """A registered version; an ALS one with its index recorded for `shards` (None: none)."""
    kind = version.split("-", 1)[0]
    with psycopg.connect(dsn, autocommit=True) as conn:
        registry.register_version(conn, version, kind, f"models/{kind}/{version}/", metrics or {}, {})
        if kind == "als" and shards is not None:
            registry.record_index(
                conn, version, shard_count=shards, index_type="flat", dimension=4, item_count=60, built_at="2026-12-01"
            )


async def serving(client, kind: str = "als") -> str | None:
    return (await client.get("/admin/v1/models")).json()["serving"][kind]


async def promote(client, kind: str, version: str, **body):
    return await client.post(f"/admin/v1/models/{kind}/promote", json={"version": version, **body})


async def recommend(client, user_id: str) -> dict:
    reply = await client.get("/v1/recommendations", params={"user_id": user_id, "limit": 5})
    assert reply.status_code == 200, reply.text
    return reply.json()


def fallbacks(reason: str) -> float:
    return REGISTRY.get_sample_value("recfleet_gateway_cold_start_fallbacks_total", {"reason": reason}) or 0.0


# -- gates ----------------------------------------------------------------------------------


async def test_an_als_version_without_an_index_is_refused_and_nothing_changes(client, pg_dsn, redis_url):
    register(pg_dsn, ALS_A)
    register(pg_dsn, ALS_B, shards=None)
    assert (await promote(client, "als", ALS_A)).status_code == 200

    body = assert_problem(await promote(client, "als", ALS_B), 409)
    assert body["type"].endswith("/promotion-refused")
    assert f"build-index --version {ALS_B} --shards 2" in body["detail"]
    assert len(body["reasons"]) == 1 and "index is not built" in body["reasons"][0]
    assert await serving(client) == ALS_A
    assert redis.Redis.from_url(redis_url).get(keys.SERVING_VERSION) == ALS_A.encode()
    listed = {v["version"]: v for v in (await client.get("/admin/v1/models")).json()["versions"]}
    assert listed[ALS_B]["index"] is None and listed[ALS_B]["refusals"] == body["reasons"]
    assert listed[ALS_A]["index"]["shard_count"] == 2 and listed[ALS_A]["refusals"] == []


async def test_an_index_built_for_another_shard_count_is_refused(client, pg_dsn):
    register(pg_dsn, ALS_A, shards=3)
    body = assert_problem(await promote(client, "als", ALS_A), 409)
    assert "3 shards but the fleet serves 2" in body["detail"]
    assert await serving(client) is None


async def test_force_promotes_anyway_and_the_audit_log_says_so(client, pg_dsn, redis_url):
    register(pg_dsn, ALS_A)
    register(pg_dsn, ALS_B, shards=None)
    await promote(client, "als", ALS_A)
    assert_problem(await promote(client, "als", ALS_B, force="yes"), 400)

    reply = await promote(client, "als", ALS_B, force=True)
    assert reply.status_code == 200, reply.text
    change = reply.json()
    assert (change["serving"], change["previous"], change["forced"]) == (ALS_B, ALS_A, True)
    assert "index is not built" in change["overridden"][0]
    assert await serving(client) == ALS_B
    assert redis.Redis.from_url(redis_url).get(keys.SERVING_VERSION) == ALS_B.encode()
    [entry, *_] = (await client.get("/admin/v1/audit", params={"action": "model.promote"})).json()["entries"]
    assert entry["before"] == {"serving": ALS_A}
    assert entry["after"] == {"serving": ALS_B, "forced": True, "overridden": change["overridden"]}


async def test_a_version_whose_metrics_regress_beyond_the_margin_is_refused(client, pg_dsn):
    register(pg_dsn, "ranker-20261201T000000Z-a", {"ndcg@10": 0.40})
    register(pg_dsn, "ranker-20261202T000000Z-b", {"ndcg@10": 0.37})
    register(pg_dsn, "ranker-20261203T000000Z-c", {"ndcg@10": 0.385})
    assert (await promote(client, "ranker", "ranker-20261201T000000Z-a")).status_code == 200

    body = assert_problem(await promote(client, "ranker", "ranker-20261202T000000Z-b"), 409)
    assert body["reasons"] == [
        "ndcg@10 0.3700 is 0.0300 below serving ranker-20261201T000000Z-a's 0.4000 (at most 0.02 allowed)"
    ]
    assert await serving(client, "ranker") == "ranker-20261201T000000Z-a"

    within = await promote(client, "ranker", "ranker-20261203T000000Z-c")
    assert within.status_code == 200, within.text
    assert within.json()["forced"] is False and await serving(client, "ranker") == "ranker-20261203T000000Z-c"


async def test_als_versions_are_compared_on_the_metric_both_recorded(client, pg_dsn):
    register(pg_dsn, ALS_A, {"holdout_ndcg@10": 0.30, "train_seconds": 9.0})
    register(pg_dsn, ALS_B, {"holdout_ndcg@10": 0.25, "train_seconds": 1.0})
    await promote(client, "als", ALS_A)
    body = assert_problem(await promote(client, "als", ALS_B), 409)
    assert body["reasons"][0].startswith("holdout_ndcg@10 0.2500 is 0.0500 below")
    # Rolling back is never gated: it goes back to a version that served.
    assert (await promote(client, "als", ALS_B, force=True)).status_code == 200
    back = await client.post("/admin/v1/models/als/rollback")
    assert back.status_code == 200 and back.json()["serving"] == ALS_A


# -- cached lists follow the model -------------------------------------------------------


async def test_a_cached_list_follows_promotion_and_rollback(client, fleet, pg_dsn):
    register(pg_dsn, ALS_A)
    register(pg_dsn, ALS_B)
    fleet.serve_version(ALS_A)
    await promote(client, "als", ALS_A)
    first = await recommend(client, "warm-1")
    assert first["model_version"] == f"{ALS_A}+rules" and first["degraded"] == []
    ranked = len(fleet.ranking.servicer.requests)
    assert (await recommend(client, "warm-1"))["model_version"] == f"{ALS_A}+rules"
    assert len(fleet.ranking.servicer.requests) == ranked  # answered from the cache

    fleet.serve_version(ALS_B)
    assert (await promote(client, "als", ALS_B)).status_code == 200
    assert (await recommend(client, "warm-1"))["model_version"] == f"{ALS_B}+rules"

    fleet.serve_version(ALS_A)
    assert (await client.post("/admin/v1/models/als/rollback")).status_code == 200
    assert (await recommend(client, "warm-1"))["model_version"] == f"{ALS_A}+rules"


async def test_a_list_made_by_the_old_version_is_not_cached_under_the_new_one(client, fleet, pg_dsn):
    register(pg_dsn, ALS_A)
    register(pg_dsn, ALS_B)
    fleet.serve_version(ALS_A)
    await promote(client, "als", ALS_A)
    # Promoted in the registry, but the fleet still serves A (shards reload within seconds).
    await promote(client, "als", ALS_B)
    assert (await recommend(client, "warm-2"))["model_version"] == f"{ALS_A}+rules"
    fleet.serve_version(ALS_B)
    assert (await recommend(client, "warm-2"))["model_version"] == f"{ALS_B}+rules"


async def test_another_replica_follows_a_promotion_within_its_refresh(client, fleet, pg_dsn, gateway_settings):
    register(pg_dsn, ALS_A)
    register(pg_dsn, ALS_B)
    fleet.serve_version(ALS_A)
    await promote(client, "als", ALS_A)
    async with running_app(gateway_settings) as other, http_client(other) as replica:
        # The replica caches the user's list under A (it may first need to read A).
        deadline = time.monotonic() + 10
        while (await recommend(replica, "warm-3"))["model_version"] != f"{ALS_A}+rules":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        fleet.serve_version(ALS_B)
        await promote(client, "als", ALS_B)
        deadline = time.monotonic() + 10
        while (body := await recommend(replica, "warm-3"))["model_version"] != f"{ALS_B}+rules":
            assert body["model_version"] == f"{ALS_A}+rules" and time.monotonic() < deadline
            await asyncio.sleep(0.1)


# -- honest degradation -------------------------------------------------------------------


async def test_a_user_whose_vectors_are_of_another_version_is_told(client):
    before = fallbacks("user-vector-stale")
    body = await recommend(client, "stale-1")
    assert body["cold_start"] is True and body["items"]
    assert body["degraded"] == ["user-vector-stale"]
    assert fallbacks("user-vector-stale") == before + 1


async def test_shards_refusing_the_vectors_version_is_named(client):
    before = fallbacks("user-vector-stale")
    body = await recommend(client, "warm-old-1")
    assert body["cold_start"] is True and body["items"]
    assert body["degraded"] == [
        "candidate-gen-shard-0-version-mismatch",
        "candidate-gen-shard-1-version-mismatch",
        "user-vector-stale",
    ]
    assert fallbacks("user-vector-stale") == before + 1


async def test_every_shard_refusing_is_named(client, fleet):
    for shard in fleet.shards:
        shard.servicer.failing = grpc.StatusCode.FAILED_PRECONDITION
    body = await recommend(client, "warm-4")
    assert body["cold_start"] is True
    assert body["degraded"][-1] == "user-vector-stale"


async def test_retrieval_that_finds_nothing_is_named(client, fleet):
    for shard in fleet.shards:
        shard.servicer.items = []
    before = fallbacks("no-personal-candidates")
    body = await recommend(client, "warm-5")
    assert body["cold_start"] is True and body["items"]
    assert body["degraded"] == ["no-personal-candidates"]
    assert fallbacks("no-personal-candidates") == before + 1


async def test_a_new_user_on_the_cold_start_path_is_not_degraded(client):
    body = await recommend(client, "newcomer-1")
    assert body["cold_start"] is True and body["degraded"] == []

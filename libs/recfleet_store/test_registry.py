"""The model registry against real Postgres and Redis."""

from __future__ import annotations

import re

import psycopg
import pytest
import redis

from recfleet_store import keys, registry
from recfleet_store.artifacts import DirectoryArtifactStore


@pytest.fixture
def conn(fresh_pg_dsn):
    with psycopg.connect(fresh_pg_dsn, autocommit=True) as connection:
        yield connection


def register(conn, version, kind="als"):
    registry.register_version(conn, version, kind, f"models/{kind}/{version}/", {"ndcg@10": 0.3}, {"factors": 8})


def statuses(conn, kind="als"):
    return {row["version"]: row["status"] for row in registry.list_versions(conn, kind)}


def test_new_version_name_is_kind_utc_time_and_hex():
    name = registry.new_version_name("als")
    assert re.fullmatch(r"als-\d{8}T\d{6}Z-[0-9a-f]{4}", name)
    assert registry.new_version_name("als") != name
    with pytest.raises(ValueError):
        registry.new_version_name("bogus")


def test_register_is_candidate_and_listed_with_metrics(conn):
    register(conn, "als-1")
    register(conn, "ranker-1", kind="ranker")
    [row] = registry.list_versions(conn, "als")
    assert row["status"] == "candidate"
    assert row["metrics"] == {"ndcg@10": 0.3} and row["params"] == {"factors": 8}
    assert row["artifact_uri"] == "models/als/als-1/"
    assert {r["version"] for r in registry.list_versions(conn)} == {"als-1", "ranker-1"}
    assert registry.serving_version(conn, "als") is None
    with pytest.raises(ValueError, match="already registered"):
        register(conn, "als-1")


def test_promote_retires_previous_and_publishes_to_redis(conn, redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    register(conn, "als-1")
    register(conn, "als-2")
    assert registry.promote(conn, "als", "als-1", client) is None
    assert client.get(keys.SERVING_VERSION) == "als-1"
    assert registry.promote(conn, "als", "als-2", client) == "als-1"
    assert registry.serving_version(conn, "als") == "als-2"
    assert client.get(keys.SERVING_VERSION) == "als-2"
    assert statuses(conn) == {"als-1": "retired", "als-2": "serving"}
    assert registry.get_version(conn, "als-2")["promoted_at"] is not None


def test_promote_refuses_unknown_and_wrong_kind(conn):
    register(conn, "ranker-1", kind="ranker")
    with pytest.raises(ValueError, match="unknown"):
        registry.promote(conn, "als", "als-missing")
    with pytest.raises(ValueError, match="ranker version"):
        registry.promote(conn, "als", "ranker-1")
    assert registry.serving_version(conn, "als") is None


def test_promote_refuses_als_version_without_index(conn, artifact_dir):
    store = DirectoryArtifactStore(artifact_dir)
    register(conn, "als-1")
    with pytest.raises(ValueError, match="no FAISS index"):
        registry.promote(conn, "als", "als-1", artifact_store=store)
    store.put_bytes("models/als/als-1/index/manifest.json", b"{}")
    assert registry.promote(conn, "als", "als-1", artifact_store=store) is None


def test_rollback_walks_back_through_promotions(conn, redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    for name in ("als-1", "als-2", "als-3"):
        register(conn, name)
        registry.promote(conn, "als", name, client)
    assert registry.rollback(conn, "als", client) == "als-2"
    assert client.get(keys.SERVING_VERSION) == "als-2"
    assert statuses(conn) == {"als-1": "retired", "als-2": "serving", "als-3": "candidate"}
    assert registry.rollback(conn, "als", client) == "als-1"
    assert registry.serving_version(conn, "als") == "als-1"
    with pytest.raises(ValueError, match="no retired"):
        registry.rollback(conn, "als", client)
    assert registry.serving_version(conn, "als") == "als-1"


def test_ranker_promotion_leaves_the_als_redis_key_alone(conn, redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    register(conn, "ranker-1", kind="ranker")
    registry.promote(conn, "ranker", "ranker-1", client)
    assert client.get(keys.SERVING_VERSION) is None
    assert client.get(keys.serving_version_key("ranker")) == "ranker-1"
    assert registry.serving_version(conn, "ranker") == "ranker-1"


GATES = registry.PromotionGates(shard_count=2, max_regression=0.02)


def record(conn, version, shards=2):
    return registry.record_index(
        conn, version, shard_count=shards, index_type="flat", dimension=8, item_count=100, built_at="2026-12-01"
    )


def test_record_index_keeps_the_training_params(conn):
    register(conn, "als-1")
    assert record(conn, "als-1")
    assert not record(conn, "als-missing")
    row = registry.get_version(conn, "als-1")
    assert row["params"]["factors"] == 8
    assert registry.built_index(row) == {
        "shard_count": 2,
        "index_type": "flat",
        "dimension": 8,
        "item_count": 100,
        "built_at": "2026-12-01",
    }


def test_gated_promotion_refuses_an_als_version_without_an_index_for_the_fleet(conn, redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    register(conn, "als-1")
    with pytest.raises(registry.PromotionRefused, match="build-index --version als-1 --shards 2") as refused:
        registry.promote_gated(conn, "als", "als-1", GATES, client)
    assert len(refused.value.reasons) == 1
    record(conn, "als-1", shards=3)
    with pytest.raises(registry.PromotionRefused, match="3 shards but the fleet serves 2"):
        registry.promote_gated(conn, "als", "als-1", GATES, client)
    assert registry.serving_version(conn, "als") is None and client.get(keys.SERVING_VERSION) is None
    record(conn, "als-1")
    done = registry.promote_gated(conn, "als", "als-1", GATES, client)
    assert done == registry.Promotion("als", "als-1", None)
    assert client.get(keys.SERVING_VERSION) == "als-1"


def test_gated_promotion_compares_the_main_metric_within_the_margin(conn):
    metrics = {"ranker-1": {"ndcg@10": 0.5}, "ranker-2": {"ndcg@10": 0.48}, "ranker-3": {"ndcg@10": 0.45}}
    for version, scores in metrics.items():
        registry.register_version(conn, version, "ranker", f"models/ranker/{version}/", scores, {})
    registry.promote_gated(conn, "ranker", "ranker-1", GATES)
    # A drop of exactly the margin passes.
    assert registry.promote_gated(conn, "ranker", "ranker-2", GATES).previous == "ranker-1"
    with pytest.raises(registry.PromotionRefused, match=r"ndcg@10 0.4500 is 0.0300 below serving ranker-2's 0.4800"):
        registry.promote_gated(conn, "ranker", "ranker-3", GATES)
    assert registry.serving_version(conn, "ranker") == "ranker-2"
    forced = registry.promote_gated(conn, "ranker", "ranker-3", GATES, force=True)
    assert forced.forced and forced.previous == "ranker-2" and "ndcg@10" in forced.overridden[0]
    assert registry.serving_version(conn, "ranker") == "ranker-3"


def test_versions_are_compared_on_the_first_metric_both_have():
    gates = registry.PromotionGates(shard_count=1, max_regression=0.01)

    def row(version, metrics):
        return {"version": version, "kind": "ranker", "metrics": metrics, "params": {}}

    serving = row("r-1", {"ndcg@10": 0.5, "holdout_ndcg@10": 0.3})
    assert registry.refusals(row("r-2", {"holdout_ndcg@10": 0.2}), serving, gates)[0].startswith("holdout_ndcg@10")
    assert registry.refusals(row("r-2", {"recall@10": 0.0}), serving, gates) == []
    assert registry.refusals(row("r-2", {"ndcg@10": 0.6, "holdout_ndcg@10": 0.1}), serving, gates) == []
    assert registry.refusals(row("r-2", {"ndcg@10": True}), serving, gates) == []
    assert registry.refusals(serving, serving, gates) == []
    assert registry.refusals(row("r-2", {"ndcg@10": 0.1}), None, gates) == []


async def test_serving_version_async(fresh_pg_dsn):
    with psycopg.connect(fresh_pg_dsn, autocommit=True) as conn:
        register(conn, "als-1")
        registry.promote(conn, "als", "als-1")
    async with await psycopg.AsyncConnection.connect(fresh_pg_dsn, autocommit=True) as aconn:
        assert await registry.serving_version_async(aconn, "als") == "als-1"
        assert await registry.serving_version_async(aconn, "ranker") is None

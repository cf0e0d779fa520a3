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
    assert registry.serving_version(conn, "ranker") == "ranker-1"


async def test_serving_version_async(fresh_pg_dsn):
    with psycopg.connect(fresh_pg_dsn, autocommit=True) as conn:
        register(conn, "als-1")
        registry.promote(conn, "als", "als-1")
    async with await psycopg.AsyncConnection.connect(fresh_pg_dsn, autocommit=True) as aconn:
        assert await registry.serving_version_async(aconn, "als") == "als-1"
        assert await registry.serving_version_async(aconn, "ranker") is None

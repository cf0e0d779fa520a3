"""Ranker versions served from the registry: serving, pinned, on-demand, promotion and rollback."""

import asyncio

import psycopg
from recfleet_models.ranking.artifacts import artifact_prefix, write_ranker
from recfleet_ranking.adapters.models import RankerVersions
from recfleet_store.artifacts import DirectoryArtifactStore
from recfleet_store.registry import promote, register_version, rollback


def publish(store, dsn, version, model, serve=True):
    text, meta = model
    prefix = write_ranker(store, version, text, meta)
    with psycopg.connect(dsn, autocommit=True) as conn:
        register_version(conn, version, "ranker", prefix, {"ndcg@10": 0.5}, {})
        if serve:
            promote(conn, "ranker", version)


async def test_registry_serving_version_pinned_version_and_on_demand_versions(
    artifact_dir, fresh_pg_dsn, popularity_model
):
    store = DirectoryArtifactStore(artifact_dir)
    versions = RankerVersions(store, fresh_pg_dsn, cache_size=1)
    await versions.refresh()
    assert versions.serving is None

    publish(store, fresh_pg_dsn, "ranker-20260101T000000Z", popularity_model)
    publish(store, fresh_pg_dsn, "ranker-20260102T000000Z", popularity_model, serve=False)
    publish(store, fresh_pg_dsn, "ranker-20260103T000000Z", popularity_model, serve=False)
    await versions.refresh()
    assert versions.serving.version == "ranker-20260101T000000Z"

    assert (await versions.get("ranker-20260102T000000Z")).version == "ranker-20260102T000000Z"
    assert (await versions.get("ranker-20260103T000000Z")).version == "ranker-20260103T000000Z"
    assert await versions.get("ranker-unknown") is None

    # A promoted version whose artifact is broken is refused; the last good one serves on.
    store.put_bytes(artifact_prefix("ranker-20260103T000000Z") + "meta.json", b"{}")
    with psycopg.connect(fresh_pg_dsn, autocommit=True) as conn:
        promote(conn, "ranker", "ranker-20260103T000000Z")
    await versions.refresh()
    assert versions.serving.version == "ranker-20260101T000000Z"

    pinned = RankerVersions(store, fresh_pg_dsn, pinned="ranker-20260102T000000Z")
    await pinned.refresh()
    assert pinned.serving.version == "ranker-20260102T000000Z"
    await versions.close()
    await pinned.close()


async def test_promotion_and_rollback_reach_a_running_service_within_a_poll(
    artifact_dir, fresh_pg_dsn, popularity_model
):
    store = DirectoryArtifactStore(artifact_dir)
    publish(store, fresh_pg_dsn, "ranker-20260101T000000Z", popularity_model)
    publish(store, fresh_pg_dsn, "ranker-20260102T000000Z", popularity_model, serve=False)
    versions = RankerVersions(store, fresh_pg_dsn)
    await versions.refresh()
    poller = asyncio.create_task(versions.poll(0.05))

    async def serving_becomes(version):
        for _ in range(100):
            if versions.serving.version == version:
                return True
            await asyncio.sleep(0.05)
        return False

    try:
        with psycopg.connect(fresh_pg_dsn, autocommit=True) as conn:
            promote(conn, "ranker", "ranker-20260102T000000Z")
        assert await serving_becomes("ranker-20260102T000000Z")
        with psycopg.connect(fresh_pg_dsn, autocommit=True) as conn:
            rollback(conn, "ranker")
        assert await serving_becomes("ranker-20260101T000000Z")
    finally:
        poller.cancel()
        await versions.close()

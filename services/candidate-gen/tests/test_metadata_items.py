"""Cold-start items over real gRPC and Postgres: new catalog items placed by their metadata
are retrieved, found similar and dropped again before and after the next retrain."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY
from recfleet.candidates.v1 import candidates_pb2
from recfleet_models.sharding import shard_of

GROUPS = ["drama", "horror", "comedy", "documentary"]
PER_GROUP = 10


def grouped_catalog(seed: int = 11):
    """Ten items per category, each near its category's axis of a 4-d factor space."""
    rng = np.random.default_rng(seed)
    ids, factors, categories = [], [], {}
    for axis, group in enumerate(GROUPS):
        for n in range(PER_GROUP):
            item = f"{group}-{n}"
            ids.append(item)
            factors.append(np.eye(len(GROUPS))[axis] + rng.normal(0, 0.05, len(GROUPS)))
            categories[item] = group
    return ids, np.asarray(factors, dtype=np.float32), categories


def add_item(conn, item_id: str, categories: list[str], tags: list[str] = (), available: bool = True) -> None:
    conn.execute(
        "INSERT INTO items (item_id, categories, tags, available) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (item_id) DO UPDATE SET categories = EXCLUDED.categories, tags = EXCLUDED.tags,"
        " available = EXCLUDED.available, updated_at = now()",
        (item_id, categories, list(tags), available),
    )


async def status(handle):
    return await handle.stub.GetShardStatus(candidates_pb2.GetShardStatusRequest(), timeout=5)


async def retrieve(handles, query, k, exclude=()):
    request = candidates_pb2.RetrieveRequest(query_vector=query, k=k, exclude_item_ids=list(exclude))
    items = [item for h in handles for item in (await h.stub.Retrieve(request, timeout=5)).items]
    return sorted(items, key=lambda item: -item.score)


@pytest.fixture
def grouped(catalog):
    ids, factors, categories = grouped_catalog()
    for item in ids:
        add_item(catalog.conn, item, [categories[item]])
    catalog.publish("als-grouped", ids, factors, promote=True)
    return ids, factors, categories


async def test_new_items_are_served_from_their_metadata_until_a_version_has_them(catalog, grouped, wait_until):
    ids, factors, categories = grouped
    drama_mean = factors[[categories[i] == "drama" for i in ids]].mean(axis=0)
    new, hidden, unplaceable = "fresh-drama", "withdrawn-drama", "fresh-unknown"
    async with catalog.shard_server(0) as s0, catalog.shard_server(1) as s1:
        shards = (s0, s1)
        owner = shards[shard_of(new, 2)]
        # Committed in this order, so once the refresh has seen `new` it has seen the others.
        add_item(catalog.conn, hidden, ["drama"], available=False)
        add_item(catalog.conn, unplaceable, ["no-such-category"], ["no-such-tag"])
        add_item(catalog.conn, new, ["drama"], ["unheard-of-tag"])

        async def placed():
            return (await status(owner)).metadata_item_count == 1

        await wait_until(placed)
        assert sum([(await status(s)).metadata_item_count for s in shards]) == 1
        gauge = REGISTRY.get_sample_value("recfleet_candidates_metadata_items", {"shard": str(shard_of(new, 2))})
        assert gauge == 1

        query = [1.0, 0.0, 0.0, 0.0]
        found = await retrieve(shards, query, k=PER_GROUP + 1)
        top = {item.item_id for item in found[: PER_GROUP + 1]}
        assert top == {i for i in ids if categories[i] == "drama"} | {new}
        fresh = next(item for item in found if item.item_id == new)
        assert fresh.source == "metadata"
        assert fresh.score == pytest.approx(float(drama_mean @ np.array(query)), rel=1e-5)
        assert all(item.source == "als" for item in found if item.item_id != new)
        everything = {item.item_id for item in await retrieve(shards, query, k=100)}
        assert new in everything and hidden not in everything and unplaceable not in everything
        excluded = await retrieve(shards, query, k=100, exclude=[new])
        assert new not in {item.item_id for item in excluded}

        # The owner answers for the new item from its metadata vector; the others follow.
        reply = await owner.stub.SimilarItems(candidates_pb2.SimilarItemsRequest(item_id=new, k=5), timeout=5)
        assert reply.owner and list(reply.query_vector) == pytest.approx(drama_mean.tolist(), rel=1e-5)
        other = shards[1 - shard_of(new, 2)]
        followed = await other.stub.SimilarItems(
            candidates_pb2.SimilarItemsRequest(item_id=new, k=5, query_vector=reply.query_vector), timeout=5
        )
        similar = sorted([*reply.items, *followed.items], key=lambda item: -item.score)[:5]
        assert [categories[item.item_id] for item in similar] == ["drama"] * 5
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await shards[shard_of(unplaceable, 2)].stub.SimilarItems(
                candidates_pb2.SimilarItemsRequest(item_id=unplaceable, k=5), timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

        # Withdrawn from the catalog: it leaves on the next refresh.
        add_item(catalog.conn, new, ["drama"], available=False)

        async def withdrawn():
            return (await status(owner)).metadata_item_count == 0

        await wait_until(withdrawn)
        assert new not in {item.item_id for item in await retrieve(shards, query, k=100)}

        # Back, and then retrained: the new version's factors replace the metadata vector.
        add_item(catalog.conn, new, ["drama"])
        await wait_until(placed)
        catalog.publish("als-retrained", [*ids, new], np.vstack([factors, drama_mean * 2]), promote=True)

        async def retrained():
            reply = await status(owner)
            return reply.model_version == "als-retrained" and reply.metadata_item_count == 0

        await wait_until(retrained)
        fresh = next(item for item in await retrieve(shards, query, k=100) if item.item_id == new)
        assert fresh.source == "als" and fresh.score == pytest.approx(2 * float(drama_mean[0]), rel=1e-5)


async def test_tags_place_items_only_when_enough_of_the_versions_items_carry_them(catalog, wait_until):
    ids, factors, categories = grouped_catalog()
    for item in ids:
        # Every horror item is tagged "dark"; one drama item alone is tagged "rare".
        tags = ["dark"] if categories[item] == "horror" else ["rare"] if item == "drama-0" else []
        add_item(catalog.conn, item, [categories[item]], tags)
    catalog.publish("als-tagged", ids, factors, shard_count=1, promote=True)
    add_item(catalog.conn, "tagged-rare", [], ["rare"])
    add_item(catalog.conn, "tagged-dark", [], ["dark"])
    async with catalog.shard_server(0, shard_count=1, metadata_min_tag_items=5) as s:
        assert (await status(s)).metadata_item_count == 1
        found = await retrieve([s], [0.0, 1.0, 0.0, 0.0], k=100)
        assert "tagged-rare" not in {item.item_id for item in found}
        assert {item.item_id for item in found[: PER_GROUP + 1]} == {i for i in ids if categories[i] == "horror"} | {
            "tagged-dark"
        }


async def test_an_unreadable_catalog_keeps_the_last_metadata_items_serving(catalog, grouped, wait_until):
    ids, _, _ = grouped
    new = next(f"fresh-comedy-{n}" for n in range(100) if shard_of(f"fresh-comedy-{n}", 2) == 0)
    async with catalog.shard_server(0) as s:
        add_item(catalog.conn, new, ["comedy"])

        async def placed():
            return (await status(s)).metadata_item_count == 1

        await wait_until(placed)
        catalog.conn.execute("ALTER TABLE items RENAME TO items_elsewhere")
        try:
            # Let several polls fail against the missing table.
            await asyncio.sleep(0.5)
            found = await retrieve([s], [0.0, 0.0, 1.0, 0.0], k=100)
            assert len(found) == len([i for i in ids if shard_of(i, 2) == 0]) + 1
            assert next(item for item in found if item.item_id == new).source == "metadata"
        finally:
            catalog.conn.execute("ALTER TABLE items_elsewhere RENAME TO items")
        add_item(catalog.conn, new, ["comedy"], available=False)

        async def withdrawn():
            return (await status(s)).metadata_item_count == 0

        await wait_until(withdrawn)


def test_catalog_polls_reread_a_change_only_within_the_commit_lag(catalog):
    """A quiet catalog costs nothing to poll: a change is read again only by polls that
    follow a read begun within the commit lag of it (by the database's clock)."""
    import time
    from datetime import timedelta

    from recfleet_candidates.adapters.catalog import CatalogReader

    reader = CatalogReader(catalog.dsn, commit_lag=timedelta(seconds=0.5))
    try:
        for n in range(3):
            add_item(catalog.conn, f"bulk-{n}", ["drama"])
        first = reader.all_items()
        assert {row.item_id for row in first.rows} == {"bulk-0", "bulk-1", "bulk-2"}
        # Within the lag a change is read again (a late commit may be stamped before it).
        within = reader.changed_since(first.read_at)
        assert {row.item_id for row in within.rows} == {"bulk-0", "bulk-1", "bulk-2"}
        time.sleep(0.6)
        # The poll after the first one that began more than the lag after the change does not.
        last = reader.changed_since(within.read_at)
        assert len(last.rows) == 3
        quiet = reader.changed_since(last.read_at)
        assert quiet.rows == []
        assert reader.changed_since(quiet.read_at).rows == []
        add_item(catalog.conn, "bulk-1", ["comedy"])
        changed = reader.changed_since(quiet.read_at)
        assert [(row.item_id, row.categories) for row in changed.rows] == [("bulk-1", ("comedy",))]
    finally:
        reader.close()

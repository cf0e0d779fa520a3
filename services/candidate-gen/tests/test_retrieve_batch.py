"""Packed answers and RetrieveBatch over real gRPC: every entry of a batch, and every
packed answer, is what a unary `Retrieve` of the same request answers."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from recfleet.candidates.v1 import candidates_pb2
from recfleet_models.sharding import shard_of
from retrieve_calls import OK, assert_batch_equals_unary, request


def random_catalog(seed: int, count: int, dim: int):
    rng = np.random.default_rng(seed)
    return [f"m{i}" for i in range(count)], rng.standard_normal((count, dim)).astype(np.float32)


def add_item(conn, item_id: str, categories: list[str]) -> None:
    conn.execute(
        "INSERT INTO items (item_id, categories, tags, available) VALUES (%s, %s, '{}', true)"
        " ON CONFLICT (item_id) DO UPDATE SET categories = EXCLUDED.categories, updated_at = now()",
        (item_id, categories),
    )


def unpacked(response: candidates_pb2.RetrieveResponse) -> list[tuple[str, float, str]]:
    return [(item.item_id, item.score, item.source) for item in response.items]


def packed(response: candidates_pb2.RetrieveResponse) -> list[tuple[str, float, str]]:
    items = response.packed_items
    assert len(items.item_ids) == len(items.scores) == len(items.sources)
    return list(zip(items.item_ids, items.scores, items.sources, strict=True))


async def test_packed_answers_hold_the_same_items_as_unpacked_ones(catalog, wait_until):
    ids, factors = random_catalog(21, count=300, dim=8)
    for item in ids:
        add_item(catalog.conn, item, ["films"])
    catalog.publish("als-p", ids, factors, shard_count=1, promote=True)
    vectors = np.random.default_rng(22).standard_normal((4, 8)).astype(np.float32)
    async with catalog.shard_server(0, shard_count=1) as s:
        # A new item, placed by its category, so answers carry both sources.
        add_item(catalog.conn, "fresh", ["films"])

        async def placed():
            status = await s.stub.GetShardStatus(candidates_pb2.GetShardStatusRequest(), timeout=5)
            return status.metadata_item_count == 1

        await wait_until(placed)
        # The new item's vector is the mean of its category's items (every item here).
        along = factors.mean(axis=0)
        cases = [(along, 5, ()), (vectors[0], 20, ids[:50]), (vectors[1], 1000, ()), (vectors[2], 3, ["fresh"])]
        sources = set()
        for vector, k, exclude in cases:
            old = await s.stub.Retrieve(request(vector, k, exclude), timeout=5)
            new = await s.stub.Retrieve(request(vector, k, exclude, packed=True), timeout=5)
            assert unpacked(old) and packed(new) == unpacked(old)
            assert not new.items and not old.HasField("packed_items")
            assert (new.shard, new.model_version) == (old.shard, old.model_version) == (0, "als-p")
            sources |= {source for _, _, source in packed(new)}
        assert sources == {"als", "metadata"}


async def test_a_batch_answers_each_entry_as_a_unary_call_would(catalog):
    ids, first = random_catalog(31, count=400, dim=8)
    _, second = random_catalog(32, count=400, dim=8)
    catalog.publish("als-v1", ids, first, promote=True)
    catalog.publish("als-v2", ids, second)
    rng = np.random.default_rng(33)
    good = rng.standard_normal((4, 8)).astype(np.float32)
    async with catalog.shard_server(0) as s0, catalog.shard_server(1) as s1:
        await s0.stub.ReloadIndex(candidates_pb2.ReloadIndexRequest(model_version="als-v2"), timeout=10)
        queries = [
            request(good[0], 10),
            request(good[1], 7, version="als-v1"),  # just swapped out, still loaded
            request(good[1], 7, version="als-v2"),
            request(good[2], 5, version="als-v9"),  # not held: FAILED_PRECONDITION
            request(good[2][:3], 5),  # wrong dimension: INVALID_ARGUMENT
            request(good[3], 0),  # k out of range
            request(good[3], 1001),
            request([float("nan")] * 8, 5),
            request(good[3], 12, exclude=ids[:100], packed=True),
            request(good[0], 10, version="als-v1", packed=True),
        ]
        batch = await assert_batch_equals_unary(s0.stub, queries)
        codes = [result.status.code for result in batch.results]
        invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert codes == [OK, OK, OK, grpc.StatusCode.FAILED_PRECONDITION.value[0]] + [invalid] * 4 + [OK, OK]
        assert "serves als-v2, not als-v9" in batch.results[3].status.message
        assert [batch.results[i].response.model_version for i in (0, 1, 2, 9)] == [
            "als-v2",
            "als-v1",
            "als-v2",
            "als-v1",
        ]
        # The other shard still serves als-v2's predecessor only.
        other = await assert_batch_equals_unary(s1.stub, queries)
        assert other.results[2].status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert all(shard_of(item.item_id, 2) == 1 for item in other.results[0].response.items)
        empty = await s0.stub.RetrieveBatch(candidates_pb2.RetrieveBatchRequest(), timeout=5)
        assert len(empty.results) == 0


async def test_a_shard_with_no_index_refuses_every_entry(catalog):
    catalog.publish("als-tiny", ["a", "b"], np.eye(3, dtype=np.float32)[:2], shard_count=1)
    async with catalog.shard_server(0, shard_count=1) as s:
        queries = [request([1, 0, 0], 3), request([1, 0], 3), request([1, 0, 0], 3, version="als-tiny")]
        batch = await assert_batch_equals_unary(s.stub, queries)
        assert {result.status.code for result in batch.results} == {grpc.StatusCode.UNAVAILABLE.value[0]}
        assert all("no index" in result.status.message for result in batch.results)


@pytest.mark.parametrize(
    ("index_type", "params", "ties"),
    [
        ("flat", {}, True),
        ("ivf", {"nlist": 4, "nprobe": 3}, True),
        # efSearch below most of the k asked: HNSW looks at more candidates for a larger k.
        ("hnsw", {"m": 8, "ef_construction": 40, "ef_search": 16}, True),
        ("hnsw", {"m": 4, "ef_construction": 8, "ef_search": 4}, False),
    ],
)
async def test_queries_with_their_own_k_and_exclusions_get_their_unary_answers(catalog, index_type, params, ties):
    rng = np.random.default_rng(41)
    count, dim = 600, 4
    ids = [f"m{i}" for i in range(count)]

    def vectors(rows: int) -> np.ndarray:
        # Small integer values: many items score exactly the same, where FAISS's choice
        # among them depends on how many results are asked for.
        drawn = rng.integers(-2, 3, size=(rows, dim)) if ties else rng.standard_normal((rows, dim))
        drawn[~drawn.any(axis=1), 0] = 1
        return drawn.astype(np.float32)

    catalog.publish("als-k", ids, vectors(count), shard_count=1, index_type=index_type, params=params, promote=True)
    async with catalog.shard_server(0, shard_count=1) as s:
        queries = []
        for n, vector in enumerate(vectors(16)):
            k = int(rng.choice([1, 5, 12, 40, 150]))
            excluded = [*rng.choice(ids, size=int(rng.integers(0, 60)), replace=False), "not-an-item"]
            queries.append(request(vector, k, excluded, packed=bool(n % 2)))
        batch = await assert_batch_equals_unary(s.stub, queries)
        for query, result in zip(queries, batch.results, strict=True):
            answer = result.response
            found = answer.packed_items.item_ids if query.packed else [item.item_id for item in answer.items]
            assert not set(found) & set(query.exclude_item_ids)
            # Exact search always fills k; approximate search may find fewer (a sparse graph here).
            assert len(found) == query.k if index_type == "flat" else len(found) <= query.k

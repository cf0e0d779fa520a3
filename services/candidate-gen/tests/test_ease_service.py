"""Retrieve and RetrieveBatch over real gRPC from a shard whose version has an EASE source:
fused answers with each source's scores, the history excluded, and every batch entry
answered as a unary call answers it."""

from __future__ import annotations

import dataclasses
from contextlib import asynccontextmanager

import grpc
import numpy as np
from recfleet.candidates.v1 import candidates_pb2, candidates_pb2_grpc
from recfleet_candidates.adapters.catalog import CatalogReader
from recfleet_candidates.metadata_items import MetadataItems
from recfleet_candidates.retrieval import Query, retrieve_many
from recfleet_candidates.served_index import ServedIndex
from recfleet_candidates.servicer import CandidateServicer
from recfleet_candidates.test_ease_retrieval import brute_force, ease_shard
from recfleet_models.index import LoadedShard
from retrieve_calls import assert_batch_equals_unary, request


def with_history(vector, k, history, exclude=(), packed=True) -> candidates_pb2.RetrieveRequest:
    query = request(vector, k, exclude, packed=packed)
    query.history_item_ids.extend(history)
    return query


@asynccontextmanager
async def serving(shard: LoadedShard):
    """A candidate-gen servicer over `shard` on a real gRPC server."""

    async def no_version() -> str | None:
        return None

    index = ServedIndex(0, 1, lambda version, number: shard, sanity_sample=20, min_sanity_recall=0.9)
    assert await index.reload(shard.version)
    # No catalog refresh runs here, so the reader never connects.
    metadata = MetadataItems(0, 1, CatalogReader("postgresql:///unused"), lambda version: ([], np.zeros(0)), 5)
    server = grpc.aio.server()
    candidates_pb2_grpc.add_CandidateServiceServicer_to_server(
        CandidateServicer(index, metadata, no_version, inline_search_max_flat_items=100_000), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield candidates_pb2_grpc.CandidateServiceStub(channel)
    finally:
        await channel.close()
        await server.stop(0)


async def test_a_shard_with_ease_answers_by_fused_score_with_each_sources_scores():
    shard = ease_shard()
    vector = np.random.default_rng(11).standard_normal(8).astype(np.float32)
    history = ["elsewhere5", shard.item_ids[3], shard.item_ids[7]]
    async with serving(shard) as stub:
        reply = await stub.Retrieve(with_history(vector, 20, history, exclude=["i9"]), timeout=5)
        items = reply.packed_items
        assert len(items.item_ids) == 20 and not {*history, "i9"} & set(items.item_ids)
        assert [column.source for column in items.source_scores] == ["als", "ease"]
        assert all(len(column.scores) == 20 for column in items.source_scores)
        assert {"ease", "als+ease"} & set(items.sources)
        expected = retrieve_many(shard, None, [Query(vector.reshape(1, -1), 20, {*history, "i9"}, history)])[0]
        assert list(items.item_ids) == expected.item_ids
        assert list(items.scores) == expected.scores.tolist()
        assert list(items.source_scores[1].scores) == expected.source_scores["ease"].tolist()
        # Scores fall along the list: the fused score ranks it, not either source's.
        assert list(items.scores) == sorted(items.scores, reverse=True)
        assert list(items.source_scores[0].scores) != sorted(items.source_scores[0].scores, reverse=True)

        unpacked = await stub.Retrieve(with_history(vector, 20, history, exclude=["i9"], packed=False), timeout=5)
        assert [(i.item_id, i.score, i.source) for i in unpacked.items] == list(
            zip(items.item_ids, items.scores, items.sources, strict=True)
        )

        refused = request(vector, 5)
        refused.history_item_ids.extend(f"x{n}" for n in range(10_001))
        try:
            await stub.Retrieve(refused, timeout=5)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error.details().startswith("history_item_ids: at most 10000 ids")
        else:
            raise AssertionError("an over-long history was accepted")


async def test_a_versions_popularity_penalty_orders_the_answer_over_grpc():
    shard, plain = ease_shard(penalty=0.7), ease_shard()
    vector = np.random.default_rng(12).standard_normal(8).astype(np.float32)
    history = ["elsewhere2", shard.item_ids[5], shard.item_ids[11]]
    async with serving(shard) as stub:
        items = (await stub.Retrieve(with_history(vector, 20, history), timeout=5)).packed_items
    async with serving(plain) as stub:
        unpenalised = (await stub.Retrieve(with_history(vector, 20, history), timeout=5)).packed_items
    # Fused score less 0.7 x each item's popularity, computed over every item by hand.
    expected = brute_force(shard, vector, 20, set(), history)
    assert list(items.item_ids) == expected.item_ids
    np.testing.assert_allclose(list(items.scores), expected.scores, rtol=1e-4, atol=1e-5)
    assert list(items.item_ids) != list(unpenalised.item_ids)
    popularity = shard.ease.item_popularity  # type: ignore[union-attr]
    assert popularity is not None
    mean = [
        float(np.mean([popularity[shard.rows[item]] for item in ids])) for ids in (items.item_ids, unpenalised.item_ids)
    ]
    assert mean[0] < mean[1]


async def test_without_history_or_ease_the_answer_is_the_plain_als_one():
    shard = ease_shard()
    vector = np.random.default_rng(12).standard_normal(8).astype(np.float32)
    async with serving(shard) as with_ease, serving(dataclasses.replace(shard, ease=None)) as without:
        plain = await without.Retrieve(request(vector, 10, ["i1", "i2"], packed=True), timeout=5)
        assert not plain.packed_items.source_scores and set(plain.packed_items.sources) == {"als"}
        for stub, history in ((with_ease, []), (with_ease, ["never-heard-of"]), (without, ["elsewhere1"])):
            reply = await stub.Retrieve(with_history(vector, 10, history, exclude=["i1", "i2"]), timeout=5)
            assert reply == plain
        # An older gateway's request (history in the exclusions only) gets that answer too.
        old = await with_ease.Retrieve(request(vector, 10, ["i1", "i2", "elsewhere1"], packed=True), timeout=5)
        assert old.packed_items == plain.packed_items


async def test_a_batch_with_ease_answers_each_entry_as_a_unary_call_would():
    shard = ease_shard(count=500)
    rng = np.random.default_rng(13)
    vectors = rng.standard_normal((6, 8)).astype(np.float32)
    async with serving(shard) as stub:
        queries = [
            with_history(vectors[0], 10, ["elsewhere1", "i4"]),
            request(vectors[1], 10, ["i4"], packed=True),
            with_history(vectors[2], 3, ["never-heard-of"], exclude=["i8"]),
            with_history(vectors[3], 50, [*shard.item_ids[10:40], "elsewhere2"], packed=False),
            with_history(vectors[4][:3], 5, ["elsewhere1"]),  # wrong dimension
            with_history(vectors[5], 25, ["elsewhere9", "elsewhere1"], exclude=shard.item_ids[:60]),
        ]
        batch = await assert_batch_equals_unary(stub, queries)
        fused = [bool(result.response.packed_items.source_scores) for result in batch.results]
        assert fused == [True, False, False, False, False, True]
        assert batch.results[4].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


async def test_a_user_without_a_vector_is_answered_from_the_history_by_ease_alone():
    # A user the version has no factors for yet (new since the last training): the
    # gateway sends the history with no vector, and EASE alone proposes what it predicts.
    shard = ease_shard()
    ease = shard.ease
    history = ["elsewhere3", shard.item_ids[int(ease.shard_rows[0])], "never-heard-of"]
    async with serving(shard) as with_ease, serving(dataclasses.replace(shard, ease=None)) as without:
        query = candidates_pb2.RetrieveRequest(k=15, history_item_ids=history, exclude_item_ids=["i5"], packed=True)
        reply = await with_ease.Retrieve(query, timeout=5)
        items = reply.packed_items
        rows = [ease.vocabulary[item] for item in history if item in ease.vocabulary]
        columns = ease.weights[rows].sum(axis=0)
        owned = {shard.item_ids[int(row)]: columns[c] for c, row in enumerate(ease.shard_rows)}
        predicted = sorted(
            (item for item, score in owned.items() if score > 0 and item not in {*history, "i5"}),
            key=lambda item: -owned[item],
        )
        assert list(items.item_ids) == predicted[:15] and set(items.sources) == {"ease"}
        assert [column.source for column in items.source_scores] == ["ease"]
        np.testing.assert_allclose(items.source_scores[0].scores, [owned[i] for i in predicted[:15]], rtol=1e-5)
        assert list(items.scores) == sorted(items.scores, reverse=True)
        # In a batch beside users with vectors, the same answer.
        vector = np.random.default_rng(14).standard_normal(8).astype(np.float32)
        await assert_batch_equals_unary(with_ease, [query, with_history(vector, 5, ["elsewhere1"]), query])
        # A version without EASE has nothing to say for such a user.
        assert not (await without.Retrieve(query, timeout=5)).packed_items.item_ids
        # Neither a vector nor a history: refused as before.
        try:
            await with_ease.Retrieve(candidates_pb2.RetrieveRequest(k=5), timeout=5)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("query_vector")
        else:
            raise AssertionError("a request without a vector or a history was accepted")

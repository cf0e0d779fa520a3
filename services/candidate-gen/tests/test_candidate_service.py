"""candidate-gen over real gRPC: retrieval, similar items, versions, hot swap and refusals."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from recfleet.candidates.v1 import candidates_pb2
from recfleet_models.sharding import shard_of

TINY_IDS = ["a", "b", "c", "d", "e", "f", "g", "h"]
TINY = np.array(
    [
        [1.0, 0.0, 0.0],
        [0.9, 0.1, 0.0],
        [0.0, 1.0, 0.0],
        [0.0, 0.0, 1.0],
        [0.5, 0.5, 0.0],
        [-1.0, 0.0, 0.0],
        [0.2, 0.0, 0.9],
        [0.7, 0.0, 0.2],
    ]
)
# Inner products with (1, 0, 0): a 1.0, b 0.9, h 0.7, e 0.5, g 0.2, c 0, d 0, f -1.


def random_catalog(seed: int, count: int = 1500, dim: int = 16):
    rng = np.random.default_rng(seed)
    return [f"m{i}" for i in range(count)], rng.standard_normal((count, dim)).astype(np.float32)


async def scatter(handles, request):
    replies = await asyncio.gather(*(h.stub.Retrieve(request, timeout=5) for h in handles))
    merged = [(item.score, item.item_id) for reply in replies for item in reply.items]
    merged.sort(key=lambda pair: (-pair[0], pair[1]))
    return replies, [item for _, item in merged]


async def health(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        return reply.status


def reloads(shard: int, outcome: str) -> float:
    return REGISTRY.get_sample_value("recfleet_candidates_reload_total", {"shard": str(shard), "outcome": outcome}) or 0


async def test_known_answer_across_two_shards_with_exclusions(catalog):
    catalog.publish("als-tiny", TINY_IDS, TINY, promote=True)
    async with catalog.shard_server(0) as s0, catalog.shard_server(1) as s1:
        assert await health(s0.port) == health_pb2.HealthCheckResponse.SERVING
        request = candidates_pb2.RetrieveRequest(query_vector=[1, 0, 0], k=4)
        replies, merged = await scatter([s0, s1], request)
        assert merged[:4] == ["a", "b", "h", "e"]
        for reply in replies:
            assert reply.model_version == "als-tiny"
            assert all(shard_of(item.item_id, 2) == reply.shard for item in reply.items)
        top = next(item for reply in replies for item in reply.items if item.item_id == "a")
        assert top.score == pytest.approx(1.0) and top.source == "als"

        excluded = candidates_pb2.RetrieveRequest(query_vector=[1, 0, 0], k=4, exclude_item_ids=["a", "h", "zzz"])
        replies, merged = await scatter([s0, s1], excluded)
        assert merged[:4] == ["b", "e", "g", "c"]
        for reply in replies:
            owned = [i for i in TINY_IDS if shard_of(i, 2) == reply.shard and i not in ("a", "h")]
            assert len(reply.items) == min(4, len(owned))


async def test_bad_requests_get_precise_errors(catalog):
    catalog.publish("als-tiny", TINY_IDS, TINY, shard_count=1, promote=True)
    async with catalog.shard_server(0, shard_count=1) as s:
        cases = [
            (
                candidates_pb2.RetrieveRequest(query_vector=[1, 0], k=3),
                grpc.StatusCode.INVALID_ARGUMENT,
                "query_vector",
            ),
            (candidates_pb2.RetrieveRequest(query_vector=[1, 0, 0], k=0), grpc.StatusCode.INVALID_ARGUMENT, "k:"),
            (candidates_pb2.RetrieveRequest(query_vector=[1, 0, 0], k=1001), grpc.StatusCode.INVALID_ARGUMENT, "k:"),
            (
                candidates_pb2.RetrieveRequest(query_vector=[1, 0, 0], k=3, model_version="als-other"),
                grpc.StatusCode.FAILED_PRECONDITION,
                "serves als-tiny",
            ),
        ]
        for request, code, detail in cases:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await s.stub.Retrieve(request, timeout=5)
            assert caught.value.code() == code
            assert detail in caught.value.details()
        pinned = await s.stub.Retrieve(
            candidates_pb2.RetrieveRequest(query_vector=[1, 0, 0], k=1000, model_version="als-tiny"), timeout=5
        )
        assert len(pinned.items) == len(TINY_IDS)


async def test_similar_items_owner_answers_and_hands_out_the_vector(catalog):
    catalog.publish("als-tiny", TINY_IDS, TINY, promote=True)
    async with catalog.shard_server(0) as s0, catalog.shard_server(1) as s1:
        owner, other = (s0, s1) if shard_of("a", 2) == 0 else (s1, s0)
        reply = await owner.stub.SimilarItems(candidates_pb2.SimilarItemsRequest(item_id="a", k=3), timeout=5)
        assert reply.owner and list(reply.query_vector) == [1.0, 0.0, 0.0]
        assert "a" not in [item.item_id for item in reply.items]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await other.stub.SimilarItems(candidates_pb2.SimilarItemsRequest(item_id="a", k=3), timeout=5)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        followed = await other.stub.SimilarItems(
            candidates_pb2.SimilarItemsRequest(item_id="a", k=3, query_vector=reply.query_vector), timeout=5
        )
        assert not followed.owner
        merged = sorted([*reply.items, *followed.items], key=lambda item: -item.score)
        assert [item.item_id for item in merged[:3]] == ["b", "h", "e"]
        assert all(item.source == "similar" for item in merged)


async def test_a_fresh_install_serves_with_no_model_and_loads_the_first_promoted_one(catalog, wait_until):
    # No version serves yet (the first training run has not promoted one): the shard is
    # SERVING so the install becomes Ready, and says it has no index.
    catalog.publish("als-tiny", TINY_IDS, TINY, shard_count=1)
    async with catalog.shard_server(0, shard_count=1) as s:
        assert await health(s.port) == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await s.stub.Retrieve(candidates_pb2.RetrieveRequest(query_vector=[1, 0, 0], k=1), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no index" in caught.value.details()
        catalog.promote("als-tiny")

        async def loaded():
            status = await s.stub.GetShardStatus(candidates_pb2.GetShardStatusRequest(), timeout=5)
            return status.model_version == "als-tiny"

        await wait_until(loaded)
        status = await s.stub.GetShardStatus(candidates_pb2.GetShardStatusRequest(), timeout=5)
        assert (status.model_version, status.item_count, status.dimension) == ("als-tiny", 8, 3)
        reply = await s.stub.Retrieve(candidates_pb2.RetrieveRequest(query_vector=[1, 0, 0], k=1), timeout=5)
        assert [item.item_id for item in reply.items] == ["a"]
        built = REGISTRY.get_sample_value("recfleet_candidates_index_built_timestamp_seconds", {"shard": "0"})
        assert built is not None and time.time() - 3600 < built <= time.time() + 1


async def test_not_serving_while_the_wanted_version_cannot_load(catalog):
    manifest = catalog.publish("als-broken", TINY_IDS, TINY, shard_count=1, promote=True)
    (catalog.store.root / manifest.shards[0].index_key).write_bytes(b"not a faiss index")
    async with catalog.shard_server(0, shard_count=1) as s:
        assert await health(s.port) == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_hot_swap_under_concurrent_queries_has_no_failed_call(catalog, wait_until):
    ids, first = random_catalog(1)
    _, second = random_catalog(2)
    catalog.publish("als-v1", ids, first, shard_count=1, index_type="hnsw", promote=True)
    catalog.publish("als-v2", ids, second, shard_count=1, index_type="hnsw")
    query = np.random.default_rng(3).standard_normal(16).astype(np.float32)
    expected_v2 = [ids[row] for row in np.argsort(-(second @ query))[:5]]
    async with catalog.shard_server(0, shard_count=1) as s:
        failures, versions, pinned_versions, stop = [], [], [], asyncio.Event()

        async def client(pin: str = ""):
            while not stop.is_set():
                try:
                    reply = await s.stub.Retrieve(
                        candidates_pb2.RetrieveRequest(query_vector=query.tolist(), k=5, model_version=pin), timeout=5
                    )
                    (pinned_versions if pin else versions).append(reply.model_version)
                except grpc.aio.AioRpcError as error:
                    failures.append(error)

        # A request pinned to the old version keeps being answered from it while the rest
        # of a fleet would still be swapping.
        clients = [asyncio.create_task(client()) for _ in range(3)] + [asyncio.create_task(client("als-v1"))]
        await asyncio.sleep(0.2)
        catalog.promote("als-v2")

        async def swapped():
            return versions and versions[-1] == "als-v2"

        await wait_until(swapped)
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*clients)
        assert failures == []
        assert versions[0] == "als-v1" and versions[-1] == "als-v2"
        assert versions.index("als-v2") > 0 and "als-v1" not in versions[versions.index("als-v2") :]
        assert pinned_versions and set(pinned_versions) == {"als-v1"}
        reply = await s.stub.Retrieve(candidates_pb2.RetrieveRequest(query_vector=query.tolist(), k=5), timeout=5)
        assert [item.item_id for item in reply.items] == expected_v2


async def test_corrupted_shards_are_refused_and_the_last_good_version_keeps_serving(catalog):
    catalog.publish("als-good", TINY_IDS, TINY, shard_count=1, promote=True)
    manifest = catalog.publish("als-badsum", TINY_IDS, TINY[::-1].copy(), shard_count=1)
    path = catalog.store.root / manifest.shards[0].index_key
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    catalog.publish("als-wide", TINY_IDS, np.hstack([TINY, TINY]), shard_count=1)
    meta = catalog.store.root / "models/als/als-wide/meta.json"
    meta.write_text('{"factors": 3}')

    async with catalog.shard_server(0, shard_count=1) as s:
        refused_before = reloads(0, "refused")
        for version, reason in (("als-badsum", "checksum mismatch for shard-0.faiss"), ("als-wide", "dimension 6")):
            status = await s.stub.ReloadIndex(candidates_pb2.ReloadIndexRequest(model_version=version), timeout=10)
            assert status.model_version == "als-good"
            assert status.refused_version == version
            assert reason in status.last_reload
            reply = await s.stub.Retrieve(candidates_pb2.RetrieveRequest(query_vector=[1, 0, 0], k=1), timeout=5)
            assert reply.model_version == "als-good" and reply.items[0].item_id == "a"
        assert reloads(0, "refused") == refused_before + 2
        version_info = REGISTRY.get_sample_value(
            "recfleet_candidates_index_version_info", {"shard": "0", "version": "als-good", "index_type": "flat"}
        )
        assert version_info == 1


async def test_promote_and_rollback_move_every_shard_together(catalog, wait_until):
    ids, first = random_catalog(4, count=400, dim=8)
    _, second = random_catalog(5, count=400, dim=8)
    catalog.publish("als-v1", ids, first, promote=True)
    catalog.publish("als-v2", ids, second)
    async with catalog.shard_server(0) as s0, catalog.shard_server(1) as s1:

        async def all_serve(version):
            replies = await asyncio.gather(
                *(s.stub.GetShardStatus(candidates_pb2.GetShardStatusRequest(), timeout=5) for s in (s0, s1))
            )
            return all(reply.model_version == version for reply in replies)

        assert await all_serve("als-v1")
        catalog.promote("als-v2")
        await wait_until(lambda: all_serve("als-v2"))
        assert catalog.rollback() == "als-v1"
        await wait_until(lambda: all_serve("als-v1"))
        status = await s1.stub.GetShardStatus(candidates_pb2.GetShardStatusRequest(), timeout=5)
        assert status.shard == 1 and status.shard_count == 2 and status.last_reload == "ok"


async def test_a_pinned_version_ignores_the_registry(catalog, wait_until):
    ids, first = random_catalog(6, count=300, dim=8)
    _, second = random_catalog(7, count=300, dim=8)
    catalog.publish("als-v1", ids, first, shard_count=1, promote=True)
    catalog.publish("als-canary", ids, second, shard_count=1)
    async with catalog.shard_server(0, shard_count=1, model_version="als-canary") as s:
        status = await s.stub.GetShardStatus(candidates_pb2.GetShardStatusRequest(), timeout=5)
        assert status.model_version == "als-canary"
        await asyncio.sleep(0.3)
        status = await s.stub.GetShardStatus(candidates_pb2.GetShardStatusRequest(), timeout=5)
        assert status.model_version == "als-canary"

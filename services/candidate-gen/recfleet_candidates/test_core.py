"""Known answers for the pure parts: shard identity, over-fetch with exclusions, sanity."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from recfleet_models.index import METRIC, LoadedShard, ShardManifest, ShardRejected

from recfleet_candidates.metadata_items import MetadataIndex
from recfleet_candidates.retrieval import InvalidArgument, as_query, check_k, merged_top_k, top_k
from recfleet_candidates.sanity import check_shard
from recfleet_candidates.served_index import ServedIndex
from recfleet_candidates.shard_identity import resolve_shard


def shard_of_vectors(
    vectors: np.ndarray, index: faiss.Index | None = None, ids: list[str] | None = None
) -> LoadedShard:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if index is None:
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
    ids = ids or [f"i{row}" for row in range(len(vectors))]
    manifest = ShardManifest("als-t", 1, "rule", "flat", {}, vectors.shape[1], METRIC, [])
    return LoadedShard("als-t", 0, manifest, index, ids, vectors, {item: row for row, item in enumerate(ids)})


def test_shard_comes_from_setting_or_pod_ordinal():
    assert resolve_shard(1, "candidate-gen-0", 2) == 1
    assert resolve_shard(None, "candidate-gen-2", 4) == 2
    assert resolve_shard(None, "candidate-gen-canary-12", 16) == 12
    with pytest.raises(ValueError, match="ordinal"):
        resolve_shard(None, "candidate-gen", 2)
    with pytest.raises(ValueError, match="outside"):
        resolve_shard(None, "candidate-gen-3", 2)


def test_exclusions_never_shorten_the_answer():
    shard = shard_of_vectors(np.array([[5.0], [4.0], [3.0], [2.0], [1.0]]))
    query = np.array([[1.0]], dtype=np.float32)
    assert top_k(shard, query, 2) == [("i0", 5.0), ("i1", 4.0)]
    assert top_k(shard, query, 2, {"i0", "i1", "elsewhere"}) == [("i2", 3.0), ("i3", 2.0)]
    assert top_k(shard, query, 10, {"i4"}) == [("i0", 5.0), ("i1", 4.0), ("i2", 3.0), ("i3", 2.0)]


def test_metadata_items_merge_by_score_with_their_source_and_exclusions():
    shard = shard_of_vectors(np.array([[5.0], [3.0], [1.0]]))
    placed = MetadataIndex.build("als-t", 1, {"new-4": np.array([4.0]), "new-2": np.array([2.0])})
    query = np.array([[1.0]], dtype=np.float32)
    assert merged_top_k(shard, placed, query, 3, set(), "als") == [
        ("i0", 5.0, "als"),
        ("new-4", 4.0, "metadata"),
        ("i1", 3.0, "als"),
    ]
    assert merged_top_k(shard, placed, query, 3, {"i0", "new-4"}, "als") == [
        ("i1", 3.0, "als"),
        ("new-2", 2.0, "metadata"),
        ("i2", 1.0, "als"),
    ]
    assert merged_top_k(shard, None, query, 2, set(), "similar") == [("i0", 5.0, "similar"), ("i1", 3.0, "similar")]
    assert placed.vector_of("new-2") == pytest.approx([2.0]) and placed.vector_of("i0") is None


def test_request_checks_name_the_field():
    with pytest.raises(InvalidArgument, match=r"^k: must be between 1 and 1000, got 0$"):
        check_k(0)
    with pytest.raises(InvalidArgument, match="query_vector: has 2 values; model als-t has dimension 3"):
        as_query([1.0, 2.0], 3, "als-t")
    with pytest.raises(InvalidArgument, match="NaN"):
        as_query([1.0, float("nan")], 2, "als-t")


def test_sanity_passes_a_faithful_index_and_refuses_a_scrambled_one():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    report = check_shard(shard_of_vectors(vectors), sample=50, min_recall=0.9)
    assert report.self_expected == report.self_found == 50 and report.recall_at_10 == 1.0

    scrambled = faiss.IndexFlatIP(8)
    scrambled.add(vectors[rng.permutation(300)])
    with pytest.raises(ShardRejected, match="did not find themselves"):
        check_shard(shard_of_vectors(vectors, scrambled), sample=50, min_recall=0.9)


def test_sanity_refuses_low_recall():
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((2000, 16)).astype(np.float32)
    quantizer = faiss.IndexFlatIP(16)
    ivf = faiss.IndexIVFFlat(quantizer, 16, 50, faiss.METRIC_INNER_PRODUCT)
    ivf.train(vectors)
    ivf.add(vectors)
    ivf.nprobe = 1
    with pytest.raises(ShardRejected, match="recall@10"):
        check_shard(shard_of_vectors(vectors, ivf), sample=50, min_recall=0.99)


def versioned(version: str, vectors: np.ndarray) -> LoadedShard:
    shard = shard_of_vectors(vectors)
    shard.version = version
    return shard


async def test_swap_keeps_the_previous_version_for_pinned_requests_and_refusals_keep_serving():
    rng = np.random.default_rng(2)
    shards = {name: versioned(name, rng.standard_normal((100, 4))) for name in ("v1", "v2")}

    def load(version: str, shard: int) -> LoadedShard:
        if version not in shards:
            raise ShardRejected(f"checksum mismatch for {version}")
        return shards[version]

    served = ServedIndex(0, 1, load, sanity_sample=20, min_sanity_recall=0.9, keep_previous_seconds=60)
    assert await served.reload("v1") and served.version == "v1"
    assert await served.reload("v2") and served.version == "v2"
    assert served.for_version("v1") is shards["v1"] and served.for_version("v2") is shards["v2"]
    assert not await served.reload("v3")
    status = served.status()
    assert (status.model_version, status.refused_version, status.last_reload) == (
        "v2",
        "v3",
        "checksum mismatch for v3",
    )
    assert await served.reload("v1") and served.version == "v1" and served.status().last_reload == "ok"

    no_grace = ServedIndex(0, 1, load, sanity_sample=20, min_sanity_recall=0.9, keep_previous_seconds=0)
    await no_grace.reload("v1")
    await no_grace.reload("v2")
    assert no_grace.for_version("v1") is None

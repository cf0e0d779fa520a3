"""Retrieval from a shard with an EASE source, against a brute-force computation of the
fused answer (every score, every population written out in full)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import faiss
import numpy as np
import pytest
from recfleet_models.ease import standardise
from recfleet_models.index import METRIC, LoadedShard, ShardEase, ShardManifest

from recfleet_candidates.metadata_items import MetadataIndex
from recfleet_candidates.retrieval import Found, Query, _kth_largest_among_zeros, merged_top_k_many, retrieve_many

ALS_WEIGHT = 0.6


def ease_shard(
    seed: int = 0,
    count: int = 300,
    dim: int = 8,
    als_weight: float = ALS_WEIGHT,
    index_type: str = "flat",
    penalty: float = 0.0,
) -> LoadedShard:
    """A shard of `count` random items (a flat FAISS index; `index_type` is what its
    manifest says, which decides how retrieval treats it); EASE covers 200 of them plus
    150 items other shards own, with a random B; with a popularity `penalty`, every item
    has a random popularity."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    ids = [f"i{row}" for row in range(count)]
    shard_rows = np.sort(rng.choice(count, size=min(200, count), replace=False)).astype(np.int64)
    vocabulary_ids = [ids[row] for row in shard_rows] + [f"elsewhere{n}" for n in range(150)]
    order = rng.permutation(len(vocabulary_ids))
    vocabulary = {vocabulary_ids[at]: row for row, at in enumerate(order)}
    weights = rng.standard_normal((len(vocabulary), len(shard_rows))).astype(np.float32)
    manifest = ShardManifest("als-e", 1, "rule", index_type, {}, dim, METRIC, [])
    popularity = rng.standard_normal(count).astype(np.float32) if penalty else None
    return LoadedShard(
        "als-e",
        0,
        manifest,
        index,
        ids,
        vectors,
        {item: row for row, item in enumerate(ids)},
        ShardEase(vocabulary, weights, shard_rows, 1.0, als_weight, penalty, popularity),
    )


def brute_force(shard: LoadedShard, vector: np.ndarray, k: int, exclude: set[str], history: list[str]) -> Found:
    """The fused answer computed over every item of the shard (fewer than 2048 here, so
    the ALS population is every item's score). A flat shard ranks every item not
    excluded; another ranks the union of each source's best k + excluded (what the
    index's search over-fetches), which is also what each source proposes."""
    ease = shard.ease
    assert ease is not None
    history_rows = [ease.vocabulary[item] for item in dict.fromkeys(history) if item in ease.vocabulary]
    columns = ease.weights[history_rows].sum(axis=0, dtype=np.float32)
    als_all = shard.vectors @ vector
    ease_all = np.zeros(shard.item_count, dtype=np.float32)
    ease_all[ease.shard_rows] = columns
    excluded = {shard.rows[item] for item in exclude | set(history) if item in shard.rows}
    wanted = k + len(excluded)
    als_top = set(np.argsort(-als_all)[:wanted].tolist())
    if shard.manifest.index_type == "flat":
        ease_top = set(np.argsort(-ease_all)[:wanted].tolist())
        union = np.array(sorted(set(range(shard.item_count)) - excluded))
    else:
        ease_top = set(ease.shard_rows[np.argsort(-columns)[:wanted]].tolist())
        union = np.array(sorted((als_top | ease_top) - excluded))
    mixed = (
        ALS_WEIGHT * (als_all[union] - als_all.mean()) / als_all.std()
        + (1 - ALS_WEIGHT) * (ease_all[union] - ease_all.mean()) / ease_all.std()
    )
    if ease.item_popularity is not None:
        mixed -= ease.popularity_penalty * ease.item_popularity[union]
    best = union[np.argsort(-mixed)[:k]]
    scores = np.sort(mixed)[::-1][:k]
    # An item neither source has among its own best k got there by both together.
    sources = [
        "als"
        if (row in als_top) > (row in ease_top)
        else "ease"
        if row in ease_top and row not in als_top
        else "als+ease"
        for row in best
    ]
    return Found(
        [shard.item_ids[row] for row in best],
        scores.astype(np.float32),
        sources,
        {"als": als_all[best], "ease": ease_all[best]},
    )


def query(vector: np.ndarray, k: int, exclude: Iterable[str] = (), history: Sequence[str] = ()) -> Query:
    return Query(vector.reshape(1, -1).astype(np.float32), k, set(exclude) | set(history), list(history))


def assert_same_answer(found: Found, expected: Found) -> None:
    assert found.item_ids == expected.item_ids
    assert found.sources == expected.sources
    np.testing.assert_allclose(found.scores, expected.scores, rtol=1e-4, atol=1e-5)
    assert set(found.source_scores) == set(expected.source_scores)
    for source, column in expected.source_scores.items():
        np.testing.assert_allclose(found.source_scores[source], column, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("penalty", [0.0, 0.7])
@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_fused_answers_equal_a_brute_force_computation(index_type, penalty):
    shard = ease_shard(index_type=index_type, penalty=penalty)
    rng = np.random.default_rng(1)
    kinds = set()
    for n in range(12):
        vector = rng.standard_normal(8).astype(np.float32)
        history = [*rng.choice(shard.item_ids, size=5, replace=False), f"elsewhere{n}", "never-heard-of"]
        exclude = set(rng.choice(shard.item_ids, size=int(rng.integers(0, 30)), replace=False)) | {"gone"}
        k = int(rng.choice([1, 10, 40]))
        found = retrieve_many(shard, None, [query(vector, k, exclude, history)])[0]
        assert_same_answer(found, brute_force(shard, vector, k, exclude, history))
        assert len(found.item_ids) == k
        assert not set(found.item_ids) & (exclude | set(history))
        kinds |= set(found.sources)
    # Both sources proposed what was kept, alone and together.
    assert kinds == {"als", "ease", "als+ease"}


def test_the_ease_weight_moves_the_answer_towards_the_ease_proposals():
    rng = np.random.default_rng(2)
    vector = rng.standard_normal(8).astype(np.float32)
    history = ["elsewhere1", "elsewhere2"]
    als_only = retrieve_many(ease_shard(als_weight=1.0), None, [query(vector, 20, history=history)])[0]
    ease_only = retrieve_many(ease_shard(als_weight=0.0), None, [query(vector, 20, history=history)])[0]
    # Weight 1: the plain ALS order (ALS scores); weight 0: the EASE order.
    assert als_only.scores.tolist() == als_only.source_scores["als"].tolist()
    assert np.all(np.diff(als_only.source_scores["als"]) <= 0)
    assert np.all(np.diff(ease_only.source_scores["ease"]) <= 0)
    assert set(ease_only.sources) <= {"ease", "als+ease"}


def test_the_popularity_penalty_moves_the_answer_towards_the_less_popular_items():
    rng = np.random.default_rng(9)
    plain, penalised = ease_shard(), ease_shard(penalty=2.0)
    popularity = penalised.ease.item_popularity  # type: ignore[union-attr]
    assert popularity is not None
    shown_plain, shown_penalised = [], []
    for n in range(20):
        vector = rng.standard_normal(8).astype(np.float32)
        history = [*rng.choice(plain.item_ids, size=4, replace=False), f"elsewhere{n}"]
        shown_plain += retrieve_many(plain, None, [query(vector, 10, history=history)])[0].item_ids
        shown_penalised += retrieve_many(penalised, None, [query(vector, 10, history=history)])[0].item_ids
    before, after = (
        float(np.mean([popularity[plain.rows[item]] for item in shown])) for shown in (shown_plain, shown_penalised)
    )
    assert after < before - 0.5


def test_history_outside_the_vocabulary_or_no_history_gives_the_plain_als_answer():
    shard = ease_shard()
    vector = np.random.default_rng(3).standard_normal(8).astype(np.float32)
    plain_shard = dataclasses.replace(shard, ease=None)
    for history in ([], ["never-heard-of", "nor-this"]):
        exclude = {"i1", "i2"}
        found = retrieve_many(shard, None, [query(vector, 15, exclude, history)])[0]
        plain = merged_top_k_many(plain_shard, None, [query(vector, 15, exclude | set(history))], "als")[0]
        assert found.item_ids == plain.item_ids and found.scores.tobytes() == plain.scores.tobytes()
        assert found.sources == ["als"] * 15 and found.source_scores == {}


def test_a_shard_without_ease_excludes_the_history_and_answers_by_als():
    shard = dataclasses.replace(ease_shard(), ease=None)
    vector = np.random.default_rng(4).standard_normal(8).astype(np.float32)
    top = retrieve_many(shard, None, [query(vector, 3)])[0].item_ids
    found = retrieve_many(shard, None, [query(vector, 3, history=top[:2])])[0]
    assert found.item_ids[0] == top[2] and not set(found.item_ids) & set(top[:2])
    assert found.source_scores == {}


def test_metadata_items_compare_on_the_fused_scale_with_no_ease_score():
    shard = ease_shard()
    rng = np.random.default_rng(5)
    vector = rng.standard_normal(8).astype(np.float32)
    # Placed along the query: their ALS scores top the shard's.
    placed = MetadataIndex.build("als-e", 8, {"new-a": vector * 3, "new-b": -vector})
    history = ["elsewhere3", *shard.item_ids[:4]]
    found = retrieve_many(shard, placed, [query(vector, 10, history=history)])[0]
    assert found.item_ids[0] == "new-a" and found.sources[0] == "metadata"
    assert found.source_scores["ease"][0] == 0.0
    als_all = shard.vectors @ vector
    expected = ALS_WEIGHT * standardise(np.array([found.source_scores["als"][0]]), als_all)[0]
    ease_all = np.zeros(shard.item_count)
    scorer = shard.fusion
    assert scorer is not None
    ease_all[shard.ease.shard_rows] = shard.ease.weights[scorer.history_rows(history)].sum(axis=0)  # type: ignore[union-attr]
    expected += (1 - ALS_WEIGHT) * (0 - ease_all.mean()) / ease_all.std()
    assert found.scores[0] == pytest.approx(expected, rel=1e-4)
    without_new = retrieve_many(shard, None, [query(vector, 10, history=history)])[0]
    assert found.item_ids[1:] == without_new.item_ids[:9]


def test_a_batch_answers_each_query_as_it_is_answered_alone():
    shard = ease_shard(count=600)
    placed = MetadataIndex.build("als-e", 8, {"new-a": np.ones(8, dtype=np.float32)})
    rng = np.random.default_rng(6)
    queries = []
    for n in range(10):
        history = [] if n % 3 == 0 else [*rng.choice(shard.item_ids, size=3, replace=False), f"elsewhere{n}"]
        if n == 4:
            history = ["never-heard-of"]
        exclude = set(rng.choice(shard.item_ids, size=int(rng.integers(0, 20)), replace=False))
        queries.append(query(rng.standard_normal(8).astype(np.float32), int(rng.choice([1, 7, 50])), exclude, history))
    for metadata in (None, placed):
        batch = retrieve_many(shard, metadata, queries)
        for position, one in enumerate(queries):
            alone = retrieve_many(shard, metadata, [one])[0]
            answer = batch[position]
            assert answer.item_ids == alone.item_ids and answer.sources == alone.sources, position
            assert answer.scores.tobytes() == alone.scores.tobytes()
            assert {s: c.tobytes() for s, c in answer.source_scores.items()} == {
                s: c.tobytes() for s, c in alone.source_scores.items()
            }
        assert {bool(answer.source_scores) for answer in batch} == {True, False}


def test_the_ease_population_is_every_item_of_the_shard_and_the_als_one_a_fixed_sample():
    shard = ease_shard(count=5000, dim=4)
    scorer = shard.fusion
    assert scorer is not None
    columns = np.random.default_rng(7).standard_normal(len(scorer.ease.shard_rows)).astype(np.float32)
    every = np.zeros(shard.item_count, dtype=np.float32)
    every[scorer.ease.shard_rows] = columns
    np.testing.assert_allclose(
        scorer.ease_moments(columns).standardise(columns), standardise(columns, every), rtol=1e-5, atol=1e-5
    )
    assert scorer.sample.shape == (2048, 4)
    again = ease_shard(count=5000, dim=4).fusion
    assert again is not None and again.sample.tobytes() == scorer.sample.tobytes()


def test_the_ease_proposal_cut_counts_the_shards_other_items_as_zeros():
    """A flat shard labels an item an EASE proposal when it is among the best k +
    excluded of every item's EASE score, the items outside the vocabulary scoring 0;
    the cut is found from the vocabulary's columns alone, whichever side of 0 it falls."""
    rng = np.random.default_rng(8)
    for _ in range(200):
        columns = rng.standard_normal(int(rng.integers(1, 60))).astype(np.float32)
        columns[rng.random(columns.size) < 0.1] = 0.0
        zeros = int(rng.integers(0, 80))
        padded = np.concatenate([columns, np.zeros(zeros, dtype=np.float32)])
        for k in range(1, padded.size + 2):
            expected = float(np.sort(padded)[::-1][k - 1]) if k <= padded.size else -np.inf
            assert _kth_largest_among_zeros(columns, zeros, k) == expected, (k, zeros)

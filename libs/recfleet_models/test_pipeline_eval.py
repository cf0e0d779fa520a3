"""The ALS + learned-ranker pipeline on the bundled sample: valid lists, better than popular."""

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from recfleet_models.als import ALSParams
from recfleet_models.data import read_movielens
from recfleet_models.evaluation import PopularRecommender, evaluate
from recfleet_models.pipeline_eval import (
    EVALUATION_PRESET,
    ExtendedColumns,
    OfflineFeatureStore,
    RankerPipelineRecommender,
    interaction_log,
)
from recfleet_models.protocols import make_split
from recfleet_models.ranking.training import PRESETS, RankerParams, carve_labels, ranker_gate

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "ml-latest-small"
FAST_ALS = ALSParams(factors=32, iterations=8)
FAST = replace(PRESETS[EVALUATION_PRESET], als_candidates=50, popular_candidates=10, folds=2, max_rounds=60)


@pytest.fixture(scope="module")
def sample():
    data = read_movielens(SAMPLE, "ml-latest-small")
    return data, make_split(data.ratings, "recbole")


@pytest.fixture(scope="module")
def fitted(sample):
    data, split = sample
    recommender = RankerPipelineRecommender(data.movies, FAST_ALS, FAST)
    metrics = evaluate(split, recommender)
    return recommender, metrics


def test_ranker_lists_are_valid_and_beat_popular(sample, fitted):
    _, split = sample
    recommender, metrics = fitted
    users = sorted(set(split.test.user_ids.tolist()))
    lists = recommender.recommend(users, 10, split.seen())
    seen: dict[int, set[int]] = {}
    for user, item in zip(split.seen().user_ids.tolist(), split.seen().movie_ids.tolist(), strict=False):
        seen.setdefault(user, set()).add(item)
    catalog = set(split.train.movie_ids.tolist())
    assert set(lists) == set(users)
    for user, items in lists.items():
        assert len(items) == 10 and len(set(items)) == 10
        assert not set(items) & seen[user], "a train or validation item was recommended"
        assert set(items) <= catalog

    popular = evaluate(split, PopularRecommender())
    assert metrics.users_evaluated == len(users)
    assert metrics.ndcg > popular.ndcg + 0.03
    assert metrics.coverage > popular.coverage


def test_a_ranker_refused_by_the_gate_leaves_the_candidate_order(sample, fitted):
    _, split = sample
    recommender, _ = fitted
    verdict = recommender.verdict
    assert verdict is not None and recommender.serves == verdict.serves
    assert recommender.details()["ranker"]["gate"] == verdict.as_dict()
    # A margin no ranker can clear: the candidate order (the ALS scores, better than the
    # rule formula here) orders the candidates, which is plain ALS's list.
    refused = copy.copy(recommender)
    refused.verdict = ranker_gate(recommender.fit_result.metrics, min_gain=1.0)
    assert refused.serves == "candidate-order" and refused.details()["ranker"]["ordered_by"] == "candidate-order"
    users = sorted(set(split.test.user_ids.tolist()))[:100]
    assert refused.recommend(users, 10, split.seen()) == recommender.retrieval.recommend(users, 10, split.seen())
    # Without the gate the ranker orders them whatever the verdict.
    ungated = copy.copy(refused)
    ungated.gate = False
    assert ungated.serves == "ranker"
    assert ungated.recommend(users, 10, split.seen()) != refused.recommend(users, 10, split.seen())


def test_booster_serves_through_the_ranking_service(sample, fitted):
    # The service loads the trained model text and computes its features from the same
    # Candidate/UserContext objects: its scores must equal the offline ones.
    from recfleet_models.ranking.features import Candidate, UserContext, assign_ranks
    from recfleet_models.ranking.learned import LearnedRanker

    _, split = sample
    recommender, _ = fitted
    fit = recommender.fit_result
    ranker = LearnedRanker.from_text(
        "offline", fit.booster.model_to_string(), {"feature_names": list(fit.feature_names)}
    )
    store = recommender.store
    user = int(split.test.user_ids[0])
    seen = {user: {str(i) for i in store.history[user]}}
    _, items, xs = recommender.candidate_features([user], seen)
    model = recommender.retrieval.model
    user_vector = model.user_factors[model.user_row(str(user))]
    candidates = [
        Candidate(
            item_id=str(item),
            score=float(model.item_factors[model.item_row(str(item))] @ user_vector),
            categories=store.genres.get(item, ()),
            published_at=store.published.get(item, 0.0),
            popularity=store.popularity.get(item, 0.0),
            popularity_7d=store.popularity_7d.get(item, 0.0),
        )
        for item in items[0].tolist()
    ]
    assign_ranks(candidates)
    online = ranker.score(
        ranker.features(candidates, UserContext(str(user), features=store.user_features(user)), store.now)
    )
    offline = fit.predict(xs[0])
    np.testing.assert_allclose(online, offline, rtol=1e-6, atol=1e-6)


def test_label_folds_are_disjoint_and_leave_enough_history(sample):
    _, split = sample
    train = split.train
    params = replace(PRESETS[EVALUATION_PRESET], label_share=0.25, min_history=5, folds=4)
    folds = [carve_labels(interaction_log(train), params, fold) for fold in range(4)]
    assert not np.any(np.sum([~carve.history for carve in folds], axis=0) > 1), "a rating is a label in two folds"
    for carve in folds:
        history = train.subset(carve.history)
        labelled = set(train.user_ids[~carve.history].tolist())
        assert labelled == set(carve.labels)
        counts = dict(zip(*np.unique(history.user_ids, return_counts=True), strict=False))
        assert labelled and all(counts[u] >= 5 for u in labelled)


def test_recent_carve_takes_each_users_newest_ratings(sample):
    _, split = sample
    train = split.train
    params = RankerParams(carve="recent", label_share=0.2, max_labels=None, min_history=5)
    carve = carve_labels(interaction_log(train), params)
    later = ~carve.history
    for user in list(carve.labels)[:50]:
        mine = train.user_ids == user
        assert train.timestamps[mine & later].min() > train.timestamps[mine & ~later].max()
        assert train.timestamps[mine & later].min() == carve.as_of[user]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"carve": "recent", "folds": 2},
        {"carve": "random", "folds": 5, "label_share": 0.25},
        {"label_share": 1.0},
        {"als_candidates": 0},
        {"carve": "newest"},
    ],
)
def test_bad_parameters_are_refused(kwargs):
    with pytest.raises(ValueError):
        RankerParams(**kwargs)


def test_an_unknown_feature_set_is_refused(sample):
    data, _ = sample
    with pytest.raises(ValueError, match="feature_set"):
        RankerPipelineRecommender(data.movies, FAST_ALS, FAST, feature_set="all")


def test_offline_feature_store_affinities_are_genre_shares(sample):
    data, split = sample
    store = OfflineFeatureStore(split.train, data.movies, FAST_ALS)
    user = int(split.train.user_ids[0])
    features = store.user_features(user)
    assert features["interaction_count"] == len(store.history[user])
    shares = [v for k, v in features.items() if k.startswith("affinity:")]
    assert shares and all(0 < v <= 1 for v in shares)
    assert max(store.popularity.values()) == pytest.approx(1.0)


def test_extended_features_are_finite_and_consistent(sample, fitted):
    from recfleet_models.pipeline_eval import EXTENDED_FEATURES
    from recfleet_models.ranking.training import feature_names

    data, split = sample
    recommender, _ = fitted
    store = recommender.store
    model = recommender.retrieval.model
    users = sorted(set(split.test.user_ids.tolist()))[:20]
    seen = {u: {str(i) for i in store.history[u]} for u in users}
    # With the retrieval model as its own second model, both standardised scores agree.
    extended = ExtendedColumns(data.movies, FAST_ALS, second=model)
    _, items, xs = recommender.candidate_features(
        users, seen, extra=extended.for_fold(interaction_log(split.train), model)
    )
    names = feature_names(extended)
    z, z2 = names.index("candidate_score_z"), names.index("second_als_score_z")
    similarity = names.index("history_similarity_max")
    for ids, x in zip(items, xs, strict=False):
        assert x.shape == (len(ids), len(names)) and names[-len(EXTENDED_FEATURES) :] == EXTENDED_FEATURES
        # Missing by design: no affinities, and no source columns for plain ALS candidates.
        missing = [names.index(name) for name in ("category_affinity", "als_score_z", "ease_score_z")]
        assert np.isfinite(np.delete(x, missing, axis=1)).all()
        np.testing.assert_allclose(x[:, z], x[:, z2], atol=1e-5)
        assert (x[:, similarity] <= 1 + 1e-6).all()
        rel = x[:, names.index("cooccurrence_rel")]
        assert rel.max() == pytest.approx(1.0)


def test_with_ease_fused_in_the_candidates_are_the_fused_top_and_the_lists_beat_plain_als(sample):
    # A version with the EASE source serves the fused ALS + EASE order; the ranker is
    # trained and evaluated on those candidates, and what orders them is gated as before.
    from recfleet_models.ease import fit_ease, fused
    from recfleet_models.evaluation import AlsRecommender
    from recfleet_models.ranking.training import Fusion

    data, split = sample
    fusion = Fusion(l2=200.0, als_weight=0.4, max_items=4000)
    recommender = RankerPipelineRecommender(data.movies, FAST_ALS, FAST, fusion=fusion)
    metrics = evaluate(split, recommender)
    details = recommender.details()["ranker"]
    assert recommender.name == "als+ease+ranker"
    assert details["candidates"] == "als+ease" and details["fusion"]["l2"] == 200.0

    # The candidates of one user are the fused top, scored with the fused score.
    model = recommender.model
    user = int(split.test.user_ids[0])
    seen = {user: {str(i) for i in recommender.store.history[user]}}
    group = recommender.candidate_groups([user], seen)[0]
    from recfleet_models.als import build_interaction_matrix

    matrix, _, _ = build_interaction_matrix(
        split.train.user_ids, split.train.movie_ids, ["rating"] * len(split.train), split.train.ratings, FAST_ALS
    )
    ease = fit_ease(matrix, model.item_ids, fusion.l2, fusion.max_items)
    row = model.user_row(str(user))
    als = model.item_factors @ model.user_factors[row]
    ease_scores = np.zeros_like(als)
    history = [model.item_row(i) for i in seen[user]]
    vocabulary = {item: n for n, item in enumerate(ease.item_ids)}
    history_rows = [vocabulary[model.item_ids[c]] for c in history if model.item_ids[c] in vocabulary]
    for n, item in enumerate(ease.item_ids):
        ease_scores[model.item_row(item)] = ease.weights[history_rows, n].sum()
    expected = fused(als, ease_scores, fusion.als_weight)
    expected[history] = -np.inf
    top = np.argsort(-expected, kind="stable")[: FAST.als_candidates]
    proposed = [str(i) for i in group.item_ids[: FAST.als_candidates].tolist()]
    assert set(proposed) == {model.item_ids[c] for c in top}
    by_item = {c.item_id: c.score for c in group.candidates}
    np.testing.assert_allclose([by_item[model.item_ids[c]] for c in top], expected[top], rtol=1e-4, atol=1e-4)

    # The ranker sees each source's own score, as the shards send it with a fused list.
    from recfleet_models.ranking.learned import FEATURE_NAMES

    als_z = group.features[:, FEATURE_NAMES.index("als_score_z")]
    picked = [model.item_row(str(i)) for i in group.item_ids.tolist()]
    np.testing.assert_allclose(als_z, (als[picked] - als[picked].mean()) / als[picked].std(), rtol=1e-4, atol=1e-4)
    assert np.isfinite(group.features[:, FEATURE_NAMES.index("ease_score_z")]).all()

    plain = evaluate(split, AlsRecommender(FAST_ALS))
    assert metrics.ndcg > plain.ndcg

"""Metrics with hand-computed answers, and the baselines on a known split."""

import math

import numpy as np
import pytest

from recfleet_models.als import ALSParams
from recfleet_models.data import Movie, Ratings
from recfleet_models.evaluation import (
    AlsRecommender,
    DiversifiedRecommender,
    PopularRecommender,
    evaluate,
    primary_categories,
    ranking_metrics,
)
from recfleet_models.protocols import Split
from recfleet_models.ranking.diversity import DiversityPolicy


def test_metrics_known_answer():
    recommended = {"a": [1, 4, 2], "c": [9, 8, 7]}
    relevant = {"a": {1, 2, 3}, "b": {5}, "c": {6}}
    m = ranking_metrics(recommended, relevant, k=3, catalog_size=10)
    # a: hits at ranks 1 and 3; c: none; b has no list (counts 0 for NDCG only).
    assert m.users_evaluated == 2
    assert m.precision == pytest.approx((2 / 3 + 0) / 2)
    assert m.recall == pytest.approx((2 / 3 + 0) / 2)
    assert m.map == pytest.approx(((1 / 1 + 2 / 3) / 3) / 2)  # divided by 3 relevant, not by k
    ndcg_a = (1 / math.log(2) + 1 / math.log(4)) / (1 / math.log(2) + 1 / math.log(3) + 1 / math.log(4))
    assert m.ndcg == pytest.approx(ndcg_a / 3)
    assert m.coverage == pytest.approx(6 / 10)


def test_perfect_list_scores_one():
    m = ranking_metrics({"u": [3, 2, 1]}, {"u": {1, 2, 3}}, k=3, catalog_size=3)
    assert (m.precision, m.recall, m.ndcg, m.map) == pytest.approx((1, 1, 1, 1))


def test_k_must_be_positive():
    with pytest.raises(ValueError):
        ranking_metrics({}, {}, k=0, catalog_size=1)


def _grouped_split():
    # Users 1-10 like items 100-104, users 11-20 items 200-204; each user's test item is
    # one of their own group's items they have not rated in train.
    rng = np.random.default_rng(3)
    train_u, train_i, test_u, test_i = [], [], [], []
    for user in range(1, 21):
        group = np.arange(100, 105) if user <= 10 else np.arange(200, 205)
        order = rng.permutation(group)
        train_u += [user] * 4
        train_i += order[:4].tolist()
        test_u.append(user)
        test_i.append(int(order[4]))
    # An extra very popular item rated by everyone in train.
    train_u += list(range(1, 21))
    train_i += [999] * 20

    def ratings(u, i):
        return Ratings(np.array(u), np.array(i), np.full(len(u), 5.0, np.float32), np.zeros(len(u), np.int64))

    return Split("test", ratings(train_u, train_i), ratings(test_u, test_i), None, k=2)


def test_seen_items_are_never_recommended_and_als_beats_popular():
    split = _grouped_split()
    als = AlsRecommender(ALSParams(factors=2, iterations=15, regularization=0.1, alpha=2.0))
    als_metrics = evaluate(split, als, k=2)
    recs = als.recommend(list(range(1, 21)), 5, split.train)
    for user, items in recs.items():
        assert 999 not in items
        seen = set(split.train.movie_ids[split.train.user_ids == user].tolist())
        assert not seen & set(items)
    popular_metrics = evaluate(split, PopularRecommender(), k=2)
    assert als_metrics.ndcg > popular_metrics.ndcg
    assert als_metrics.recall == pytest.approx(1.0)


def _genre_split():
    # Popularity 1 > 2 > 3 > 4 (all Drama) > 6 (no genre) > 5 (Comedy) > 7; user 1 rated 7
    # and comes back for the comedy.
    train = [
        (100 + n, item) for item, raters in ((1, 9), (2, 8), (3, 7), (4, 6), (6, 5), (5, 4)) for n in range(raters)
    ]
    train.append((1, 7))
    users, items = zip(*train, strict=True)

    def ratings(u, i):
        return Ratings(np.array(u), np.array(i), np.full(len(u), 5.0, np.float32), np.zeros(len(u), np.int64))

    movies = [Movie(i, f"m{i}", genres, None) for i, genres in ((1, ("Drama", "Comedy")), (2, ("Drama",)))]
    movies += [Movie(i, f"m{i}", genres, None) for i, genres in ((3, ("Drama",)), (4, ("Drama",)), (5, ("Comedy",)))]
    movies += [Movie(6, "m6", (), None), Movie(7, "m7", ("Western",), None)]
    return Split("test", ratings(users, items), ratings([1], [5]), None, k=4), primary_categories(movies)


def test_the_serving_diversity_rule_changes_what_evaluate_measures():
    split, categories = _genre_split()
    assert categories[1] == "Drama" and categories[6] == ""  # the first genre listed; none
    plain = PopularRecommender()
    assert evaluate(split, plain).recall == 0.0
    assert plain.recommend([1], 4, split.seen()) == {1: [1, 2, 3, 4]}

    capped = DiversifiedRecommender(PopularRecommender(), categories, DiversityPolicy(max_per_category=2))
    metrics = evaluate(split, capped)
    # At most 2 Drama: 3 and 4 give way to the uncategorised 6 and to the comedy the user
    # came back for; the seen 7 stays out.
    assert capped.recommend([1], 4, split.seen()) == {1: [1, 2, 6, 5]}
    assert metrics.recall == 1.0
    assert metrics.ndcg == pytest.approx((1 / math.log(5)) / (1 / math.log(2)))


def test_the_category_cap_holds_only_within_the_diversity_window():
    split, categories = _genre_split()
    narrow = DiversifiedRecommender(PopularRecommender(), categories, DiversityPolicy(max_per_category=2, window=2))
    narrow.fit(split.train)
    assert narrow.recommend([1], 4, split.seen()) == {1: [1, 2, 3, 4]}


def test_holdout_metrics_hide_part_of_each_user():
    import scipy.sparse as sp

    from recfleet_models.evaluation import holdout_metrics

    # Two blocks of users and items: the hidden items are always in the user's own block.
    dense = np.zeros((20, 20), dtype=np.float32)
    dense[:10, :10] = 1.0
    dense[10:, 10:] = 1.0
    metrics = holdout_metrics(sp.csr_matrix(dense), ALSParams(factors=2, iterations=10, regularization=0.1), k=1)
    assert metrics.users_evaluated == 20
    assert metrics.precision == pytest.approx(1.0)
    with pytest.raises(ValueError, match="hold out"):
        holdout_metrics(sp.csr_matrix(np.eye(3, dtype=np.float32)), ALSParams())


def test_sar_recommends_the_most_co_rated_item():
    from recfleet_models.evaluation import SarRecommender

    # Item 1 co-occurs with 2 for two users (Jaccard 2/3) and with 3 for one (1/3).
    users = [1, 1, 2, 2, 2, 3]
    items = [1, 2, 1, 2, 3, 1]
    train = Ratings(np.array(users), np.array(items), np.full(6, 4.0, np.float32), np.zeros(6, np.int64))
    sar = SarRecommender()
    sar.fit(train)
    assert sar.recommend([3], 2, train) == {3: [2, 3]}
    assert sar.recommend([1], 2, train) == {1: [3]}


def test_user_ndcg_is_what_ranking_metrics_averages():
    from recfleet_models.evaluation import user_ndcg

    recommended = {"a": [1, 4, 2], "c": [9, 8, 7]}
    relevant = {"a": {1, 2, 3}, "b": {5}, "c": {6}}
    per_user = user_ndcg(recommended, relevant, k=3)
    assert set(per_user) == {"a", "b", "c"} and per_user["b"] == per_user["c"] == 0.0
    assert sum(per_user.values()) / 3 == pytest.approx(ranking_metrics(recommended, relevant, 3, 10).ndcg)


def test_holdout_split_hides_each_users_most_recent_items():
    import scipy.sparse as sp

    from recfleet_models.evaluation import holdout_split

    # User 0 came to items 0..9 in order, user 1 to items 9..0; user 2 has too few items.
    rows = [0] * 10 + [1] * 10 + [2] * 3
    cols = list(range(10)) * 2 + [0, 1, 2]
    times = list(range(10)) + list(range(10, 0, -1)) + [1, 2, 3]
    matrix = sp.csr_matrix((np.ones(23, dtype=np.float32), (rows, cols)), shape=(3, 10))
    when = sp.csr_matrix((np.array(times, dtype=np.float64), (rows, cols)), shape=(3, 10))
    holdout = holdout_split(matrix, fraction=0.2, min_interactions=5, times=when)
    assert holdout.truth == {0: {8, 9}, 1: {0, 1}}
    assert holdout.train.nnz == 23 - 4
    assert holdout.train[0].indices.tolist() == list(range(8))
    random = holdout_split(matrix, fraction=0.2, min_interactions=5)
    assert set(random.truth) == {0, 1} and all(len(items) == 2 for items in random.truth.values())
    with pytest.raises(ValueError, match="same entries"):
        holdout_split(matrix, times=sp.csr_matrix(np.ones((3, 10))))

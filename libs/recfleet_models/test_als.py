"""ALS on tiny matrices whose right answer is known."""

import numpy as np
import pytest

from recfleet_models.als import (
    ALSParams,
    build_interaction_matrix,
    build_interaction_times,
    confidence_matrix,
    event_weight,
    fit_als,
    top_k,
    top_k_batch,
)

# Two taste groups that never touch: users u0-u9 use items a0-a5, users v0-v9 items b0-b5.
GROUP_A = [f"a{i}" for i in range(6)]
GROUP_B = [f"b{i}" for i in range(6)]


def _two_groups():
    users, items, types, values = [], [], [], []
    rng = np.random.default_rng(0)
    for prefix, group in (("u", GROUP_A), ("v", GROUP_B)):
        for n in range(10):
            liked = rng.choice(group, size=4, replace=False)
            for item in liked:
                users.append(f"{prefix}{n}")
                items.append(str(item))
                types.append("purchase")
                values.append(None)
    return users, items, types, values


def test_each_user_is_recommended_items_of_its_own_group():
    params = ALSParams(factors=2, iterations=20, regularization=0.1, alpha=2.0)
    matrix, user_index, item_index = build_interaction_matrix(*_two_groups(), params)
    model = fit_als(matrix, params, user_index, item_index)
    for user in user_index:
        row = model.user_row(user)
        seen = matrix[row].indices
        best, _scores = model.recommend(row, 1, exclude=seen)
        unseen_group = GROUP_A if user.startswith("u") else GROUP_B
        assert model.item_ids[best[0]] in unseen_group
        assert model.item_ids[best[0]] not in {model.item_ids[i] for i in seen}


def test_similar_items_stay_in_their_group():
    params = ALSParams(factors=2, iterations=20, regularization=0.1, alpha=2.0)
    matrix, user_index, item_index = build_interaction_matrix(*_two_groups(), params)
    model = fit_als(matrix, params, user_index, item_index)
    similar, _ = model.similar_items(model.item_row("a0"), 3)
    assert {model.item_ids[i] for i in similar} <= set(GROUP_A) - {"a0"}


def test_batch_recommendations_match_single_ones():
    params = ALSParams(factors=2, iterations=10, regularization=0.1, alpha=2.0)
    matrix, user_index, item_index = build_interaction_matrix(*_two_groups(), params)
    model = fit_als(matrix, params, user_index, item_index)
    rows = np.arange(len(user_index))
    batch = model.recommend_batch(rows, 1, matrix)
    for row in rows:
        single, _ = model.recommend(row, 1, exclude=matrix[row].indices)
        assert batch[row].tolist() == single.tolist()


def test_weights_by_type_and_rating_value():
    params = ALSParams()
    assert event_weight("purchase", None, params) == 5.0
    assert event_weight("view", None, params) == 1.0
    assert event_weight("dislike", None, params) == 0.0
    assert event_weight("unknown-type", None, params) == 0.0
    assert event_weight("rating", 5.0, params) == 3.5
    assert event_weight("rating", 1.0, params) == 1.0
    assert event_weight("rating", None, params) == 0.0


def test_event_values_scale_confidence_through_their_type_transform():
    params = ALSParams()
    # watch / view: weight x (1 + log1p(value)); no value counts as one play.
    assert event_weight("watch", None, params) == 2.0
    assert event_weight("watch", 0.0, params) == 2.0
    assert event_weight("watch", 99.0, params) == pytest.approx(2.0 * (1 + np.log(100.0)))
    assert event_weight("view", -3.0, params) == 1.0
    # Other types ignore the value unless configured.
    assert event_weight("purchase", 40.0, params) == 5.0
    custom = ALSParams(value_transforms={"purchase": "log1p", "like": "rating"}, rating_offset=3.0)
    assert event_weight("purchase", np.e - 1, custom) == pytest.approx(10.0)
    assert event_weight("like", 5.0, custom) == 4.0 * 3.0
    assert event_weight("watch", 99.0, custom) == 2.0  # no longer listed: value ignored
    # A rating type weight of 0 drops ratings like any other type.
    assert event_weight("rating", 5.0, ALSParams(event_weights={"rating": 0.0})) == 0.0


def test_play_counts_grow_confidence_slowly():
    matrix, _users, items = build_interaction_matrix(
        ["1", "1", "1"], ["hit", "hit", "niche"], ["watch", "watch", "watch"], [1000.0, 1000.0, 1.0], ALSParams()
    )
    hit, niche = matrix.toarray()[0][[items.index("hit"), items.index("niche")]]
    assert niche == pytest.approx(2.0 * (1 + np.log(2.0)))
    assert hit == pytest.approx(2 * 2.0 * (1 + np.log(1001.0)))
    assert hit / niche < 10  # 2000 plays against 1, yet not even ten times the confidence


def test_log1p_weighting_compresses_summed_confidence():
    matrix, _users, _items = build_interaction_matrix(
        ["1", "1"], ["x", "y"], ["purchase", "view"], [None] * 2, ALSParams()
    )
    weighted = confidence_matrix(matrix, ALSParams(weighting="log1p"))
    assert weighted.toarray()[0].tolist() == pytest.approx([np.log1p(5.0), np.log1p(1.0)])
    assert matrix.toarray().tolist() == [[5.0, 1.0]]  # the input is left alone


def test_interaction_times_hold_each_pairs_first_counted_event():
    users, items = ["2", "1", "1", "1", "2"], ["y", "x", "x", "y", "y"]
    types, values = ["view", "view", "click", "dislike", "like"], [None] * 5
    times = [50.0, 30.0, 10.0, 5.0, 40.0]
    matrix, user_index, item_index = build_interaction_matrix(users, items, types, values, ALSParams())
    first = build_interaction_times(users, items, types, values, times, ALSParams())
    assert (first.indptr.tolist(), first.indices.tolist()) == (matrix.indptr.tolist(), matrix.indices.tolist())
    assert first.toarray().tolist() == [[10.0, 0.0], [0.0, 40.0]]  # the dislike at 5 is not counted
    assert (user_index, item_index) == (["1", "2"], ["x", "y"])


def test_matrix_sums_repeats_and_drops_zero_weight_events():
    matrix, users, items = build_interaction_matrix(
        ["1", "1", "1", "2"], ["x", "x", "y", "z"], ["view", "click", "dislike", "dislike"], [None] * 4, ALSParams()
    )
    assert users == ["1"]  # user 2 only disliked: no row
    assert items == ["x"]
    assert matrix.toarray().tolist() == [[3.0]]


def test_bm25_weighting_trains():
    params = ALSParams(factors=4, iterations=5, weighting="bm25", alpha=1.0)
    matrix, user_index, item_index = build_interaction_matrix(*_two_groups(), params)
    model = fit_als(matrix, params, user_index, item_index)
    assert model.item_factors.shape == (12, 4)
    assert model.item_factors.dtype == np.float32


@pytest.mark.parametrize(
    "kwargs",
    [
        {"factors": 0},
        {"iterations": 0},
        {"regularization": -1},
        {"alpha": 0},
        {"weighting": "idf"},
        {"value_transforms": {"watch": "sqrt"}},
    ],
)
def test_invalid_params_are_refused(kwargs):
    with pytest.raises(ValueError):
        ALSParams(**kwargs)


def test_empty_matrix_is_refused():
    matrix, _users, _items = build_interaction_matrix([], [], [], [], ALSParams())
    with pytest.raises(ValueError, match="empty"):
        fit_als(matrix, ALSParams())


def test_top_k_orders_and_excludes():
    order, scores = top_k(np.array([0.1, 0.9, 0.5, 0.7]), 2, exclude=[1])
    assert order.tolist() == [3, 2]
    assert scores.tolist() == [0.7, 0.5]
    best = top_k_batch(np.array([[1.0, 2.0, 3.0]]), 5)
    assert best.tolist() == [[2, 1, 0, -1, -1]]

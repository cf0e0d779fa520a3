"""EASE: the closed form against its formula, the vocabulary cut, scores and fusion."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recfleet_models import ease

# Five users x four items; item 3 has a single user, item 0 the most.
X = np.array(
    [
        [1, 1, 0, 0],
        [1, 0, 1, 0],
        [1, 1, 1, 0],
        [0, 1, 0, 1],
        [1, 0, 1, 0],
    ],
    dtype=np.float64,
)


def _formula(x: np.ndarray, l2: float) -> np.ndarray:
    """Steck 2019, eq. 8: B = I - P diagMat(1 / diag(P)), P = (X^T X + l2 I)^-1."""
    p = np.linalg.inv(x.T @ x + l2 * np.eye(x.shape[1]))
    return np.eye(x.shape[1]) - p / np.diag(p)


@pytest.mark.parametrize("l2", [0.5, 3.0, 500.0])
def test_the_closed_form_matches_the_formula(l2):
    weights = ease.solve(ease.gram(sp.csr_matrix(X), np.arange(4)), l2)
    assert weights.dtype == np.float32 and weights.shape == (4, 4)
    assert np.allclose(weights, _formula(X, l2), atol=1e-6)
    assert np.all(np.diag(weights) == 0)


def test_counts_and_ratings_are_interactions_not_weights():
    stars = sp.csr_matrix(X * np.array([5.0, 1.5, 3.0, 4.0]))
    assert np.array_equal(ease.gram(stars, np.arange(4)), X.T @ X)


def test_a_larger_catalog_matches_the_float64_inverse():
    rng = np.random.default_rng(3)
    x = (rng.random((300, 120)) < 0.1).astype(np.float64)
    weights = ease.solve(ease.gram(sp.csr_matrix(x), np.arange(120)), 20.0)
    expected = _formula(x, 20.0)
    assert np.abs(weights - expected).max() <= 1e-5 * np.abs(expected).max()


def test_l2_must_be_positive():
    with pytest.raises(ValueError, match="l2 must be positive"):
        ease.solve(X.T @ X, 0.0)


def test_the_vocabulary_keeps_the_most_interacted_items_with_enough_users():
    matrix = sp.csr_matrix(X)
    assert ease.vocabulary(matrix, 10, min_users=2).tolist() == [0, 1, 2]  # item 3 has one user
    assert ease.vocabulary(matrix, 10, min_users=1).tolist() == [0, 1, 2, 3]
    # Items 1 and 2 both have three users: the tie goes to the lower column.
    assert ease.vocabulary(matrix, 2, min_users=1).tolist() == [0, 1]
    assert ease.vocabulary(matrix, 10, min_users=9).size == 0


def test_fit_names_the_vocabulary_and_scores_a_history_by_its_rows():
    model = ease.fit_ease(sp.csr_matrix(X), ["a", "b", "c", "d"], 1.0, max_items=10, min_users=2)
    assert model.item_ids == ["a", "b", "c"] and model.weights.shape == (3, 3) and model.l2 == 1.0
    assert np.allclose(model.weights, _formula(X[:, :3], 1.0), atol=1e-6)
    rows = model.rows(["c", "d", "a"])  # "d" is outside the vocabulary
    assert rows.tolist() == [2, 0]
    scores = ease.history_scores(model.weights, rows)
    assert np.allclose(scores, model.weights[2] + model.weights[0])
    assert ease.history_scores(model.weights, np.empty(0, dtype=np.int64)).tolist() == [0.0, 0.0, 0.0]


def test_fused_with_weight_one_is_als_and_with_weight_zero_ranks_as_ease():
    rng = np.random.default_rng(0)
    als, scores = rng.standard_normal(50).astype(np.float32), rng.standard_normal(50).astype(np.float32)
    assert np.array_equal(ease.fused(als, scores, 1.0), als)
    assert np.array_equal(np.argsort(-ease.fused(als, scores, 0.0)), np.argsort(-scores))
    half = ease.fused(als, scores, 0.5)
    expected = 0.5 * (als - als.mean()) / als.std() + 0.5 * (scores - scores.mean()) / scores.std()
    assert np.allclose(half, expected, atol=1e-5)
    with pytest.raises(ValueError, match="als_weight"):
        ease.fused(als, scores, 1.5)


def test_standardise_takes_each_user_row_on_its_own_and_a_flat_source_counts_zero():
    rng = np.random.default_rng(1)
    block = rng.standard_normal((4, 30)).astype(np.float32)
    block[2] = 7.0  # a user EASE knows nothing about: constant scores
    rows = ease.standardise(block)
    for row in range(4):
        assert np.array_equal(rows[row], ease.standardise(block[row]))
    assert np.all(rows[2] == 0)
    assert np.allclose(rows[0].mean(), 0, atol=1e-6) and np.isclose(rows[0].std(), 1, atol=1e-5)
    # Against another population (a shard scoring its items by its own statistics).
    part = block[0, :5]
    assert np.allclose(ease.standardise(part, block[0]), rows[0, :5])


def test_popularity_is_the_standardised_log_user_count_and_zero_without_users():
    with_empty = sp.csr_matrix(np.hstack([X, np.zeros((5, 1))]))
    popularity = ease.popularity(with_empty)
    users = X.sum(axis=0)  # 4, 3, 3, 1
    expected = (np.log1p(users) - np.log1p(users).mean()) / np.log1p(users).std()
    assert popularity.dtype == np.float32 and popularity.shape == (5,)
    np.testing.assert_allclose(popularity[:4], expected, rtol=1e-6)
    assert popularity[4] == 0.0  # no user: neither pushed nor held back
    assert np.all(ease.popularity(sp.csr_matrix(np.ones((3, 4)))) == 0.0)  # all as popular


def test_the_popularity_penalty_subtracts_its_share_of_each_items_popularity():
    rng = np.random.default_rng(3)
    als, scores = rng.standard_normal((2, 6)).astype(np.float32), rng.standard_normal((2, 6)).astype(np.float32)
    popularity = rng.standard_normal(6).astype(np.float32)
    plain = ease.fused(als, scores, 0.6)
    penalised = ease.fused(als, scores, 0.6, popularity_penalty=0.5, item_popularity=popularity)
    np.testing.assert_allclose(penalised, plain - 0.5 * popularity, rtol=1e-6, atol=1e-6)
    # ALS alone (weight 1) is its raw scores: no penalty there.
    assert np.array_equal(ease.fused(als, scores, 1.0, popularity_penalty=0.5, item_popularity=popularity), als)
    with pytest.raises(ValueError, match="needs the items' popularity"):
        ease.fused(als, scores, 0.6, popularity_penalty=0.5)

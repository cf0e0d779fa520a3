"""The ALS search: what it tries, in what order, within what budget, and what it keeps."""

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recfleet_models.als import ALSParams
from recfleet_models.data import read_ml_latest_small
from recfleet_models.protocols import make_split
from recfleet_models.tuning import (
    EASE_ALS_WEIGHTS,
    EASE_PENALTIES,
    SearchSpace,
    ease_trial_count,
    tune_als,
    tune_ease,
    tune_on_ratings,
)

ROOT = Path(__file__).resolve().parents[2]
QUICK = ALSParams(factors=8, iterations=3)


def _clustered(n_users: int = 120, n_items: int = 80, seed: int = 0) -> sp.csr_matrix:
    """Users in four taste clusters, each with 8-16 items mostly from its own cluster."""
    rng = np.random.default_rng(seed)
    rows, cols = [], []
    for user in range(n_users):
        own = np.arange(user % 4, n_items, 4)
        items = rng.choice(own, size=int(rng.integers(8, 17)), replace=False)
        rows += [user] * len(items)
        cols += items.tolist()
    return sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n_users, n_items))


def test_a_budget_of_zero_tries_nothing():
    result = tune_als(_clustered(), QUICK, 0)
    assert (result.trials, result.stopped, result.chosen) == ((), "off", QUICK)
    assert tune_als(_clustered(), QUICK, 60, max_trials=0).stopped == "off"


def test_a_budget_shorter_than_one_fit_tries_only_the_given_setting():
    result = tune_als(_clustered(), QUICK, 0.001)
    assert len(result.trials) == 1 and result.stopped == "budget"
    assert result.trials[0].params == QUICK and result.chosen == QUICK


def test_seeds_come_first_then_the_coarse_points_and_the_cap_holds():
    result = tune_als(_clustered(), QUICK, 600, max_trials=5)
    assert result.stopped == "max-trials"
    assert [t.phase for t in result.trials] == ["seed", "seed", "coarse", "coarse", "coarse"]
    given, textbook = result.trials[0].params, result.trials[1].params
    assert given == QUICK
    assert (textbook.factors, textbook.regularization, textbook.alpha, textbook.weighting) == (64, 0.01, 1.0, "bm25")
    assert textbook.iterations == QUICK.iterations  # iterations are not searched
    # Every point is scored on the same validation users.
    assert len({len(t.per_user) for t in result.trials}) == 1 and result.validation_users == len(
        result.trials[0].per_user
    )


def test_the_search_converges_within_its_budget_and_records_every_point():
    budget = 600
    result = tune_als(_clustered(), QUICK, budget, max_trials=200)
    assert result.stopped == "converged"
    keys = [(t.params.factors, t.params.regularization, t.params.alpha, t.params.weighting) for t in result.trials]
    assert len(keys) == len(set(keys)) > 11  # seeds + coarse + refinement, nothing tried twice
    assert {t.phase for t in result.trials} == {"seed", "coarse", "refine"}
    assert sum(t.seconds for t in result.trials[:-1]) <= budget
    summary = json.loads(json.dumps(result.as_dict()))
    assert len(summary["trials"]) == len(result.trials)
    assert summary["chosen"]["factors"] == result.chosen.factors
    assert all(0 <= t["ndcg@10"] <= 1 for t in summary["trials"])
    # Chosen: the best point when it beats the given one significantly, else the given one.
    assert result.chosen in (result.given, result.best.params)


def test_pinned_axes_are_not_searched():
    space = SearchSpace().pinned(factors=8, weighting="none", alpha=None)
    result = tune_als(_clustered(), QUICK, 600, space=space, max_trials=200)
    assert {(t.params.factors, t.params.weighting) for t in result.trials} == {(8, "none")}
    assert len({t.params.alpha for t in result.trials}) > 1


def test_too_few_interactions_to_hold_out_keeps_the_given_setting():
    result = tune_als(sp.csr_matrix(np.eye(6, dtype=np.float32)), QUICK, 60)
    assert (result.stopped, result.trials, result.chosen) == ("no-validation-users", (), QUICK)


@pytest.mark.parametrize("kwargs", [{"budget_seconds": -1}, {"max_trials": -1}, {"min_gain_se": -0.5}])
def test_bad_arguments_are_refused(kwargs):
    arguments = {"budget_seconds": 10, **kwargs}
    with pytest.raises(ValueError):
        tune_als(_clustered(), QUICK, **arguments)
    with pytest.raises(ValueError):
        SearchSpace(weighting=("idf",))


@pytest.mark.slow
def test_movielens_keeps_the_defaults_it_was_tuned_on():
    split = make_split(read_ml_latest_small(ROOT / "data" / "ml-latest-small").ratings, "recbole")
    result = tune_on_ratings(split.train, ALSParams(), 600)
    assert result.stopped == "converged"
    assert result.chosen == ALSParams()


def _pairs(n_users: int = 300, n_pairs: int = 60, seed: int = 0) -> sp.csr_matrix:
    """Items come in pairs (a film and its sequel): every user has both items of six
    random pairs. Eight ALS factors cannot hold 60 unrelated pairs; EASE learns each."""
    rng = np.random.default_rng(seed)
    rows, cols = [], []
    for user in range(n_users):
        chosen = rng.choice(n_pairs, size=6, replace=False)
        items = np.concatenate([2 * chosen, 2 * chosen + 1])
        rows += [user] * len(items)
        cols += items.tolist()
    return sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n_users, 2 * n_pairs))


def _popular(n_users: int = 300, n_items: int = 120, seed: int = 0) -> sp.csr_matrix:
    """Every user draws 12 items by popularity alone (Zipf), independently of each other:
    no item says anything about another beyond what popularity says."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1)
    rows, cols = [], []
    for user in range(n_users):
        items = rng.choice(n_items, size=12, replace=False, p=popularity / popularity.sum())
        rows += [user] * len(items)
        cols += items.tolist()
    return sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n_users, n_items))


def test_ease_is_adopted_where_items_predict_each_other():
    numbers = []
    result = tune_ease(_pairs(), QUICK, 600, on_trial=lambda trial, number: numbers.append(number))
    assert result.adopted and result.reason == "adopted" and result.stopped == "done"
    assert result.als_weight < 1.0 and result.l2 in (100.0, 200.0, 500.0, 1000.0, 2000.0)
    # ALS alone first, then every (l2, weight, penalty); progress follows every point.
    assert len(result.trials) == ease_trial_count() == 1 + 5 * (len(EASE_ALS_WEIGHTS) - 1) * len(EASE_PENALTIES)
    assert numbers == list(range(1, len(result.trials) + 1))
    alone, best = result.als_alone, result.best
    assert result.trials[0] is alone and alone.l2 is None
    assert (best.l2, best.als_weight, best.popularity_penalty) == (
        result.l2,
        result.als_weight,
        result.popularity_penalty,
    )
    assert best.ndcg > 2 * alone.ndcg
    # The coverage rule (default: at least ALS alone's catalog) held for the chosen point.
    assert best.coverage >= alone.coverage > 0
    summary = json.loads(json.dumps(result.as_dict()))
    assert summary["adopted"] and summary["vocabulary_size"] == 120 and summary["validation_users"] == 300
    assert summary["best_gain_ndcg@10"] > 2 * summary["best_gain_se"]
    assert len(summary["trials"]) == len(result.trials)


def test_only_points_covering_as_much_of_the_catalog_as_als_alone_compete():
    matrix = _pairs(n_pairs=80)
    free = tune_ease(matrix, QUICK, 600, min_coverage_ratio=0.0)
    assert free.eligible == free.trials and free.best is free.best_ignoring_coverage
    ruled = tune_ease(matrix, QUICK, 600, min_coverage_ratio=1.0)
    floor = ruled.als_alone.coverage
    assert {t for t in ruled.trials if t.coverage >= floor} | {ruled.als_alone} == set(ruled.eligible)
    assert ruled.best.coverage >= floor and ruled.best.ndcg == max(t.ndcg for t in ruled.eligible)
    # Nothing covers more than the whole catalog: ALS alone is the best eligible point, EASE stays off.
    strict = tune_ease(matrix, QUICK, 600, min_coverage_ratio=1.01 / ruled.als_alone.coverage)
    assert strict.eligible == (strict.als_alone,) and (strict.adopted, strict.reason) == (False, "no-gain")
    summary = strict.as_dict()
    assert summary["min_coverage_ratio"] > 1 and summary["best_coverage"] == summary["als_coverage"]
    assert summary["best_ndcg@10_ignoring_coverage"] > summary["best_ndcg@10"]


def test_the_ease_search_scores_a_sample_of_the_validation_users_beyond_its_cap():
    full = tune_ease(_pairs(), QUICK, 600, l2_grid=(500.0,))
    sampled = tune_ease(_pairs(), QUICK, 600, l2_grid=(500.0,), max_validation_users=120)
    assert (full.validation_users, sampled.validation_users) == (300, 120)
    assert len(sampled.als_alone.per_user) == 120 and sampled.adopted
    # A seeded sample: the same users, the same figures.
    again = tune_ease(_pairs(), QUICK, 600, l2_grid=(500.0,), max_validation_users=120)
    assert [t.ndcg for t in again.trials] == [t.ndcg for t in sampled.trials]


def test_ease_stays_off_where_popularity_is_all_there_is():
    result = tune_ease(_popular(), QUICK, 600)
    assert (result.adopted, result.reason, result.als_weight) == (False, "no-gain", 1.0)
    assert len(result.trials) == ease_trial_count()
    assert result.as_dict()["adopted"] is False


def test_ease_stays_off_without_items_shared_by_two_users():
    own_items = sp.csr_matrix(np.kron(np.eye(30, dtype=np.float32), np.ones((1, 6), dtype=np.float32)))
    result = tune_ease(own_items, QUICK, 600)
    assert (result.adopted, result.reason, result.vocabulary_size, result.trials) == (False, "no-vocabulary", 0, ())


def test_without_a_budget_the_given_ease_setting_is_used_as_it_is():
    result = tune_ease(_pairs(), QUICK, 0, l2=200.0, als_weight=0.6, popularity_penalty=0.3)
    assert (result.reason, result.l2, result.als_weight, result.popularity_penalty, result.adopted, result.trials) == (
        "off",
        200.0,
        0.6,
        0.3,
        True,
        (),
    )
    assert not tune_ease(_pairs(), QUICK, 0).adopted  # the default weight 1 is ALS alone


def test_a_short_ease_budget_solves_only_the_given_l2():
    result = tune_ease(_pairs(), QUICK, 0.001, l2=1000.0)
    assert result.stopped == "budget"
    assert {t.l2 for t in result.trials} == {None, 1000.0}
    assert len(result.trials) == 1 + (len(EASE_ALS_WEIGHTS) - 1) * len(EASE_PENALTIES)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"budget_seconds": -1},
        {"min_gain_se": -1},
        {"max_items": 0},
        {"weights": (0.5,)},
        {"l2_grid": (0.0, 10.0)},
        {"penalties": (0.0, -0.1)},
        {"popularity_penalty": -1.0},
        {"popularity_penalty": float("inf")},
        {"min_coverage_ratio": -0.5},
        {"max_validation_users": 0},
    ],
)
def test_bad_ease_arguments_are_refused(kwargs):
    arguments = {"budget_seconds": 10, **kwargs}
    with pytest.raises(ValueError):
        tune_ease(_pairs(), QUICK, **arguments)

"""The ALS search: what it tries, in what order, within what budget, and what it keeps."""

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recfleet_models.als import ALSParams
from recfleet_models.data import read_ml_latest_small
from recfleet_models.protocols import make_split
from recfleet_models.tuning import SearchSpace, tune_als, tune_on_ratings

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

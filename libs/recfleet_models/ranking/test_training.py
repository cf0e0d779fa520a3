"""The one ranker trainer on small logs whose right answers are known, and on the bundled sample."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from recfleet_models.als import ALSParams
from recfleet_models.data import read_movielens
from recfleet_models.ranking.learned import FEATURE_NAMES, LearnedRanker
from recfleet_models.ranking.training import (
    PRESETS,
    CatalogItem,
    InteractionLog,
    PopularityClock,
    RankerParams,
    ServedFeatures,
    build_groups,
    carve_labels,
    group_ndcg,
    paired_gain,
    ranker_gate,
    train_ranker,
)

SAMPLE = Path(__file__).resolve().parents[3] / "data" / "ml-latest-small"
DAY = 86_400.0


def log_of(rows: list[tuple[str, str, float]]) -> InteractionLog:
    users, items, times = zip(*rows, strict=False)
    n = len(rows)
    return InteractionLog(
        np.asarray(users, dtype=object),
        np.asarray(items, dtype=object),
        np.asarray(times, dtype=np.float64),
        np.full(n, "click", dtype=object),
        np.full(n, np.nan),
    )


def test_popularity_is_point_in_time_and_weighted():
    clock = PopularityClock.build(
        np.array(["a", "a", "b", "a"], dtype=object), np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 1.0, 4.0, 1.0])
    )
    assert clock.popularity("a", 3.0) == 1.0  # a has 2, the most popular has 2
    assert clock.popularity("b", 3.0) == 0.0  # b's interaction at 3 is not before 3
    assert clock.popularity("b", 3.5) == 1.0  # b has 4, now the most popular
    assert clock.popularity("a", 3.5) == 0.5
    assert clock.count("a", 1.5, 10) == 2


def test_seven_day_window_is_the_popularity_jobs():
    times = np.array([0.0, 1 * DAY, 3 * DAY, 8 * DAY])
    clock = PopularityClock.build(np.array(["a"] * 4, dtype=object), times)
    # At day 8: the events under 7 days old (day 3 and day 8 itself when the horizon allows).
    assert clock.recent("a", 8 * DAY, np.inf) == 2
    assert clock.recent("a", 8 * DAY, 8 * DAY) == 1  # before the moment only
    assert clock.recent("a", 8 * DAY - 1, 8 * DAY) == 2  # day 1 is 7 days minus a second old
    assert clock.recent("b", 8 * DAY, np.inf) == 0


def test_served_features_as_the_feature_store_would_serve_them():
    clock = PopularityClock.build(np.array(["a", "b", "b"], dtype=object), np.array([1.0, 2.0, 3.0]))
    catalog = {"a": CatalogItem(("Drama",), 100.0), "b": CatalogItem(("Drama", "War"), 0.0)}
    served = ServedFeatures(clock, catalog, now=3.0, horizon=3.0)
    a = served.candidate("a", 0.5, "als")
    assert (a.popularity, a.popularity_7d, a.categories, a.published_at, a.age_rating) == (
        1.0,
        1.0,
        ("Drama",),
        100.0,
        0,
    )
    assert served.candidate("b", 0.1, "popular").popularity == 1.0  # b's interaction at 3 is not served yet
    user = served.user("u", ["a", "b"])
    assert user.features == {"affinity:Drama": 1.0, "affinity:War": 0.5, "interaction_count": 2.0}
    assert served.user("u", ["a"], with_affinity=False).features == {"interaction_count": 1.0}


def test_ndcg_known_answer():
    # Group 1: relevant first -> 1. Group 2: relevant third -> 1/log2(4) = 0.5.
    groups = [(np.array([3.0, 2.0, 1.0]), np.array([1, 0, 0])), (np.array([3.0, 2.0, 1.0]), np.array([0, 0, 1]))]
    assert group_ndcg(groups) == pytest.approx(0.75)


def test_recent_carve_labels_the_last_interactions_and_keeps_the_same_second_out_of_the_history():
    rows = [("u", f"i{n}", float(n)) for n in range(10)] + [("u", "i9b", 9.0), ("v", "x", 1.0)]
    params = RankerParams(label_share=0.2, min_history=4)
    carve = carve_labels(log_of(rows), params)
    # u: 11 interactions, 2 labels (the last two by time, both at second 9).
    assert carve.labels == {"u": {"i9", "i9b"}} and carve.as_of == {"u": 9.0} and carve.point_in_time
    # u's history is what happened before second 9; v gives no group and stays history.
    assert carve.history.tolist() == [True] * 9 + [False, False, True]


def test_random_folds_are_disjoint_and_share_one_moment():
    rows = [(f"u{u}", f"i{n}", float(u * 100 + n)) for u in range(5) for n in range(12)]
    params = replace(PRESETS["random-split"], folds=4, label_share=0.25, min_history=5)
    carves = [carve_labels(log_of(rows), params, fold) for fold in range(4)]
    labelled = np.sum([~c.history for c in carves], axis=0)
    assert labelled.max() == 1 and labelled.sum() == 5 * 12  # every interaction a label exactly once
    assert all(not c.point_in_time and set(c.as_of.values()) == {float(c.as_of["u4"])} for c in carves)


@pytest.fixture(scope="module")
def sample_log():
    data = read_movielens(SAMPLE, "ml-latest-small")
    ratings = data.ratings
    n = len(ratings)
    log = InteractionLog(
        ratings.user_ids.astype(str).astype(object),
        ratings.movie_ids.astype(str).astype(object),
        ratings.timestamps.astype(np.float64),
        np.full(n, "rating", dtype=object),
        ratings.ratings.astype(np.float64),
    )
    catalog = {str(m.movie_id): CatalogItem(m.genres, 0.0) for m in data.movies}
    return log, catalog


def test_production_training_beats_the_rule_formula_and_serves_as_trained(sample_log):
    log, catalog = sample_log
    fit = train_ranker(log, catalog, ALSParams(factors=32, iterations=8), RankerParams(max_rounds=30))
    assert fit.metrics["validation_users"] > 50 and fit.stats["training_groups"] > fit.stats["validation_groups"]
    assert fit.stats["stopping_groups"] == 0  # without early stopping every held-out user validates
    assert fit.metrics["validation_ndcg@10"] > fit.metrics["validation_ndcg@10_rules"]
    assert fit.feature_names == FEATURE_NAMES and fit.stats["best_iteration"] == 30
    # The service's LearnedRanker loads the model text and scores the same rows the same.
    served = LearnedRanker.from_text("r", fit.booster.model_to_string(), {"feature_names": list(fit.feature_names)})
    rows = np.random.default_rng(3).random((20, len(FEATURE_NAMES)))
    np.testing.assert_allclose(served.score(rows), fit.predict(rows), rtol=1e-9)


def test_dropped_features_are_left_out_of_the_model(sample_log):
    log, catalog = sample_log
    params = RankerParams(max_rounds=5, drop_features=("candidate_score", "user_interaction_count"))
    fit = train_ranker(log, catalog, ALSParams(factors=16, iterations=4), params)
    assert "candidate_score" not in fit.feature_names and len(fit.feature_names) == len(FEATURE_NAMES) - 2
    with pytest.raises(ValueError, match="unknown features"):
        train_ranker(log, catalog, ALSParams(factors=16, iterations=4), replace(params, drop_features=("mood",)))


def test_with_early_stopping_the_validating_users_took_no_part_in_stopping(sample_log):
    log, catalog = sample_log
    params = RankerParams(max_rounds=5, early_stopping_rounds=2)
    split = build_groups(log, catalog, ALSParams(factors=16, iterations=4), params)
    stopping, validation = set(split.stopping.users), set(split.validation.users)
    assert stopping and validation and not stopping & validation and not set(split.train.users) & validation
    assert split.stats["stopping_groups"] == len(split.stopping.labels)
    # Each validating group carries the candidate order and the rule formula's scores.
    assert len(split.validation.candidate_scores) == len(split.validation.rule_scores) == len(validation)


def figures(ranker: float, order: float, rules: float, se: float | None = 0.0005) -> dict[str, float | None]:
    return {
        "validation_ndcg@10": ranker,
        "validation_ndcg@10_candidate_order": order,
        "validation_ndcg@10_rules": rules,
        "validation_gain_se_candidate_order": se,
        "validation_gain_se_rules": se,
    }


def test_the_gate_asks_the_ranker_to_beat_the_better_of_the_candidate_order_and_the_rules():
    passed = ranker_gate(figures(0.3020, 0.3000, 0.2500), min_gain=0.002)  # exactly the margin
    assert (passed.passed, passed.serves, passed.baseline, passed.gain) == (True, "ranker", "candidate-order", 0.002)
    short = ranker_gate(figures(0.3019, 0.3000, 0.2500), min_gain=0.002)
    assert (short.passed, short.serves) == (False, "candidate-order")
    assert short.reason == (
        "the ranker does not beat the candidate order by at least 0.002 and more than 2 standard errors:"
        " held-out NDCG@10 0.3019 against 0.3000 for the candidate order over the same candidates"
        " (+0.0019, standard error 0.0005)"
    )
    rules = ranker_gate(figures(0.2600, 0.2500, 0.2700), min_gain=0.002)
    assert (rules.passed, rules.serves, rules.gain) == (False, "rules", -0.01)
    assert "does not beat the rule formula" in rules.reason
    tie = ranker_gate(figures(0.2000, 0.2500, 0.2500))
    assert tie.serves == "candidate-order" and tie.as_dict()["min_gain"] == 0.002
    assert ranker_gate(figures(0.3, 0.3, 0.2), min_gain=0, min_gain_se=0).passed
    with pytest.raises(ValueError, match="held-out figures"):
        ranker_gate({"validation_ndcg@10": 0.3})
    with pytest.raises(ValueError, match="negative"):
        ranker_gate(figures(0.3, 0.2, 0.1), min_gain=-0.1)


def test_a_gain_within_the_noise_of_the_held_out_users_does_not_pass():
    # 0.005 above the candidate order, but the per-user gains scatter: 2 standard errors is 0.006.
    noisy = ranker_gate(figures(0.3050, 0.3000, 0.2500, se=0.003))
    assert not noisy.passed and noisy.as_dict()["gain_se"] == 0.003
    assert ranker_gate(figures(0.3050, 0.3000, 0.2500, se=0.002)).passed
    assert ranker_gate(figures(0.3050, 0.3000, 0.2500, se=0.003), min_gain_se=1).passed
    # Unknown (fewer than two held-out users): only a gate that asks for no significance passes.
    assert not ranker_gate(figures(0.9, 0.3, 0.2, se=None)).passed
    assert ranker_gate(figures(0.9, 0.3, 0.2, se=None), min_gain_se=0).passed


def test_paired_gain_averages_a_users_folds_before_the_standard_error():
    users = ["a", "a", "b", "c"]
    gain, se = paired_gain(users, np.array([0.5, 0.7, 0.4, 0.9]), np.array([0.4, 0.4, 0.4, 0.5]))
    # Per user: a (0.1 + 0.3) / 2 = 0.2, b 0.0, c 0.4.
    assert gain == pytest.approx(0.2) and se == pytest.approx(np.std([0.2, 0.0, 0.4], ddof=1) / np.sqrt(3))
    assert paired_gain(["a"], np.array([1.0]), np.array([0.0])) == (1.0, float("inf"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"carve": "recent", "folds": 2},
        {"carve": "random", "folds": 5, "label_share": 0.25},
        {"label_share": 1.0},
        {"max_labels": 0},
        {"affinity_dropout": 1.0},
        {"max_rounds": 0},
    ],
)
def test_bad_parameters_are_refused(kwargs):
    with pytest.raises(ValueError):
        RankerParams(**kwargs)

import math

import numpy as np
import pytest

from recfleet_models.ranking.features import (
    SECONDS_PER_DAY,
    Candidate,
    CandidateColumns,
    UserContext,
    assign_ranks,
    retrieval_ranks,
)
from recfleet_models.ranking.learned import FEATURE_NAMES, LearnedRanker, feature_matrix
from recfleet_models.ranking.rules import rule_terms

NOW = 1_800_000_000.0


def column(x, name):
    return x[:, FEATURE_NAMES.index(name)].tolist()


def test_feature_matrix_known_values():
    candidates = [
        Candidate(
            "a", 0.2, categories=("Drama",), popularity=0.5, popularity_7d=2.0, published_at=NOW - 10 * SECONDS_PER_DAY
        ),
        Candidate("b", 0.8, categories=("Comedy", "Drama"), popularity=0.25, popularity_7d=0.0),
    ]
    assign_ranks(candidates)
    user = UserContext(
        "u",
        preferred_categories=frozenset({"Comedy"}),
        features={"interaction_count": 7, "affinity:Drama": 0.6, "affinity:Comedy": 0.1},
    )
    x = feature_matrix(candidates, user, NOW, half_life_days=10)
    assert column(x, "candidate_rank") == [1, 0]
    assert column(x, "candidate_score_norm") == [0.0, 1.0]
    assert column(x, "popularity_rel") == [1.0, 0.5]
    assert column(x, "popularity_7d_rel") == [1.0, 0.0]
    assert column(x, "freshness") == pytest.approx([0.5, 0.0])
    assert column(x, "item_age_days") == pytest.approx([10.0, -1.0])
    assert column(x, "category_match") == [0.0, 1.0]
    assert column(x, "category_affinity") == [0.6, 0.6]
    assert column(x, "user_interaction_count") == [7, 7]


def test_no_affinities_in_the_request_is_missing_not_zero():
    x = feature_matrix([Candidate("a", 1.0, categories=("Drama",))], UserContext("u"), NOW)
    assert math.isnan(column(x, "category_affinity")[0])


def test_a_model_needing_unknown_features_is_refused(popularity_ranker):
    with pytest.raises(ValueError, match="does not compute"):
        LearnedRanker("ranker-x", popularity_ranker.booster, ("candidate_score", "user_mood"))


def test_columns_give_the_same_features_and_rule_terms_as_candidate_lists():
    """The service computes features from columns, training from `Candidate` lists: the
    same numbers, to the bit."""
    rng = np.random.default_rng(3)
    candidates = [
        Candidate(
            f"i{k}",
            float(rng.random()),
            categories=(("Drama", "Comedy"), ("Comedy",), ())[k % 3],
            popularity=float(rng.random()),
            popularity_7d=float(rng.random()) * (k % 2),
            published_at=0.0 if k % 5 == 0 else NOW - float(rng.integers(1, 900)) * SECONDS_PER_DAY,
            age_rating=None if k % 7 == 0 else 13,
        )
        for k in range(50)
    ]
    assign_ranks(candidates)
    columns = CandidateColumns.of(candidates)
    assert columns.ranks.tolist() == [c.rank for c in candidates]
    for user in (
        UserContext("u"),
        UserContext(
            "u",
            preferred_categories=frozenset({"Comedy"}),
            features={"interaction_count": 3, "affinity:Drama": 0.6},
        ),
    ):
        from_list = feature_matrix(candidates, user, NOW)
        from_columns = feature_matrix(columns, user, NOW)
        assert from_list.tobytes() == from_columns.tobytes()
    assert rule_terms(candidates, NOW, 100.0).tobytes() == rule_terms(columns, NOW, 100.0).tobytes()
    assert retrieval_ranks(columns.scores).tolist() == [c.rank for c in candidates]


def test_each_sources_score_is_a_feature_standardised_over_the_candidates():
    candidates = [Candidate("a", 0.1), Candidate("b", 0.5), Candidate("c", 0.9)]
    assign_ranks(candidates)
    user = UserContext("u")
    # A list with one source (plain ALS, a cold-start list): both features are missing.
    plain = feature_matrix(candidates, user, NOW)
    assert all(math.isnan(v) for v in column(plain, "als_score_z") + column(plain, "ease_score_z"))
    # A fused list carries each source's own score: standardised over the candidates.
    scores = {"als": np.array([1.0, 2.0, 3.0]), "ease": np.array([4.0, 4.0, 4.0])}
    fused = feature_matrix(candidates, user, NOW, source_scores=scores)
    assert column(fused, "als_score_z") == pytest.approx([-1.224745, 0.0, 1.224745], abs=1e-6)
    assert column(fused, "ease_score_z") == [0.0, 0.0, 0.0]
    # Serving's columns carry them as the list arrived; the same numbers come out.
    columns = CandidateColumns.of(candidates)
    columns.source_scores.update(scores)
    np.testing.assert_array_equal(feature_matrix(columns, user, NOW), fused)

import math

import pytest

from recfleet_models.ranking.features import SECONDS_PER_DAY, Candidate, UserContext, assign_ranks
from recfleet_models.ranking.learned import FEATURE_NAMES, LearnedRanker, feature_matrix

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

import math

import numpy as np
import pytest

from recfleet_models.ranking.features import SECONDS_PER_DAY, Candidate, freshness
from recfleet_models.ranking.rules import RuleWeights, min_max, rule_scores

NOW = 1_800_000_000.0


def test_freshness_halves_every_half_life():
    assert freshness(NOW, NOW, 30) == 1.0
    assert freshness(NOW - 30 * SECONDS_PER_DAY, NOW, 30) == pytest.approx(0.5)
    assert freshness(NOW - 60 * SECONDS_PER_DAY, NOW, 30) == pytest.approx(0.25)
    assert freshness(0, NOW, 30) == 0.0
    assert freshness(NOW + 1000, NOW, 30) == 1.0


def test_min_max_scales_to_unit_interval_and_equal_values_to_one():
    assert min_max(np.array([2.0, 4.0, 3.0])).tolist() == [0.0, 1.0, 0.5]
    assert min_max(np.array([7.0, 7.0])).tolist() == [1.0, 1.0]


def test_rule_formula_with_known_numbers():
    half_life = 100.0
    candidates = [
        Candidate("a", 0.9, popularity=0.2, published_at=NOW),
        Candidate("b", 0.5, popularity=1.0, published_at=NOW - 100 * SECONDS_PER_DAY),
        Candidate("c", 0.1, popularity=0.0, published_at=0),
    ]
    scores, contributions = rule_scores(candidates, NOW, RuleWeights(0.5, 0.3, 0.2, half_life))
    # a: 0.5*1 + 0.3*0.2 + 0.2*1 ; b: 0.5*0.5 + 0.3*1 + 0.2*0.5 ; c: 0
    assert scores.tolist() == pytest.approx([0.76, 0.65, 0.0])
    assert contributions[1].tolist() == pytest.approx([0.25, 0.3, 0.1])
    assert np.allclose(contributions.sum(axis=1), scores)


def test_popularity_outside_unit_interval_is_clipped():
    scores, _ = rule_scores([Candidate("a", 1.0, popularity=5.0)], NOW, RuleWeights(0.0, 1.0, 0.0))
    assert scores.tolist() == [1.0]


def test_negative_weights_are_refused():
    with pytest.raises(ValueError, match="negative"):
        RuleWeights(-0.1, 0.3, 0.2)
    assert math.isfinite(RuleWeights().half_life_days)

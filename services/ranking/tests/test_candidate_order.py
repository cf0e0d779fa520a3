"""The rules rung serving the candidate order: with the rule formula's popularity and
freshness weights at 0 (RECFLEET_RANKING_RULE_WEIGHT_POPULARITY / _FRESHNESS, which
`__main__` turns into these `RuleWeights`), the candidates keep the order retrieval gave
them. This is what a fleet serves when no ranker passed its gate and the candidate order
beat the rule formula on held-out users (docs/ranking.md, "The gate")."""

import numpy as np
import pytest
from recfleet_models.ranking.features import Candidate, UserContext
from recfleet_models.ranking.rules import RuleWeights
from recfleet_ranking.pipeline import RankingPipeline, RankQuery

NOW = 1_800_000_000.0


def candidates(n: int = 30) -> list[Candidate]:
    rng = np.random.default_rng(5)
    scores = rng.permutation(n) / n
    return [
        Candidate(
            f"m{i}",
            float(scores[i]),
            "als",
            categories=(f"g{i}",),
            age_rating=0,
            popularity=float(rng.random()),
            published_at=NOW - float(rng.integers(1, 3_000)) * 86_400,
        )
        for i in range(n)
    ]


def ranked(pipeline: RankingPipeline, given: list[Candidate]) -> list[str]:
    outcome = pipeline.rank(RankQuery(UserContext("u1"), given, limit=20, explain=True), None, now=NOW)
    assert outcome.served_by == "rules"
    for entry in outcome.items:
        assert sum(entry.contributions.values()) == pytest.approx(entry.score)
    return [entry.item_id for entry in outcome.items]


def test_rules_reduced_to_the_candidate_term_serve_the_candidate_order():
    given = candidates()
    by_score = [c.item_id for c in sorted(given, key=lambda c: -c.score)][:20]
    candidate_order = RankingPipeline(weights=RuleWeights(candidate=0.5, popularity=0.0, freshness=0.0))
    assert ranked(candidate_order, given) == by_score
    # The default formula's popularity and freshness terms move items away from it.
    assert ranked(RankingPipeline(), given) != by_score

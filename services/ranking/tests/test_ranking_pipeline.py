import itertools

import lightgbm as lgb
import numpy as np
import pytest
from recfleet_models.ranking.diversity import DiversityPolicy
from recfleet_models.ranking.features import Candidate, UserContext
from recfleet_models.ranking.learned import FEATURE_NAMES, LearnedRanker
from recfleet_ranking.pipeline import RankingPipeline, RankJob, RankQuery

NOW = 1_800_000_000.0


def catalog(n=40, categories=8):
    return [
        Candidate(
            f"m{i}",
            1.0 - i / n,
            "als",
            categories=(f"g{i % categories}",),
            age_rating=0,
            popularity=(i * 37 % n) / n,
            published_at=NOW - (i + 1) * 86_400 * 30,
        )
        for i in range(n)
    ]


def query(candidates, **fields):
    return RankQuery(UserContext("u1"), candidates, **fields)


def test_rules_rank_filter_and_explain_consistently():
    candidates = catalog()
    candidates[0].available = False
    outcome = RankingPipeline().rank(query(candidates, limit=10, explain=True), None, now=NOW)
    assert outcome.served_by == "rules"
    assert outcome.degraded == ["ranker-unavailable"]
    assert outcome.filtered == {"unavailable": 1}
    assert [e.rank for e in outcome.items] == list(range(1, 11))
    assert "m0" not in {e.item_id for e in outcome.items}
    for entry in outcome.items:
        assert set(entry.contributions) == {"candidate_score", "popularity", "freshness"}
        assert sum(entry.contributions.values()) == pytest.approx(entry.score)
    scores = [e.score for e in outcome.items]
    assert scores == sorted(scores, reverse=True)


def test_order_below_a_better_item_is_explained_by_a_diversity_rule():
    candidates = catalog(categories=2)
    outcome = RankingPipeline(diversity=DiversityPolicy(3, 20, 1.0)).rank(
        query(candidates, limit=20, explain=True), None, now=NOW
    )
    items = outcome.items
    for upper, lower in itertools.pairwise(items):
        if lower.score > upper.score:
            assert any(rule.startswith("diversity") for rule in lower.rules + upper.rules)


def test_without_explain_no_explanation():
    outcome = RankingPipeline().rank(query(catalog(), limit=5), None, now=NOW)
    assert all(not e.contributions and not e.rules for e in outcome.items)


def test_top_twenty_holds_at_most_three_per_primary_category():
    outcome = RankingPipeline().rank(query(catalog(n=200, categories=10), limit=20), None, now=NOW)
    primaries = [e.item_id for e in outcome.items]
    counts = {}
    for item_id in primaries:
        category = f"g{int(item_id[1:]) % 10}"
        counts[category] = counts.get(category, 0) + 1
    assert len(primaries) == 20 and max(counts.values()) <= 3


def test_learned_ranker_serves_and_explains_with_feature_contributions(popularity_ranker):
    candidates = catalog()
    outcome = RankingPipeline(diversity=DiversityPolicy(100, 20, 1.0)).rank(
        query(candidates, limit=10, explain=True), popularity_ranker, now=NOW
    )
    assert outcome.served_by == "ranker"
    assert outcome.ranker_version == "ranker-test-1"
    assert outcome.degraded == []
    top = outcome.items[0]
    assert set(top.contributions) == {*FEATURE_NAMES, "bias"}
    assert sum(top.contributions.values()) == pytest.approx(top.score, abs=1e-5)
    # The model learned "popular first": the top items are the most popular ones.
    by_id = {c.item_id: c for c in candidates}
    top_popularity = [by_id[e.item_id].popularity for e in outcome.items[:5]]
    assert min(top_popularity) > 0.7


def test_model_that_fails_falls_back_to_rules_and_opens_the_breaker():
    x = np.random.default_rng(1).random((40, 3))
    wrong_shape = lgb.train(
        {"objective": "lambdarank", "verbosity": -1, "min_data_in_leaf": 2},
        lgb.Dataset(x, (x[:, 0] > 0.5).astype(int), group=[20, 20]),
        num_boost_round=2,
    )
    broken = LearnedRanker("ranker-broken", wrong_shape, FEATURE_NAMES)
    pipeline = RankingPipeline()
    for _ in range(3):
        outcome = pipeline.rank(query(catalog(), limit=5), broken, now=NOW)
        assert outcome.served_by == "rules" and outcome.degraded == ["ranker-error"]
        assert len(outcome.items) == 5
    outcome = pipeline.rank(query(catalog(), limit=5), broken, now=NOW)
    assert outcome.degraded == ["ranker-circuit-open"]


def test_model_over_its_time_budget_falls_back_to_rules(popularity_ranker):
    outcome = RankingPipeline(model_budget_seconds=0.0).rank(query(catalog(), limit=5), popularity_ranker, now=NOW)
    assert outcome.served_by == "rules"
    assert outcome.degraded == ["ranker-timeout"]


def test_exploration_is_stable_per_user():
    pipeline = RankingPipeline(exploration_share=0.2)
    first = pipeline.rank(query(catalog(), limit=10, explain=True), None, now=NOW)
    second = pipeline.rank(query(catalog(), limit=10, explain=True), None, now=NOW)
    assert [e.item_id for e in first.items] == [e.item_id for e in second.items]
    assert [e.rules for e in first.items[-2:]] == [["exploration"], ["exploration"]]


def test_everything_filtered_gives_an_empty_list():
    outcome = RankingPipeline().rank(
        RankQuery(UserContext("u1", seen_item_ids=frozenset(c.item_id for c in catalog())), catalog(), 10),
        None,
        now=NOW,
    )
    assert outcome.items == [] and outcome.filtered == {"seen": 40}


def test_rank_many_gives_each_query_what_rank_alone_gives(popularity_ranker):
    def jobs():
        adult = UserContext("u1", age=30, preferred_categories=frozenset({"g1"}), features={"affinity:g2": 0.5})
        return [
            RankJob(query(catalog(40), limit=10, explain=True), popularity_ranker),
            RankJob(RankQuery(adult, catalog(25)[5:], limit=7, explain=True), popularity_ranker),
            RankJob(query(catalog(30), limit=5), None),
            RankJob(
                RankQuery(UserContext("u2", seen_item_ids=frozenset(f"m{i}" for i in range(40))), catalog()),
                popularity_ranker,
            ),
            RankJob(
                query(catalog(12, categories=2), limit=0, explain=True),
                popularity_ranker,
                ["feature-store-unavailable"],
            ),
        ]

    together = RankingPipeline().rank_many(jobs(), now=NOW)
    alone = [RankingPipeline().rank(job.query, job.ranker, now=NOW, degraded=job.degraded) for job in jobs()]
    assert together == alone
    assert [outcome.served_by for outcome in together] == ["ranker", "ranker", "rules", "ranker", "ranker"]

"""One Rank call, end to end, without any I/O: filter, score, re-rank, explain.

Scoring takes the learned ranker when one is given and healthy, else the rule formula.
A circuit breaker guards the model: errors and calls over the time budget count as
failures, and while it is open rules rank without trying the model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from recfleet_models.ranking.diversity import DiversityPolicy, diversify, explore
from recfleet_models.ranking.features import Candidate, UserContext, assign_ranks
from recfleet_models.ranking.filters import apply_filters
from recfleet_models.ranking.learned import LearnedRanker
from recfleet_models.ranking.rules import TERMS, RuleWeights, rule_scores
from recfleet_runtime.resilience import CircuitBreaker, CircuitOpenError

SERVED_BY_RANKER = "ranker"
SERVED_BY_RULES = "rules"

RANKER_UNAVAILABLE = "ranker-unavailable"
RANKER_ERROR = "ranker-error"
RANKER_TIMEOUT = "ranker-timeout"
RANKER_CIRCUIT_OPEN = "ranker-circuit-open"


@dataclass(slots=True)
class RankQuery:
    """One Rank call in domain terms; `limit` 0 means every candidate that passes."""

    user: UserContext
    candidates: list[Candidate]
    limit: int = 0
    explain: bool = False
    category: str = ""


@dataclass(slots=True)
class RankedEntry:
    """One returned item; `contributions` and `rules` are filled only with `explain`."""

    item_id: str
    rank: int
    score: float
    source: str
    candidate_score: float
    contributions: dict[str, float] = field(default_factory=dict)
    rules: list[str] = field(default_factory=list)


@dataclass(slots=True)
class RankOutcome:
    """The answer: items in order, who scored them, fallbacks taken, filtered counts."""

    items: list[RankedEntry]
    served_by: str
    ranker_version: str
    degraded: list[str]
    filtered: dict[str, int]


class RankingPipeline:
    """Stateless per call apart from the model breaker; safe to share across calls."""

    def __init__(
        self,
        weights: RuleWeights | None = None,
        diversity: DiversityPolicy | None = None,
        exploration_share: float = 0.0,
        model_budget_seconds: float = 0.02,
        breaker: CircuitBreaker | None = None,
    ):
        if not 0 <= exploration_share < 1:
            raise ValueError("exploration_share must be in [0, 1)")
        self.weights = weights or RuleWeights()
        self.diversity = diversity or DiversityPolicy()
        self.exploration_share = exploration_share
        self.model_budget_seconds = model_budget_seconds
        self.breaker = breaker or CircuitBreaker("ranking-model", failure_threshold=3, reset_seconds=10.0)

    def rank(
        self,
        query: RankQuery,
        ranker: LearnedRanker | None,
        now: float | None = None,
        degraded: list[str] | None = None,
    ) -> RankOutcome:
        now = time.time() if now is None else now
        degraded = list(degraded or ())
        assign_ranks(query.candidates)
        filtered = apply_filters(query.candidates, query.user, query.category)
        kept = filtered.kept
        scores, explain_basis, served_by, version = self._score(query, kept, ranker, now, degraded)
        order = np.argsort(-scores, kind="stable") if len(kept) else np.empty(0, dtype=np.int64)
        ordered = [kept[i] for i in order]
        length = len(ordered) if query.limit <= 0 else min(query.limit, len(ordered))
        placements = diversify(
            [c.primary_category for c in ordered], [c.creator for c in ordered], length, self.diversity
        )
        placements = explore(placements, len(ordered), self.exploration_share, query.user.user_id)
        chosen = [int(order[p.index]) for p in placements]
        if query.explain:
            names, contributions = self._explain(chosen, ranker, served_by, explain_basis)
        items = []
        for position, (placement, source_index) in enumerate(zip(placements, chosen, strict=True), start=1):
            candidate = kept[source_index]
            entry = RankedEntry(
                item_id=candidate.item_id,
                rank=position,
                score=float(scores[source_index]),
                source=candidate.source,
                candidate_score=candidate.score,
            )
            if query.explain:
                entry.contributions = dict(zip(names, contributions[position - 1].tolist(), strict=True))
                entry.rules = placement.rules
            items.append(entry)
        return RankOutcome(items, served_by, version, degraded, dict(filtered.removed))

    @staticmethod
    def _explain(chosen, ranker, served_by, basis):
        """Contributions of the returned items only: TreeSHAP costs far more than scoring.

        `basis` is the model's feature matrix (ranker) or the rule contributions (rules).
        """
        if served_by == SERVED_BY_RANKER:
            return ranker.contribution_names, ranker.contributions(basis[chosen])
        return TERMS, basis[chosen]

    def _score(self, query, kept, ranker, now, degraded):
        if ranker is None:
            degraded.append(RANKER_UNAVAILABLE)
        elif kept:
            try:
                self.breaker.before_call()
            except CircuitOpenError:
                degraded.append(RANKER_CIRCUIT_OPEN)
            else:
                started = time.perf_counter()
                try:
                    x = ranker.features(kept, query.user, now)
                    scores = ranker.score(x)
                except Exception:
                    self.breaker.record_failure()
                    degraded.append(RANKER_ERROR)
                else:
                    if time.perf_counter() - started > self.model_budget_seconds:
                        self.breaker.record_failure()
                        degraded.append(RANKER_TIMEOUT)
                    else:
                        self.breaker.record_success()
                        return scores, x, SERVED_BY_RANKER, ranker.version
        else:
            return np.empty(0), np.empty((0, len(ranker.feature_names))), SERVED_BY_RANKER, ranker.version
        scores, contributions = rule_scores(kept, now, self.weights)
        return scores, contributions, SERVED_BY_RULES, ""

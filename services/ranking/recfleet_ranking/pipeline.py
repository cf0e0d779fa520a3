"""One Rank call, end to end, without any I/O: filter, score, re-rank, explain.

Scoring takes the learned ranker when one is given and healthy, else the rule formula.
A circuit breaker guards the model: errors and calls over the time budget count as
failures, and while it is open rules rank without trying the model.

Re-ranking applies the cold-start quota (cold users with preferred categories), then the
diversity rules within it, then exploration.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from recfleet_models.ranking.cold_start import ColdStartPolicy, preferred_mask
from recfleet_models.ranking.diversity import DiversityPolicy, diversify, explore
from recfleet_models.ranking.features import Candidate, CandidateColumns, UserContext, assign_ranks
from recfleet_models.ranking.filters import filter_columns
from recfleet_models.ranking.learned import LearnedRanker
from recfleet_models.ranking.rules import TERMS, RuleWeights, rule_scores
from recfleet_runtime.resilience import BreakerState, CircuitBreaker, CircuitOpenError

SERVED_BY_RANKER = "ranker"
SERVED_BY_RULES = "rules"

RANKER_UNAVAILABLE = "ranker-unavailable"
RANKER_ERROR = "ranker-error"
RANKER_TIMEOUT = "ranker-timeout"
RANKER_CIRCUIT_OPEN = "ranker-circuit-open"


@dataclass(slots=True)
class RankQuery:
    """One Rank call in domain terms; `limit` 0 means every candidate that passes;
    `cold_start`: the caller says the user is cold (whatever their interaction count).

    The service passes columns (ranks set); a `Candidate` list (tests, tools) is ranked
    by retrieval score here."""

    user: UserContext
    candidates: CandidateColumns | list[Candidate]
    limit: int = 0
    explain: bool = False
    category: str = ""
    cold_start: bool = False


@dataclass(slots=True)
class RankedEntry:
    """One returned item; `contributions`, `rules` and `source_scores` (each candidate
    source's own score, when the candidates carried them) are filled only with `explain`."""

    item_id: str
    rank: int
    score: float
    source: str
    candidate_score: float
    contributions: dict[str, float] = field(default_factory=dict)
    rules: list[str] = field(default_factory=list)
    source_scores: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class RankOutcome:
    """The answer: items in order, who scored them, fallbacks taken, filtered counts."""

    items: list[RankedEntry]
    served_by: str
    ranker_version: str
    degraded: list[str]
    filtered: dict[str, int]


@dataclass(slots=True)
class RankJob:
    """One query of `rank_many`, with the ranker chosen for it and the degradations
    already taken (feature store, ranker version)."""

    query: RankQuery
    ranker: LearnedRanker | None
    degraded: list[str] = field(default_factory=list)


# (scores, explanation basis, served_by, ranker version) of one query.
Scored = tuple[np.ndarray, np.ndarray, str, str]


class RankingPipeline:
    """Stateless per call apart from the model breaker; safe to share across calls."""

    def __init__(
        self,
        weights: RuleWeights | None = None,
        diversity: DiversityPolicy | None = None,
        exploration_share: float = 0.0,
        model_budget_seconds: float = 0.02,
        breaker: CircuitBreaker | None = None,
        cold_start: ColdStartPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ):
        if not 0 <= exploration_share < 1:
            raise ValueError("exploration_share must be in [0, 1)")
        self.weights = weights or RuleWeights()
        self.diversity = diversity or DiversityPolicy()
        self.cold_start = cold_start or ColdStartPolicy()
        self.exploration_share = exploration_share
        self.model_budget_seconds = model_budget_seconds
        self.breaker = breaker or CircuitBreaker("ranking-model", failure_threshold=3, reset_seconds=10.0)
        # The wall clock freshness is measured against (item age at the time of the call).
        self.clock = clock

    def rank(
        self,
        query: RankQuery,
        ranker: LearnedRanker | None,
        now: float | None = None,
        degraded: list[str] | None = None,
    ) -> RankOutcome:
        return self.rank_many([RankJob(query, ranker, list(degraded or ()))], now)[0]

    def rank_many(self, jobs: Sequence[RankJob], now: float | None = None) -> list[RankOutcome]:
        """Each job's outcome, exactly as `rank` alone would give it.

        Cheaper than one `rank` per job: the jobs that one ranker scores share a single
        LightGBM predict over their stacked feature matrices (LightGBM scores each row on
        its own, so the split scores are the same numbers). The stack is only tried while
        the breaker is closed; if it raises or runs over the time budget, each of its jobs
        is scored alone, so errors, timeouts and the breaker count per job as before.
        """
        now = self.clock() if now is None else now
        kept: list[CandidateColumns] = []
        removed: list[dict[str, int]] = []
        for job in jobs:
            selected, counts = self._select(job.query)
            kept.append(selected)
            removed.append(counts)
        scored: list[Scored | None] = [None] * len(jobs)
        if len(jobs) > 1 and self.breaker.state is BreakerState.CLOSED:
            by_ranker: dict[int, list[int]] = {}
            for index, job in enumerate(jobs):
                if job.ranker is not None and len(kept[index]):
                    by_ranker.setdefault(id(job.ranker), []).append(index)
            for members in by_ranker.values():
                if len(members) > 1:
                    self._score_stacked(jobs, kept, members, now, scored)
        outcomes = []
        for index, job in enumerate(jobs):
            result = scored[index]
            if result is None:
                result = self._score(job.query, kept[index], job.ranker, now, job.degraded)
            outcomes.append(self._arrange(job, kept[index], result, removed[index]))
        return outcomes

    @staticmethod
    def _select(query: RankQuery) -> tuple[CandidateColumns, dict[str, int]]:
        """The candidates the filters keep, as columns, and the removed counts."""
        candidates = query.candidates
        if not isinstance(candidates, CandidateColumns):
            assign_ranks(candidates)
            candidates = CandidateColumns.of(candidates)
        kept_at, removed = filter_columns(candidates, query.user, query.category)
        return (candidates if len(kept_at) == len(candidates) else candidates.take(kept_at)), removed

    def _arrange(self, job: RankJob, kept: CandidateColumns, scored: Scored, removed: dict[str, int]) -> RankOutcome:
        """Order by score, re-rank for the cold-start quota, diversity and exploration,
        explain."""
        query = job.query
        scores, explain_basis, served_by, version = scored
        order = np.argsort(-scores, kind="stable") if len(kept) else np.empty(0, dtype=np.int64)
        length = len(order) if query.limit <= 0 else min(query.limit, len(order))
        items = kept.items
        quota = self.cold_start.quota(query.user, query.cold_start)
        preferred = None
        if quota is not None:
            preferred = preferred_mask(items.categories[order], query.user.preferred_categories).tolist()
        placements = diversify(
            items.primary_categories[order].tolist(),
            items.creators[order].tolist(),
            length,
            self.diversity,
            preferred,
            quota,
        )
        placements = explore(placements, len(order), self.exploration_share, query.user.user_id)
        chosen = order[[p.index for p in placements]].tolist()
        if query.explain:
            names, contributions = self._explain(chosen, job.ranker, served_by, explain_basis)
        item_ids, sources = kept.item_ids, kept.sources
        candidate_scores = kept.scores.tolist()
        source_columns = kept.source_scores if query.explain else {}
        entries = []
        for position, (placement, source_index) in enumerate(zip(placements, chosen, strict=True), start=1):
            entry = RankedEntry(
                item_id=item_ids[source_index],
                rank=position,
                score=float(scores[source_index]),
                source=sources[source_index],
                candidate_score=candidate_scores[source_index],
            )
            if query.explain:
                entry.contributions = dict(zip(names, contributions[position - 1].tolist(), strict=True))
                entry.rules = placement.rules
                entry.source_scores = {name: float(column[source_index]) for name, column in source_columns.items()}
            entries.append(entry)
        return RankOutcome(entries, served_by, version, job.degraded, removed)

    @staticmethod
    def _explain(chosen: list[int], ranker: Any, served_by: str, basis: np.ndarray) -> tuple[Sequence[str], np.ndarray]:
        """Contributions of the returned items only: TreeSHAP costs far more than scoring.

        `basis` is the model's feature matrix (ranker) or the rule contributions (rules).
        """
        if served_by == SERVED_BY_RANKER:
            return ranker.contribution_names, ranker.contributions(basis[chosen])
        return TERMS, basis[chosen]

    def _score_stacked(
        self,
        jobs: Sequence[RankJob],
        kept: list[CandidateColumns],
        members: list[int],
        now: float,
        scored: list[Scored | None],
    ) -> None:
        """One predict for the jobs at `members` (same ranker); fills `scored` for them,
        or leaves them to be scored alone."""
        ranker = jobs[members[0]].ranker
        assert ranker is not None
        started = time.perf_counter()
        try:
            matrices = [ranker.features(kept[i], jobs[i].query.user, now) for i in members]
            scores = ranker.score(np.vstack(matrices))
        except Exception:  # each job alone finds (and counts) its own error
            return
        if time.perf_counter() - started > self.model_budget_seconds:
            return
        self.breaker.record_success()
        bounds = np.cumsum([len(x) for x in matrices])[:-1]
        for index, x, part in zip(members, matrices, np.split(scores, bounds), strict=True):
            scored[index] = (part, x, SERVED_BY_RANKER, ranker.version)

    def _score(
        self, query: RankQuery, kept: CandidateColumns, ranker: LearnedRanker | None, now: float, degraded: list[str]
    ) -> Scored:
        if ranker is None:
            degraded.append(RANKER_UNAVAILABLE)
        elif len(kept):
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

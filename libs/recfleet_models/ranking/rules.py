"""The rule formula (spec section 3): 0.5 candidate score + 0.3 popularity + 0.2 freshness.

Each term is in [0, 1] over the candidate set being ranked: the retrieval score
min-max normalised (all equal -> 1.0), the item's `popularity` feature (already
normalised by the popularity job; clipped), and freshness as exponential decay of the
item's age with a configurable half-life.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .features import Candidate, CandidateColumns, as_columns, freshness_array


@dataclass(frozen=True, slots=True)
class RuleWeights:
    candidate: float = 0.5
    popularity: float = 0.3
    freshness: float = 0.2
    half_life_days: float = 365.0

    def __post_init__(self) -> None:
        if min(self.candidate, self.popularity, self.freshness) < 0:
            raise ValueError("rule weights must not be negative")
        if self.half_life_days <= 0:
            raise ValueError("freshness half-life must be positive")


TERMS = ("candidate_score", "popularity", "freshness")


def min_max(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; a set whose values are all equal scales to 1.0."""
    if values.size == 0:
        return values
    low, high = float(values.min()), float(values.max())
    if high - low <= 1e-12:
        return np.ones_like(values)
    return (values - low) / (high - low)


def rule_terms(candidates: Sequence[Candidate] | CandidateColumns, now: float, half_life_days: float) -> np.ndarray:
    """An `n x 3` matrix of the normalised terms, columns in TERMS order."""
    columns = as_columns(candidates)
    terms = np.empty((len(columns), 3), dtype=np.float64)
    terms[:, 0] = min_max(columns.scores)
    terms[:, 1] = np.clip(columns.items.popularity, 0.0, 1.0)
    terms[:, 2] = freshness_array(columns.items.published_at, now, half_life_days)
    return terms


def rule_scores(
    candidates: Sequence[Candidate] | CandidateColumns, now: float, weights: RuleWeights
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, contributions): contributions is `n x 3`, weight times term, summing to the score."""
    terms = rule_terms(candidates, now, weights.half_life_days)
    contributions = terms * np.array([weights.candidate, weights.popularity, weights.freshness])
    return contributions.sum(axis=1), contributions

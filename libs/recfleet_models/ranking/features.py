"""The domain objects ranking works on: candidates with their item features, and the user.

Pure: no protobuf, network or database here. The ranking service's servicer and
feature-store adapter build these from the request and the `GetItemFeatures` rows; the
trainer builds them from point-in-time values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

SECONDS_PER_DAY = 86_400.0
AFFINITY_PREFIX = "affinity:"

# Item features read from the feature store (names from docs/CONTRACTS.md).
ITEM_FEATURE_NAMES = (
    "categories",
    "creator",
    "published_at",
    "age_rating",
    "regions",
    "available",
    "popularity",
    "popularity_7d",
)


@dataclass(slots=True)
class Candidate:
    """One candidate item: what retrieval said about it plus its item features.

    `age_rating` is None when the item's features are unknown (no feature row, or the
    feature store did not answer); the age filter then treats it as restricted.
    """

    item_id: str
    score: float
    source: str = ""
    rank: int = 0
    categories: tuple[str, ...] = ()
    creator: str = ""
    published_at: float = 0.0
    age_rating: int | None = None
    regions: tuple[str, ...] = ()
    available: bool = True
    popularity: float = 0.0
    popularity_7d: float = 0.0

    @property
    def primary_category(self) -> str:
        return self.categories[0] if self.categories else ""


@dataclass(slots=True)
class UserContext:
    """The user as ranking sees them: constraints and numeric features.

    `features` carries numeric user features by name (`interaction_count`, ...) and the
    user's category affinities as `affinity:<category>` (share of the user's interactions
    in that category, 0..1).
    """

    user_id: str
    age: int = 0
    country: str = ""
    blocked_categories: frozenset[str] = frozenset()
    preferred_categories: frozenset[str] = frozenset()
    seen_item_ids: frozenset[str] = frozenset()
    features: Mapping[str, float] = field(default_factory=dict)
    _affinities: dict[str, float] | None = field(default=None, repr=False, compare=False)

    def affinity(self, category: str) -> float:
        return float(self.features.get(AFFINITY_PREFIX + category, 0.0))

    @property
    def has_affinities(self) -> bool:
        return bool(self.affinities)

    @property
    def affinities(self) -> dict[str, float]:
        """Category -> affinity, from the `affinity:<category>` features."""
        cached = self._affinities
        if cached is None:
            cut = len(AFFINITY_PREFIX)
            cached = {k[cut:]: float(v) for k, v in self.features.items() if k.startswith(AFFINITY_PREFIX)}
            self._affinities = cached
        return cached

    @property
    def interaction_count(self) -> float:
        return float(self.features.get("interaction_count", 0.0))


def assign_ranks(candidates: list[Candidate]) -> None:
    """Set each candidate's 0-based position by retrieval score (ties keep input order)."""
    order = sorted(range(len(candidates)), key=lambda i: -candidates[i].score)
    for position, index in enumerate(order):
        candidates[index].rank = position


def freshness(published_at: float, now: float, half_life_days: float) -> float:
    """Exponential decay of the item's age: 1.0 when new, 0.5 after one half-life.

    Unknown publication time (0) scores 0; a time in the future counts as new.
    """
    if published_at <= 0:
        return 0.0
    age_days = max(0.0, (now - published_at) / SECONDS_PER_DAY)
    return math.pow(0.5, age_days / half_life_days)


def age_days(published_at: float, now: float) -> float:
    """Item age in days; -1 when the publication time is unknown."""
    if published_at <= 0:
        return -1.0
    return max(0.0, (now - published_at) / SECONDS_PER_DAY)


def freshness_array(published_at: np.ndarray, now: float, half_life_days: float) -> np.ndarray:
    """`freshness` for an array of publication times."""
    age = np.maximum(0.0, (now - published_at) / SECONDS_PER_DAY)
    return np.where(published_at > 0, np.power(0.5, age / half_life_days), 0.0)


def age_days_array(published_at: np.ndarray, now: float) -> np.ndarray:
    """`age_days` for an array of publication times."""
    return np.where(published_at > 0, np.maximum(0.0, (now - published_at) / SECONDS_PER_DAY), -1.0)

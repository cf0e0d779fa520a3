"""The domain objects ranking works on: candidates with their item features, and the user.

Two forms of the same data: `Candidate` objects (the trainer builds them from
point-in-time values; tests) and columns (`CandidateColumns`, `ItemColumns`: one array
per field), which the ranking service builds from the request and its item-feature
cache so that per-call work is one numpy operation per feature rather than Python per
candidate. Every function that computes from candidates accepts both and gives the same
numbers.

Pure: no protobuf, network or database here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields

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


def objects(values: Iterable[object], count: int) -> np.ndarray:
    """A 1-d object array of `values` (tuples stay elements, never a second axis)."""
    return np.fromiter(values, dtype=object, count=count)


@dataclass(slots=True)
class ItemColumns:
    """Item features as parallel columns, position i = one item.

    The serving path's form: a feature is one numpy operation over a call rather than one
    attribute read per `Candidate`, and a call's items are gathered from the ranking
    service's cache with one fancy index per column (`take`). `age_rating` is NaN where
    the item's features are unknown (the age filter counts it as 18-rated).
    """

    categories: np.ndarray  # object: tuple[str, ...], first = primary
    primary_categories: np.ndarray  # object: str, "" without categories
    creators: np.ndarray  # object: str
    published_at: np.ndarray  # float64
    age_rating: np.ndarray  # float64, NaN unknown
    regions: np.ndarray  # object: tuple[str, ...]
    available: np.ndarray  # bool
    popularity: np.ndarray  # float64
    popularity_7d: np.ndarray  # float64

    def __len__(self) -> int:
        return len(self.published_at)

    def take(self, rows: np.ndarray) -> ItemColumns:
        """The items at these positions, in this order (copies)."""
        return ItemColumns(
            self.categories[rows],
            self.primary_categories[rows],
            self.creators[rows],
            self.published_at[rows],
            self.age_rating[rows],
            self.regions[rows],
            self.available[rows],
            self.popularity[rows],
            self.popularity_7d[rows],
        )

    def put(self, rows: np.ndarray, other: ItemColumns) -> None:
        """Overwrite the items at these positions with `other`'s, in order."""
        for name in _ITEM_COLUMN_NAMES:
            getattr(self, name)[rows] = getattr(other, name)

    @classmethod
    def unknown(cls, count: int) -> ItemColumns:
        """`count` items whose features are unknown: every value at its `Candidate` default."""
        empty = objects([()] * count, count)
        blank = objects([""] * count, count)
        return cls(
            empty,
            blank,
            blank.copy(),
            np.zeros(count),
            np.full(count, np.nan),
            empty.copy(),
            np.ones(count, bool),
            np.zeros(count),
            np.zeros(count),
        )

    @classmethod
    def of(cls, candidates: Sequence[Candidate]) -> ItemColumns:
        n = len(candidates)
        return cls(
            objects((c.categories for c in candidates), n),
            objects((c.primary_category for c in candidates), n),
            objects((c.creator for c in candidates), n),
            np.fromiter((c.published_at for c in candidates), np.float64, n),
            np.fromiter((np.nan if c.age_rating is None else c.age_rating for c in candidates), np.float64, n),
            objects((c.regions for c in candidates), n),
            np.fromiter((c.available for c in candidates), bool, n),
            np.fromiter((c.popularity for c in candidates), np.float64, n),
            np.fromiter((c.popularity_7d for c in candidates), np.float64, n),
        )


_ITEM_COLUMN_NAMES = tuple(f.name for f in fields(ItemColumns))


@dataclass(slots=True)
class CandidateColumns:
    """The candidates of one call as columns: what retrieval said plus their item features.

    `ranks` is each candidate's 0-based position by retrieval score over the whole call
    (`retrieval_ranks`), kept when filters `take` a subset. A `Candidate` list (training,
    tests) converts with `of`; both forms give the same numbers to every function here.
    `source_scores` holds each candidate source's own score column (source name -> float64
    array), for explanations and the ranker's `<source>_score_z` features.
    """

    item_ids: np.ndarray  # object: str
    scores: np.ndarray  # float64
    sources: np.ndarray  # object: str
    items: ItemColumns
    ranks: np.ndarray  # int64
    source_scores: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, rows: np.ndarray) -> CandidateColumns:
        return CandidateColumns(
            self.item_ids[rows],
            self.scores[rows],
            self.sources[rows],
            self.items.take(rows),
            self.ranks[rows],
            {source: column[rows] for source, column in self.source_scores.items()},
        )

    @classmethod
    def of(cls, candidates: Sequence[Candidate]) -> CandidateColumns:
        """Columns of candidates whose ranks are set (`assign_ranks`)."""
        n = len(candidates)
        return cls(
            objects((c.item_id for c in candidates), n),
            np.fromiter((c.score for c in candidates), np.float64, n),
            objects((c.source for c in candidates), n),
            ItemColumns.of(candidates),
            np.fromiter((c.rank for c in candidates), np.int64, n),
        )


def as_columns(candidates: Sequence[Candidate] | CandidateColumns) -> CandidateColumns:
    return candidates if isinstance(candidates, CandidateColumns) else CandidateColumns.of(candidates)


def retrieval_ranks(scores: np.ndarray) -> np.ndarray:
    """`assign_ranks` for a score column: 0-based position by score, ties in input order."""
    ranks = np.empty(len(scores), dtype=np.int64)
    ranks[np.argsort(-scores, kind="stable")] = np.arange(len(scores))
    return ranks


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

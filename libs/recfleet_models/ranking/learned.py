"""The learned ranker: LightGBM lambdarank over features shared by training and serving.

`feature_matrix` is the single definition of the ranker's features; the trainer
(`recfleet_models.ranking.training`, run by `recfleet-jobs train-ranker` and by offline
evaluation) calls it with point-in-time values, the ranking service with the feature
store's online values, so both see the same columns computed the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np

from .features import Candidate, CandidateColumns, UserContext, age_days_array, as_columns, freshness_array
from .rules import min_max

FEATURE_NAMES = (
    "candidate_score",
    "candidate_score_norm",
    "candidate_rank",
    "popularity",
    "popularity_rel",
    "popularity_7d_rel",
    "freshness",
    "item_age_days",
    "category_match",
    "category_affinity",
    "user_interaction_count",
    # Each candidate source's own score, standardised over the candidates (missing when
    # the list carries no such source: a version without EASE, a cold-start list).
    "als_score_z",
    "ease_score_z",
)
# The sources behind the `<source>_score_z` features, in FEATURE_NAMES order.
SOURCE_FEATURES = ("als", "ease")
BIAS = "bias"


def _relative(values: np.ndarray) -> np.ndarray:
    """Value over the set's maximum (0 when the set has no positive value)."""
    top = float(values.max()) if values.size else 0.0
    return values / top if top > 0 else np.zeros_like(values)


def _standardised(values: np.ndarray) -> np.ndarray:
    """Values in standard deviations from their mean (zeros when they are all equal)."""
    sd = float(values.std()) if values.size else 0.0
    return (values - values.mean()) / sd if sd > 0 else np.zeros_like(values)


def feature_matrix(
    candidates: Sequence[Candidate] | CandidateColumns,
    user: UserContext,
    now: float,
    half_life_days: float = 365.0,
    source_scores: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """An `n x len(FEATURE_NAMES)` float64 matrix, one row per candidate.

    Candidate ranks must be set (`features.assign_ranks`; columns carry them). A
    `Candidate` list is turned into columns first, so training and serving share this one
    computation. `category_affinity` is the user's highest affinity over the item's
    categories, missing (NaN) when the request carries no affinities at all;
    `category_match` is 1 when any of the item's categories is one of the user's
    preferred categories. `<source>_score_z` standardises the candidates' column of that
    source (`source_scores`, default the columns' own) over the candidates, missing (NaN)
    when there is none.
    """
    columns = as_columns(candidates)
    items = columns.items
    n = len(columns)
    x = np.empty((n, len(FEATURE_NAMES)), dtype=np.float64)
    scores = columns.scores
    preferred = user.preferred_categories
    x[:, 0] = scores
    x[:, 1] = min_max(scores)
    x[:, 2] = columns.ranks
    x[:, 3] = items.popularity
    x[:, 4] = _relative(items.popularity)
    x[:, 5] = _relative(items.popularity_7d)
    x[:, 6] = freshness_array(items.published_at, now, half_life_days)
    x[:, 7] = age_days_array(items.published_at, now)
    if preferred:
        x[:, 8] = ~np.fromiter(map(preferred.isdisjoint, items.categories), bool, n)
    else:
        x[:, 8] = 0.0
    affinities = user.affinities
    if affinities:
        # Items share few distinct category tuples: each one's best affinity is worked out once.
        get = affinities.get
        best: dict[tuple[str, ...], float] = {}
        for categories in set(items.categories.tolist()):
            best[categories] = max([get(k, 0.0) for k in categories], default=0.0)
        x[:, 9] = np.fromiter(map(best.__getitem__, items.categories), np.float64, n)
    else:
        x[:, 9] = np.nan
    x[:, 10] = user.interaction_count
    scored = columns.source_scores if source_scores is None else source_scores
    for offset, source in enumerate(SOURCE_FEATURES):
        column = scored.get(source)
        x[:, 11 + offset] = np.nan if column is None else _standardised(np.asarray(column, dtype=np.float64))
    return x


@dataclass
class LearnedRanker:
    """One loaded ranker version. Prediction is single-threaded for latency."""

    version: str
    booster: lgb.Booster
    feature_names: tuple[str, ...]
    half_life_days: float = 365.0

    def __post_init__(self) -> None:
        unknown = set(self.feature_names) - set(FEATURE_NAMES)
        if unknown:
            raise ValueError(f"ranker {self.version} uses features this service does not compute: {sorted(unknown)}")
        self._columns = np.array([FEATURE_NAMES.index(name) for name in self.feature_names])

    @classmethod
    def from_text(cls, version: str, model_text: str, meta: dict[str, Any]) -> LearnedRanker:
        booster = lgb.Booster(model_str=model_text)
        names = tuple(meta.get("feature_names") or booster.feature_name())
        return cls(version, booster, names, float(meta.get("freshness_half_life_days", 365.0)))

    def features(self, candidates: Sequence[Candidate] | CandidateColumns, user: UserContext, now: float) -> np.ndarray:
        """The model's input: `feature_matrix` restricted to (and ordered as) its features."""
        return feature_matrix(candidates, user, now, self.half_life_days)[:, self._columns]

    def score(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(x, num_threads=1))

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """`pred_contrib` (TreeSHAP): `n x (features + 1)`, the last column the bias; rows sum to the score."""
        if len(x) == 0:
            return np.empty((0, len(self.feature_names) + 1))
        return np.asarray(self.booster.predict(x, num_threads=1, pred_contrib=True))

    @property
    def contribution_names(self) -> tuple[str, ...]:
        return (*self.feature_names, BIAS)


def model_meta(version: str, feature_names: tuple[str, ...], **extra: Any) -> str:
    """The `meta.json` document written next to `model.txt`."""
    return json.dumps({"version": version, "feature_names": list(feature_names), **extra}, indent=2, sort_keys=True)

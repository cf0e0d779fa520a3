"""Item popularity in three windows, as pure functions over event arrays.

- `all`: weighted interaction count over the whole log;
- `7d`: the same over the last `recent_days` (7) days;
- `trending`: events of the last `trending_days` (30) days, each weight decayed
  exponentially with its age (`half_life_days`, 3 days by default), so an item rising
  now beats one that was busy a month ago.

"Now" is the newest event in the data, not the wall clock, so an old log such as
MovieLens still has a recent window and trends. Event weights are the ALS ones
(`recfleet_models.als.event_weights`): a purchase counts more than a view, a dislike
not at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

WINDOWS = ("all", "7d", "trending")
DAY = 86_400.0


@dataclass(frozen=True)
class PopularityParams:
    recent_days: float = 7.0
    trending_days: float = 30.0
    half_life_days: float = 3.0

    def __post_init__(self) -> None:
        if min(self.recent_days, self.trending_days, self.half_life_days) <= 0:
            raise ValueError("popularity windows and half-life must be positive")


DEFAULT_PARAMS = PopularityParams()


def window_scores(
    item_ids: Sequence[str],
    weights: np.ndarray,
    timestamps: np.ndarray,
    params: PopularityParams = DEFAULT_PARAMS,
    now: float | None = None,
) -> dict[str, dict[str, float]]:
    """window -> item -> score (> 0 only) for every window in WINDOWS.

    `timestamps` are epoch seconds; `now` defaults to the newest of them.
    """
    items = np.asarray(item_ids, dtype=object)
    weights = np.asarray(weights, dtype=np.float64)
    timestamps = np.asarray(timestamps, dtype=np.float64)
    if not (len(items) == len(weights) == len(timestamps)):
        raise ValueError("item_ids, weights and timestamps must have the same length")
    if len(items) == 0:
        return {window: {} for window in WINDOWS}
    now = float(timestamps.max()) if now is None else float(now)
    age_days = (now - timestamps) / DAY
    recent = (age_days >= 0) & (age_days < params.recent_days)
    trending = (age_days >= 0) & (age_days < params.trending_days)
    decay = np.where(trending, np.power(0.5, np.clip(age_days, 0, None) / params.half_life_days), 0.0)
    return {
        "all": _sum_by_item(items, weights),
        "7d": _sum_by_item(items, np.where(recent, weights, 0.0)),
        "trending": _sum_by_item(items, weights * decay),
    }


def _sum_by_item(items: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    keys, inverse = np.unique(items.astype(str), return_inverse=True)
    sums = np.bincount(inverse, weights=weights, minlength=len(keys))
    return {key: float(total) for key, total in zip(keys.tolist(), sums.tolist(), strict=False) if total > 0}


def normalise(scores: Mapping[str, float]) -> dict[str, float]:
    """Scores divided by the largest one: the busiest item gets 1, none gets 0."""
    top = max(scores.values(), default=0.0)
    if top <= 0:
        return dict.fromkeys(scores, 0.0)
    return {item: score / top for item, score in scores.items()}


def by_category(scores: Mapping[str, float], categories: Mapping[str, Sequence[str]]) -> dict[str, dict[str, float]]:
    """category -> item -> score, an item counted in every one of its categories."""
    out: dict[str, dict[str, float]] = {}
    for item, score in scores.items():
        for category in categories.get(item, ()):
            out.setdefault(category, {})[item] = score
    return out

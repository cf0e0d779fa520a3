"""Business and privacy filters (spec section 3): what a user must never see.

Each candidate is removed for the first reason that applies, and counted under it:

- `seen`: the user already interacted with the item;
- `unavailable`: the item is marked unavailable;
- `blocked-category`: any of the item's categories is blocked by the user;
- `age`: the item's age rating is above the user's age. A user of unknown age (0) is
  treated as an adult only for ratings below 18, so 18-rated items need a known age of
  18 or more. An item whose rating is unknown (no features) counts as 18-rated;
- `region`: the item lists regions and the user's country is not among them. A user of
  unknown country sees only items without regions;
- `category`: the request asked for one category and the item does not have it.
"""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass
from itertools import repeat

import numpy as np

from .features import Candidate, CandidateColumns, UserContext

ADULT_AGE = 18
# Highest rating shown to a user whose age is unknown.
UNKNOWN_AGE_MAX_RATING = 16

SEEN = "seen"
UNAVAILABLE = "unavailable"
BLOCKED_CATEGORY = "blocked-category"
AGE = "age"
REGION = "region"
CATEGORY = "category"
# Every reason, in the order the filters apply.
REASONS = (SEEN, UNAVAILABLE, BLOCKED_CATEGORY, AGE, REGION, CATEGORY)


@dataclass(frozen=True, slots=True)
class UserFilter:
    """The filters for one user and request, with what depends on the user worked out
    once: `reason` then runs for every candidate of the call."""

    seen: frozenset[str]
    blocked: frozenset[str]
    max_rating: int
    country: str
    category: str

    @classmethod
    def for_user(cls, user: UserContext, category: str = "") -> UserFilter:
        max_rating = user.age if user.age > 0 else UNKNOWN_AGE_MAX_RATING
        return cls(user.seen_item_ids, user.blocked_categories, max_rating, user.country.upper(), category)

    def reason(self, item: Candidate) -> str | None:
        """The first filter that removes the item, or None when it may be shown."""
        if item.item_id in self.seen:
            return SEEN
        if not item.available:
            return UNAVAILABLE
        if self.blocked and not self.blocked.isdisjoint(item.categories):
            return BLOCKED_CATEGORY
        if (ADULT_AGE if item.age_rating is None else item.age_rating) > self.max_rating:
            return AGE
        if item.regions and (not self.country or self.country not in item.regions):
            return REGION
        if self.category and self.category not in item.categories:
            return CATEGORY
        return None


def reason_to_filter(item: Candidate, user: UserContext, category: str = "") -> str | None:
    """The first filter that removes the item, or None when it may be shown."""
    return UserFilter.for_user(user, category).reason(item)


@dataclass(slots=True)
class FilterResult:
    kept: list[Candidate]
    removed: Counter[str]


def apply_filters(candidates: list[Candidate], user: UserContext, category: str = "") -> FilterResult:
    """Keep the candidates the user may see; count the others by reason."""
    reason_for = UserFilter.for_user(user, category).reason
    kept: list[Candidate] = []
    removed: Counter[str] = Counter()
    for item in candidates:
        reason = reason_for(item)
        if reason is None:
            kept.append(item)
        else:
            removed[reason] += 1
    return FilterResult(kept, removed)


def filter_columns(
    candidates: CandidateColumns, user: UserContext, category: str = ""
) -> tuple[np.ndarray, dict[str, int]]:
    """`apply_filters` over columns: (positions kept, in order; removed counts by reason).

    Each filter is one pass over a column, applied only to the candidates no earlier
    filter removed, so every candidate is counted under the first reason, as
    `UserFilter.reason` decides it. Reasons are listed in the order their first candidate
    appears, as `apply_filters` counts them.
    """
    rules = UserFilter.for_user(user, category)
    items = candidates.items
    n = len(candidates)
    reason = np.zeros(n, dtype=np.int8)  # 0 = kept, else 1 + index in REASONS

    def remove(code: int, hit: np.ndarray) -> None:
        reason[(reason == 0) & hit] = code

    # map() with a bound method runs each test without a Python frame per candidate.
    if rules.seen:
        remove(1, np.fromiter(map(rules.seen.__contains__, candidates.item_ids), bool, n))
    remove(2, ~items.available)
    if rules.blocked:
        remove(3, ~np.fromiter(map(rules.blocked.isdisjoint, items.categories), bool, n))
    remove(4, np.where(np.isnan(items.age_rating), ADULT_AGE, items.age_rating) > rules.max_rating)
    limited = np.flatnonzero(np.fromiter(map(len, items.regions), np.int64, n))
    if len(limited):
        country = rules.country
        outside = np.zeros(n, dtype=bool)
        outside[limited] = [not country or country not in regions for regions in items.regions[limited]]
        remove(5, outside)
    if category:
        remove(6, ~np.fromiter(map(operator.contains, items.categories, repeat(category)), bool, n))
    kept = np.flatnonzero(reason == 0)
    if len(kept) == n:
        return kept, {}
    codes, first, counts = np.unique(reason, return_index=True, return_counts=True)
    removed = sorted(
        (int(f), REASONS[int(code) - 1], int(count))
        for code, f, count in zip(codes, first, counts, strict=True)
        if code
    )
    return kept, {name: count for _, name, count in removed}

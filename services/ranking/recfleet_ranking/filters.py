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

from collections import Counter
from dataclasses import dataclass

from .features import Candidate, UserContext

ADULT_AGE = 18
# Highest rating shown to a user whose age is unknown.
UNKNOWN_AGE_MAX_RATING = 16

SEEN = "seen"
UNAVAILABLE = "unavailable"
BLOCKED_CATEGORY = "blocked-category"
AGE = "age"
REGION = "region"
CATEGORY = "category"


def is_seen(item: Candidate, user: UserContext) -> bool:
    return item.item_id in user.seen_item_ids


def is_unavailable(item: Candidate) -> bool:
    return not item.available


def is_blocked(item: Candidate, user: UserContext) -> bool:
    return not user.blocked_categories.isdisjoint(item.categories)


def is_age_restricted(item: Candidate, user: UserContext) -> bool:
    rating = ADULT_AGE if item.age_rating is None else item.age_rating
    if user.age <= 0:
        return rating > UNKNOWN_AGE_MAX_RATING
    return rating > user.age


def is_region_restricted(item: Candidate, user: UserContext) -> bool:
    if not item.regions:
        return False
    return not user.country or user.country.upper() not in item.regions


def is_outside_category(item: Candidate, category: str) -> bool:
    return bool(category) and category not in item.categories


def reason_to_filter(item: Candidate, user: UserContext, category: str = "") -> str | None:
    """The first filter that removes the item, or None when it may be shown."""
    if is_seen(item, user):
        return SEEN
    if is_unavailable(item):
        return UNAVAILABLE
    if is_blocked(item, user):
        return BLOCKED_CATEGORY
    if is_age_restricted(item, user):
        return AGE
    if is_region_restricted(item, user):
        return REGION
    if is_outside_category(item, category):
        return CATEGORY
    return None


@dataclass(slots=True)
class FilterResult:
    kept: list[Candidate]
    removed: Counter


def apply_filters(candidates: list[Candidate], user: UserContext, category: str = "") -> FilterResult:
    """Keep the candidates the user may see; count the others by reason."""
    kept: list[Candidate] = []
    removed: Counter = Counter()
    for item in candidates:
        reason = reason_to_filter(item, user, category)
        if reason is None:
            kept.append(item)
        else:
            removed[reason] += 1
    return FilterResult(kept, removed)

"""Cold start in ranking: a user with little or no history who said what they like.

The learned ranker was trained on users with history and knows nothing of onboarding
preferences: left alone it ranks the popular items of a new user's preferred categories
below the overall popular ones. So for a cold user with preferred categories the
re-ranking claims a share of the positions for items having one of those categories
(`PreferredQuota`, applied by `diversity.diversify`); the other positions keep the score
order.

A user is cold when the request says so (the caller found no personal vector or too
little history) or their `interaction_count` feature is below `threshold` (a request
without that feature counts as 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .diversity import PreferredQuota
from .features import UserContext


@dataclass(frozen=True, slots=True)
class ColdStartPolicy:
    """`preferred_share` of every `window` consecutive positions goes to preferred items
    for cold users (0 turns the quota off)."""

    threshold: int = 5
    preferred_share: float = 0.5
    window: int = 10

    def __post_init__(self) -> None:
        if self.threshold < 0:
            raise ValueError("cold-start threshold must not be negative")
        if not 0 <= self.preferred_share <= 1:
            raise ValueError("cold-start preferred share must be in [0, 1]")
        if self.window < 1:
            raise ValueError("cold-start quota window must be at least 1")

    def is_cold(self, user: UserContext, said_cold: bool = False) -> bool:
        return said_cold or user.interaction_count < self.threshold

    def quota(self, user: UserContext, said_cold: bool = False) -> PreferredQuota | None:
        """The quota for this user, or None: not cold, no preferred categories, or off."""
        if self.preferred_share <= 0 or not user.preferred_categories or not self.is_cold(user, said_cold):
            return None
        return PreferredQuota(self.preferred_share, self.window)


def preferred_mask(categories: np.ndarray, preferred: frozenset[str]) -> np.ndarray:
    """Whether each item (an object array of category tuples) has a preferred category,
    primary or not."""
    return ~np.fromiter(map(preferred.isdisjoint, categories), bool, len(categories))

"""Re-ranking after scoring: diversity and exploration.

Diversity (spec section 3): within the first `window` positions at most
`max_per_category` items share a primary category, and no creator holds more than
`max_creator_share` of those positions, nor of the whole returned list. Greedy: each position takes the best-scored
remaining item that keeps both constraints; when none does ("when the catalog allows
it"), the best item that keeps the category constraint, then the creator constraint,
then simply the best remaining one. An empty creator is nobody and is never capped.

Exploration: a share of the slots goes to random lower-ranked items, chosen with a
generator seeded by the user id so the same user sees the same list for the same
candidates.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

DIVERSITY_CATEGORY = "diversity:category"
DIVERSITY_CREATOR = "diversity:creator"
DIVERSITY_RELAXED = "diversity:relaxed"
EXPLORATION = "exploration"


@dataclass(frozen=True, slots=True)
class DiversityPolicy:
    max_per_category: int = 3
    window: int = 20
    max_creator_share: float = 0.15

    def __post_init__(self) -> None:
        if self.max_per_category < 1:
            raise ValueError("max_per_category must be at least 1")
        if self.window < 0:
            raise ValueError("diversity window must not be negative")
        if not 0 < self.max_creator_share <= 1:
            raise ValueError("max_creator_share must be in (0, 1]")

    def creator_cap(self, list_length: int) -> int:
        """Most items one creator may hold in a list of this length (at least 1)."""
        return max(1, math.floor(self.max_creator_share * list_length + 1e-9))


@dataclass(slots=True)
class Placement:
    """Where re-ranking put an item: index into the scored list, and the rules applied."""

    index: int
    rules: list[str]


def diversify(
    primary_categories: Sequence[str],
    creators: Sequence[str],
    length: int,
    policy: DiversityPolicy,
) -> list[Placement]:
    """Choose `length` items from a list sorted best first.

    Returns placements in output order; an item that was passed over for a constraint
    carries the rule that moved it down.
    """
    n = len(primary_categories)
    length = min(length, n)
    # The share holds within the window (the top 20 a user sees first) and over the list.
    window_cap = policy.creator_cap(min(policy.window, length)) if policy.window else length
    list_cap = policy.creator_cap(length)
    remaining = list(range(n))
    per_category: Counter[str] = Counter()
    per_creator: Counter[str] = Counter()
    moved: dict[int, list[str]] = {}
    placements: list[Placement] = []
    for position in range(length):
        in_window = position < policy.window

        def category_ok(i: int, in_window: bool = in_window) -> bool:
            category = primary_categories[i]
            return not in_window or not category or per_category[category] < policy.max_per_category

        cap = min(window_cap, list_cap) if in_window else list_cap

        def creator_ok(i: int, cap: int = cap) -> bool:
            return not creators[i] or per_creator[creators[i]] < cap

        chosen_at = _first(remaining, lambda i: category_ok(i) and creator_ok(i))
        relaxed = False
        if chosen_at is None:
            relaxed = True
            chosen_at = _first(remaining, category_ok)
            if chosen_at is None:
                chosen_at = _first(remaining, creator_ok)
            if chosen_at is None:
                chosen_at = 0
        for skipped in remaining[:chosen_at]:
            rule = DIVERSITY_CATEGORY if not category_ok(skipped) else DIVERSITY_CREATOR
            rules = moved.setdefault(skipped, [])
            if rule not in rules:
                rules.append(rule)
        index = remaining.pop(chosen_at)
        per_category[primary_categories[index]] += 1
        if creators[index]:
            per_creator[creators[index]] += 1
        rules = list(moved.get(index, []))
        if relaxed:
            rules.append(DIVERSITY_RELAXED)
        placements.append(Placement(index, rules))
    return placements


def _first(remaining: list[int], accept: Callable[[int], bool]) -> int | None:
    for position, index in enumerate(remaining):
        if accept(index):
            return position
    return None


def user_seed(user_id: str) -> int:
    """A stable 64-bit seed from the user id (the same across processes and restarts)."""
    return int.from_bytes(hashlib.blake2b(user_id.encode(), digest_size=8).digest(), "big")


def explore(placements: list[Placement], total: int, share: float, user_id: str) -> list[Placement]:
    """Give `round(share * len(placements))` of the last slots to random lower-ranked items.

    `total` is the number of scored items; lower-ranked ones are those not placed. The
    explored items keep their relative score order at the end of the list.
    """
    if share <= 0 or not placements:
        return placements
    slots = min(round(share * len(placements)), len(placements))
    placed = {p.index for p in placements}
    pool = [i for i in range(total) if i not in placed]
    slots = min(slots, len(pool))
    if slots == 0:
        return placements
    rng = random.Random(user_seed(user_id))
    picked = sorted(rng.sample(pool, slots))
    return placements[: len(placements) - slots] + [Placement(i, [EXPLORATION]) for i in picked]

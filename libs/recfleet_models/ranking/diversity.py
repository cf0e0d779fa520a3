"""Re-ranking after scoring: diversity and exploration.

Diversity (spec section 3): within the first `window` positions at most
`max_per_category` items share a primary category, and no creator holds more than
`max_creator_share` of those positions, nor of the whole returned list. Greedy: each position takes the best-scored
remaining item that keeps both constraints; when none does ("when the catalog allows
it"), the best item that keeps the category constraint, then the creator constraint,
then simply the best remaining one. An empty creator is nobody and is never capped.

Preferred quota (cold start, `PreferredQuota`): some positions are claimed for preferred
items. The quota comes before the diversity rules: at a claimed position only preferred
items compete, and the diversity rules choose among them as above (the best one keeping
both, else relaxed in the same order); an unclaimed position is filled from every
remaining item. Preferred items count towards the caps like any other, so the caps go on
shaping the rest of the list.

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
from itertools import compress

DIVERSITY_CATEGORY = "diversity:category"
DIVERSITY_CREATOR = "diversity:creator"
DIVERSITY_RELAXED = "diversity:relaxed"
PREFERRED_QUOTA = "quota:preferred-category"
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


@dataclass(frozen=True, slots=True)
class PreferredQuota:
    """Positions claimed for preferred items while any remain: every `window` consecutive
    positions hold at least `ceil(share * window)` of them, and within the first window
    they are spread out: the first k positions hold at least `ceil(share * k)`. A list
    shorter than the window is one window of its own length."""

    share: float
    window: int = 10

    def __post_init__(self) -> None:
        if not 0 < self.share <= 1:
            raise ValueError("preferred share must be in (0, 1]")
        if self.window < 1:
            raise ValueError("quota window must be at least 1")


class _QuotaTracker:
    """Which positions of one list the quota claims, as the list is built."""

    def __init__(self, quota: PreferredQuota, preferred: Sequence[bool], length: int):
        self.share = quota.share
        self.window = max(1, min(quota.window, length))
        self.need = _at_least(quota.share * self.window)
        self.left = sum(preferred)  # preferred items not placed yet
        self.placed: list[bool] = []
        self.in_window = 0  # preferred among the last `window` placed

    def claims(self, position: int) -> bool:
        """Whether this position must take a preferred item. Past the first window it must
        when the `window - 1` positions before it hold fewer than the quota; the window that
        ended just before held enough, so one claimed position always makes up the rest."""
        if not self.left:
            return False
        if position < self.window:
            return self.in_window < _at_least(self.share * (position + 1))
        return self.in_window - self.placed[position - self.window] < self.need

    def record(self, position: int, was_preferred: bool) -> None:
        self.placed.append(was_preferred)
        self.in_window += was_preferred
        if position >= self.window:
            self.in_window -= self.placed[position - self.window]
        if was_preferred:
            self.left -= 1


def _at_least(value: float) -> int:
    return math.ceil(value - 1e-9)


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
    preferred: Sequence[bool] | None = None,
    quota: PreferredQuota | None = None,
) -> list[Placement]:
    """Choose `length` items from a list sorted best first.

    With a `quota`, `preferred[i]` says whether item i is preferred, and the positions the
    quota claims take the best preferred item the rules allow.

    Returns placements in output order; an item that was passed over for a constraint
    carries the rule that moved it down, and an item lifted over others by the quota
    carries `quota:preferred-category`, as do the items it passed.
    """
    n = len(primary_categories)
    length = min(length, n)
    # The share holds within the window (the top 20 a user sees first) and over the list.
    window_cap = policy.creator_cap(min(policy.window, length)) if policy.window else length
    list_cap = policy.creator_cap(length)
    tracker = _QuotaTracker(quota, preferred, length) if quota is not None and preferred is not None else None
    is_preferred = preferred.__getitem__ if preferred is not None else None
    remaining = list(range(n))
    # The preferred items not placed yet, best first: a claimed position looks only here.
    pending = list(compress(range(n), preferred)) if tracker is not None and preferred is not None else []
    quota_bar = -1  # the lowest-scored item a claimed position has taken so far
    per_category: Counter[str] = Counter()
    per_creator: Counter[str] = Counter()
    moved: dict[int, list[str]] = {}
    placements: list[Placement] = []
    # Past the window with no quota and no creator in the list, no rule applies any more:
    # the rest of the list is the remaining items in score order.
    unconstrained_after_window = tracker is None and not any(creators)
    for position in range(length):
        in_window = position < policy.window
        if not in_window and unconstrained_after_window:
            placements.extend(Placement(index, list(moved.get(index, []))) for index in remaining[: length - position])
            break

        def category_ok(i: int, in_window: bool = in_window) -> bool:
            category = primary_categories[i]
            return not in_window or not category or per_category[category] < policy.max_per_category

        cap = min(window_cap, list_cap) if in_window else list_cap

        def creator_ok(i: int, cap: int = cap) -> bool:
            return not creators[i] or per_creator[creators[i]] < cap

        claimed = tracker is not None and tracker.claims(position)
        if claimed:
            at, relaxed = _choose(pending, category_ok, creator_ok)
            chosen_at = remaining.index(pending[at])
            # Preferred items passed over broke a cap; the others in between gave way to
            # the quota (marked when placed: every one below `quota_bar` was passed).
            skipped_here = pending[:at]
            lifted = chosen_at > at
            quota_bar = max(quota_bar, pending[at])
        else:
            chosen_at, relaxed = _choose(remaining, category_ok, creator_ok)
            skipped_here = remaining[:chosen_at]
            lifted = False
        for skipped in skipped_here:
            rule = DIVERSITY_CATEGORY if not category_ok(skipped) else DIVERSITY_CREATOR
            rules = moved.setdefault(skipped, [])
            if rule not in rules:
                rules.append(rule)
        index = remaining.pop(chosen_at)
        per_category[primary_categories[index]] += 1
        if creators[index]:
            per_creator[creators[index]] += 1
        rules = list(moved.get(index, []))
        if tracker is not None and is_preferred is not None:
            tracker.record(position, is_preferred(index))
            if is_preferred(index):
                pending.remove(index)
            elif index < quota_bar:
                rules.append(PREFERRED_QUOTA)
        if lifted:
            rules.append(PREFERRED_QUOTA)
        if relaxed:
            rules.append(DIVERSITY_RELAXED)
        placements.append(Placement(index, rules))
    return placements


def _choose(
    candidates: list[int], category_ok: Callable[[int], bool], creator_ok: Callable[[int], bool]
) -> tuple[int, bool]:
    """(position in `candidates`, best first, of the item to place; whether a rule was
    relaxed): the best item keeping both rules, else the category rule, else the creator
    rule, else simply the best one."""
    found = _first(candidates, lambda i: category_ok(i) and creator_ok(i))
    if found is not None:
        return found, False
    found = _first(candidates, category_ok)
    if found is None:
        found = _first(candidates, creator_ok)
    return (0 if found is None else found), True


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

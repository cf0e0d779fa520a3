"""The cold-start quota: who gets it, which positions it claims, and its order with the
diversity rules (known answers on small lists sorted best first)."""

from collections import Counter

import numpy as np
import pytest

from recfleet_models.ranking.cold_start import ColdStartPolicy, preferred_mask
from recfleet_models.ranking.diversity import (
    DIVERSITY_CATEGORY,
    DIVERSITY_RELAXED,
    PREFERRED_QUOTA,
    DiversityPolicy,
    PreferredQuota,
    diversify,
)
from recfleet_models.ranking.features import UserContext, objects

NO_CAPS = DiversityPolicy(100, 20, 1.0)
HALF = PreferredQuota(0.5)


def test_the_quota_spreads_preferred_items_over_the_first_ten():
    # Twenty distinct categories, the preferred items scored lowest (12..19).
    categories = [f"c{i}" for i in range(20)]
    preferred = [i >= 12 for i in range(20)]
    placements = diversify(categories, [""] * 20, 10, NO_CAPS, preferred, HALF)
    assert [p.index for p in placements] == [12, 0, 13, 1, 14, 2, 15, 3, 16, 4]
    assert placements[0].rules == [PREFERRED_QUOTA]
    # The best item, passed over for the quota, says why it sits below a worse one.
    assert placements[1].rules == [PREFERRED_QUOTA]


def test_any_ten_consecutive_positions_hold_half_while_preferred_items_remain():
    rng = np.random.default_rng(3)
    preferred = (rng.random(200) < 0.3).tolist()
    placements = diversify([f"c{i}" for i in range(200)], [""] * 200, 100, NO_CAPS, preferred, HALF)
    flags = [preferred[p.index] for p in placements]
    assert sum(flags) >= 50
    for start in range(len(flags) - 9):
        assert sum(flags[start : start + 10]) >= 5, start
    # Outside the positions the quota claims, the score order holds in each group.
    chosen = [p.index for p in placements]
    assert [i for i in chosen if preferred[i]] == sorted(i for i in chosen if preferred[i])
    assert [i for i in chosen if not preferred[i]] == sorted(i for i in chosen if not preferred[i])


def test_preferred_items_already_on_top_move_nothing():
    preferred = [i < 6 for i in range(20)]
    placements = diversify([f"c{i}" for i in range(20)], [""] * 20, 10, NO_CAPS, preferred, HALF)
    assert [p.index for p in placements] == list(range(10))
    assert all(p.rules == [] for p in placements)


def test_the_quota_ends_with_the_preferred_candidates():
    preferred = [i in (15, 17, 19) for i in range(20)]
    placements = diversify([f"c{i}" for i in range(20)], [""] * 20, 10, NO_CAPS, preferred, HALF)
    assert [p.index for p in placements] == [15, 0, 17, 1, 19, 2, 3, 4, 5, 6]


def test_a_short_list_is_one_window_of_its_length():
    preferred = [i >= 6 for i in range(10)]
    placements = diversify([f"c{i}" for i in range(10)], [""] * 10, 4, NO_CAPS, preferred, HALF)
    assert sum(preferred[p.index] for p in placements) == 2


def test_the_quota_comes_before_the_category_cap():
    # Every preferred item shares one primary category; the cap allows 3 of it in the top 20.
    categories = [f"c{i}" for i in range(30)] + ["Animation"] * 15
    preferred = [i >= 30 for i in range(45)]
    placements = diversify(categories, [""] * 45, 20, DiversityPolicy(3, 20, 1.0), preferred, HALF)
    chosen = [categories[p.index] for p in placements]
    assert chosen[:10].count("Animation") >= 5
    assert chosen.count("Animation") >= 10
    # Beyond the cap, each preferred item is there by the quota and says so.
    for position, placement in enumerate(placements):
        if chosen[position] == "Animation" and chosen[:position].count("Animation") >= 3:
            assert DIVERSITY_RELAXED in placement.rules
    # The other items keep the cap.
    assert max(Counter(c for c in chosen if c != "Animation").values()) <= 3


def test_the_caps_choose_among_preferred_items():
    # Preferred items: four of primary "A" scored above one of primary "B".
    categories = [f"c{i}" for i in range(20)] + ["A", "A", "A", "A", "B"]
    preferred = [i >= 20 for i in range(25)]
    placements = diversify(categories, [""] * 25, 10, DiversityPolicy(3, 20, 1.0), preferred, HALF)
    chosen = [p.index for p in placements]
    assert [i for i in chosen if preferred[i]] == [20, 21, 22, 24, 23]
    by_index = {p.index: p for p in placements}
    assert DIVERSITY_CATEGORY in by_index[23].rules and DIVERSITY_RELAXED in by_index[23].rules
    assert DIVERSITY_RELAXED not in by_index[24].rules


def test_without_a_quota_diversify_is_unchanged():
    categories = [f"c{i % 4}" for i in range(30)]
    plain = diversify(categories, [""] * 30, 20, DiversityPolicy())
    assert diversify(categories, [""] * 30, 20, DiversityPolicy(), [True] * 30, None) == plain


def test_who_gets_the_quota():
    policy = ColdStartPolicy(threshold=5, preferred_share=0.5)
    new = UserContext("new", preferred_categories=frozenset({"Animation"}))
    warm = UserContext("warm", preferred_categories=frozenset({"Animation"}), features={"interaction_count": 12})
    assert policy.quota(new) == PreferredQuota(0.5, 10)
    assert policy.quota(warm) is None
    # The caller may say a user with history is cold (no personal vector).
    assert policy.quota(warm, said_cold=True) == PreferredQuota(0.5, 10)
    assert policy.quota(UserContext("no-preferences")) is None
    assert ColdStartPolicy(preferred_share=0.0).quota(new) is None
    with pytest.raises(ValueError):
        ColdStartPolicy(preferred_share=1.5)
    with pytest.raises(ValueError):
        PreferredQuota(0.0)


def test_an_item_is_preferred_by_any_of_its_categories():
    categories = objects([("Adventure", "Animation"), ("Animation",), ("Drama",), ()], 4)
    assert preferred_mask(categories, frozenset({"Animation"})).tolist() == [True, True, False, False]

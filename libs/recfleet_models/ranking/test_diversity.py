from collections import Counter

import pytest

from recfleet_models.ranking.diversity import DiversityPolicy, diversify, explore


def test_at_most_three_per_primary_category_in_the_window():
    categories = ["Drama"] * 10 + ["Comedy"] * 10 + ["Action"] * 10
    placements = diversify(categories, [""] * 30, 20, DiversityPolicy(3, 20, 1.0))
    chosen = [categories[p.index] for p in placements]
    assert len(chosen) == 20
    # Only three categories exist, so the first nine keep the constraint, then it relaxes.
    assert Counter(chosen[:9]) == {"Drama": 3, "Comedy": 3, "Action": 3}
    assert [p.index for p in placements[:4]] == [0, 1, 2, 10]
    assert "diversity:category" in placements[9].rules or "diversity:relaxed" in placements[9].rules


def test_window_holds_when_the_catalog_allows():
    categories = [f"c{i % 8}" if i >= 6 else "Drama" for i in range(60)]
    placements = diversify(categories, [""] * 60, 20, DiversityPolicy(3, 20, 1.0))
    top = Counter(categories[p.index] for p in placements)
    assert max(top.values()) <= 3
    moved = [p for p in placements if p.rules]
    assert all(p.rules == ["diversity:category"] for p in moved)


def test_no_creator_above_its_share_and_empty_creator_is_nobody():
    creators = ["studio"] * 10 + [""] * 10 + [f"c{i}" for i in range(10)]
    placements = diversify(["x"] * 30, creators, 20, DiversityPolicy(100, 20, 0.15))
    chosen = Counter(creators[p.index] for p in placements)
    assert chosen["studio"] == 3
    assert chosen[""] == 10
    assert placements[3].index == 10 and placements[3].rules == []


def test_creator_share_holds_within_the_window_of_a_long_list():
    creators = ["studio"] * 40 + [f"c{i}" for i in range(100)]
    placements = diversify(["x"] * 140, creators, 100, DiversityPolicy(100, 20, 0.15))
    top = Counter(creators[p.index] for p in placements[:20])
    whole = Counter(creators[p.index] for p in placements)
    assert top["studio"] == 3
    assert whole["studio"] == 15


def test_best_remaining_fill_when_catalog_cannot_satisfy():
    placements = diversify(["Drama"] * 5, ["same"] * 5, 5, DiversityPolicy(3, 20, 0.15))
    assert [p.index for p in placements] == [0, 1, 2, 3, 4]
    assert placements[1].rules == ["diversity:relaxed"]


def test_creator_cap_is_at_least_one():
    assert DiversityPolicy().creator_cap(20) == 3
    assert DiversityPolicy().creator_cap(5) == 1


def test_exploration_takes_the_last_slots_from_lower_ranked_items_stably():
    placements = diversify(["x"] * 50, [""] * 50, 10, DiversityPolicy(100, 20, 1.0))
    first = explore(placements, 50, 0.2, "user-1")
    again = explore(placements, 50, 0.2, "user-1")
    assert [p.index for p in first] == [p.index for p in again]
    assert [p.index for p in first[:8]] == list(range(8))
    assert all(p.index >= 10 and p.rules == ["exploration"] for p in first[8:])
    assert explore(placements, 50, 0.0, "user-1") == placements


def test_invalid_policy_is_refused():
    with pytest.raises(ValueError):
        DiversityPolicy(max_creator_share=0)

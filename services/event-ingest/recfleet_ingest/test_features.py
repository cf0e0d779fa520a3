"""Known answers for the real-time feature plan."""

from __future__ import annotations

from datetime import UTC, datetime

from recfleet_ingest.features import ItemState, UserState, plan_updates
from recfleet_ingest.validation import Event


def ev(user, item, minute):
    return Event(f"id-{user}-{item}-{minute}", user, item, "view", None, datetime(2026, 1, 1, 0, minute, tzinfo=UTC))


T0 = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())


def test_counters_recent_seen_and_categories():
    events = [ev("u", "b", 2), ev("u", "a", 1), ev("u", "a", 3), ev("v", "c", 0)]
    items = {"a": ItemState(["Drama", "War"]), "b": ItemState(["Drama"]), "c": ItemState([])}
    users = {"u": UserState(last_seen_at=None, category_counts={"Drama": 10, "Comedy": 1})}
    plan = plan_updates(events, users, items, recent_cap=2)
    assert plan.user_increments == {"u": 3, "v": 1}
    assert plan.item_increments == {"a": 2, "b": 1, "c": 1}
    assert plan.recent["u"] == ["b", "a"]  # oldest first, capped: a(1) b(2) a(3) -> last two
    assert plan.seen["u"] == ["a", "b"]
    assert plan.user_category_counts["u"] == {"Drama": 13, "War": 2, "Comedy": 1}
    assert "v" not in plan.user_category_counts
    assert plan.user_last_seen == {"u": T0 + 180, "v": T0}
    assert plan.item_last_interaction["a"] == T0 + 180


def test_timestamps_never_move_backwards():
    plan = plan_updates([ev("u", "a", 1)], {"u": UserState(last_seen_at=T0 + 3600)},
                        {"a": ItemState([], last_interaction_at=T0 + 7200)}, 10)
    assert plan.user_last_seen["u"] == T0 + 3600
    assert plan.item_last_interaction["a"] == T0 + 7200

"""Known answers for the real-time feature plan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from recfleet_ingest.features import ItemState, UserState, plan_updates
from recfleet_ingest.validation import Event


def ev(user, item, minute):
    return Event(f"id-{user}-{item}-{minute}", user, item, "view", None, datetime(2026, 1, 1, 0, minute, tzinfo=UTC))


T0 = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())


def test_counters_recent_seen_and_categories():
    events = [ev("u", "b", 2), ev("u", "a", 1), ev("u", "a", 3), ev("v", "c", 0)]
    items = {"a": ItemState(["Drama", "War"]), "b": ItemState(["Drama"]), "c": ItemState([])}
    users = {"u": UserState(last_seen_at=None, category_counts={"Drama": 10, "Comedy": 1})}
    plan = plan_updates(events, users, items, recent_cap=2, now=T0 + 600)
    assert plan.user_increments == {"u": 3, "v": 1}
    assert plan.item_increments == {"a": 2, "b": 1, "c": 1}
    assert plan.recent["u"] == ["b", "a"]  # oldest first, capped: a(1) b(2) a(3) -> last two
    assert plan.seen["u"] == ["a", "b"]
    assert plan.user_category_counts["u"] == {"Drama": 13, "War": 2, "Comedy": 1}
    assert "v" not in plan.user_category_counts
    assert plan.user_last_seen == {"u": T0 + 180, "v": T0}
    assert plan.item_last_interaction["a"] == T0 + 180


def test_timestamps_never_move_backwards():
    plan = plan_updates(
        [ev("u", "a", 1)],
        {"u": UserState(last_seen_at=T0 + 3600)},
        {"a": ItemState([], last_interaction_at=T0 + 7200)},
        10,
        now=T0 + 7200,
    )
    assert plan.user_last_seen["u"] == T0 + 3600
    assert plan.item_last_interaction["a"] == T0 + 7200


def at(user, item, when: datetime):
    return Event(f"id-{user}-{item}-{when.isoformat()}", user, item, "view", None, when)


def test_window_counts_merge_stored_buckets_with_the_batch_and_drop_expired_ones():
    now = datetime(2026, 1, 8, 12, 2, tzinfo=UTC)
    epoch = int(now.timestamp())
    noon = int(datetime(2026, 1, 8, 12, tzinfo=UTC).timestamp())
    stored = {
        f"300:{noon}": 4,  # 12:00-12:05 today
        f"3600:{noon}": 4,
        f"300:{noon - 3600}": 1,  # 11:00: left the hour at 12:00
        f"3600:{noon - 3 * 3600}": 2,  # 09:00
        f"3600:{noon - 7 * 86400}": 5,  # a week ago, 12:00: left the 7 days at 12:00
    }
    events = [
        at("u", "a", now),
        at("u", "a", now - timedelta(minutes=30)),  # late: 11:32, in the 11:30 bucket and the 11:00 hour
        at("v", "a", now - timedelta(days=2)),
        at("v", "a", now - timedelta(days=10)),  # counted all time, in no window
        at("v", "b", now - timedelta(days=10)),
    ]
    items = {"a": ItemState(buckets=stored), "b": ItemState()}
    plan = plan_updates(events, {}, items, recent_cap=5, now=epoch)
    two_days = int((now - timedelta(days=2)).timestamp()) // 3600 * 3600
    assert plan.item_bucket_increments["a"] == {
        f"300:{noon}": 1,
        f"3600:{noon}": 1,
        f"300:{noon - 1800}": 1,
        f"3600:{noon - 3600}": 1,
        f"3600:{two_days}": 1,
    }
    assert plan.item_expired_buckets["a"] == [f"300:{noon - 3600}", f"3600:{noon - 7 * 86400}"]
    assert plan.item_windows["a"] == {"interactions_1h": 6, "interactions_24h": 8, "interactions_7d": 9}
    assert plan.item_increments["a"] == 4
    assert plan.item_bucket_increments["b"] == {} and plan.item_expired_buckets["b"] == []
    assert plan.item_windows["b"] == {"interactions_1h": 0, "interactions_24h": 0, "interactions_7d": 0}
    assert plan.windows_at == epoch

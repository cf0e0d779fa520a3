"""The point-in-time join: a training row holds what the online store served at the event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from recfleet_store.features import registry
from recfleet_store.features.pointintime import Event, History, stored_features, training_rows
from recfleet_store.windows import bucket_increments, window_counts

REGISTRY = registry.load()
T = datetime(2025, 1, 1, tzinfo=UTC)


def test_point_in_time_join_never_uses_a_later_value():
    views = [REGISTRY.view("user", "interaction_count"), REGISTRY.view("item", "popularity")]
    count, popularity = History(), History()
    count.add(T, 1)
    count.add(T + timedelta(hours=2), 2)
    popularity.add(T + timedelta(hours=1), 0.7)
    popularity.add(T - timedelta(hours=1), 0.1)  # out of order: re-sorted
    histories = {("user", "u", "interaction_count"): count, ("item", "i", "popularity"): popularity}
    events = [Event("u", "i", T + timedelta(minutes=m), "click", None) for m in (-5, 0, 61, 120)]
    rows = list(training_rows(events, histories, views))
    assert [r["user__interaction_count"] for r in rows] == [0.0, 1.0, 1.0, 2.0]
    assert [r["item__popularity"] for r in rows] == [0.1, 0.1, 0.7, 0.7]


def test_last_interaction_time_is_derived_from_the_count_history():
    views = [REGISTRY.view("user", "last_seen_at"), REGISTRY.view("item", "last_interaction_at")]
    count = History()
    count.add(T, 1)
    count.add(T + timedelta(hours=2), 2)
    histories = {("user", "u", "interaction_count"): count}
    events = [Event("u", "i", T + timedelta(minutes=m), "click", None) for m in (-1, 0, 90, 120)]
    rows = list(training_rows(events, histories, views))
    seen = [r["user__last_seen_at"] for r in rows]
    assert seen == [0.0, T.timestamp(), T.timestamp(), (T + timedelta(hours=2)).timestamp()]
    assert {r["item__last_interaction_at"] for r in rows} == {0.0}


WINDOWED = ["interactions_1h", "interactions_24h", "interactions_7d"]


def running_count(times: list[datetime]) -> History:
    """The offline history materialization writes: the running count at each distinct time."""
    history = History()
    for position, at in enumerate(sorted(times)):
        if history.times and history.times[-1] == at:
            history.values[-1] = position + 1
        else:
            history.add(at, position + 1)
    return history


def test_windowed_counts_are_derived_from_the_count_history_as_of_each_event():
    views = [REGISTRY.view("item", name) for name in WINDOWED]
    start = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)  # on an hour boundary
    times = [start - timedelta(days=8), start - timedelta(days=2), start - timedelta(hours=3), start, start]
    histories = {("item", "i", "interaction_count"): running_count(times)}
    events = [
        Event("u", "i", at, "click", None) for at in (start - timedelta(days=2), start, start + timedelta(minutes=59))
    ]
    rows = list(training_rows(events, histories, views))
    # Two days back: only that event (the 8-day-old one is out of every window).
    assert [rows[0][f"item__{name}"] for name in WINDOWED] == [1, 1, 2]
    # At `start`: the two events at that very second, the 3-hour-old one, and the 2-day one.
    assert [rows[1][f"item__{name}"] for name in WINDOWED] == [2, 3, 4]
    # 59 minutes later nothing new happened; the 1-hour window still holds `start`'s bucket.
    assert [rows[2][f"item__{name}"] for name in WINDOWED] == [2, 3, 4]
    assert ("item", "interaction_count") in stored_features(views)


def test_offline_windowed_counts_match_what_the_realtime_buckets_serve():
    """No training/serving skew: for events at random times, the count a training row
    gets equals the realtime consumer's bucket sum at that instant."""
    generator = np.random.default_rng(7)
    base = int(datetime(2025, 3, 1, tzinfo=UTC).timestamp())
    drawn = generator.integers(base, base + 10 * 86400, size=400)
    # Half of them on 5-minute boundaries, where a window's edge falls.
    seconds = sorted(int(s) - int(s) % 300 if n % 2 else int(s) for n, s in enumerate(drawn))
    times = [datetime.fromtimestamp(s, UTC) for s in seconds]
    histories = {("item", "i", "interaction_count"): running_count(times)}
    views = [REGISTRY.view("item", name) for name in WINDOWED]
    events = [Event("u", "i", at, "click", None) for at in times[::5]]
    for event, row in zip(events, training_rows(events, histories, views), strict=True):
        now = int(event.ts.timestamp())
        online = window_counts(bucket_increments([s for s in seconds if s <= now], now), now)
        assert {name: row[f"item__{name}"] for name in WINDOWED} == online

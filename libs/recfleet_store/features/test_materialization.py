"""Materialization's pure parts: where a run starts, and the running category counts it
writes to the offline history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from recfleet_store.features.aggregates import running_category_counts
from recfleet_store.features.materialization import BEGINNING, OVERLAP, window_start

T = datetime(2025, 1, 1, tzinfo=UTC)


def test_window_start():
    mark = datetime(2025, 5, 1, tzinfo=UTC)
    assert window_start(mark, None, full=True) == BEGINNING
    assert window_start(mark, None, full=False) == mark - OVERLAP
    assert window_start(None, None, full=False) == BEGINNING
    assert window_start(mark, datetime(2025, 1, 1), full=False) == datetime(2025, 1, 1, tzinfo=UTC)


def test_running_category_counts_emit_one_value_per_user_and_timestamp():
    later = T + timedelta(hours=1)
    events = [
        ("u", T, ["Drama", "War"]),
        ("u", T, ["Drama"]),
        ("u", later, None),
        ("u", later + timedelta(hours=1), ["Comedy"]),
        ("v", T, ["War"]),
    ]
    assert list(running_category_counts(events)) == [
        ("u", T, {"Drama": 2, "War": 1}),
        ("u", later, {"Drama": 2, "War": 1}),
        ("u", later + timedelta(hours=1), {"Drama": 2, "War": 1, "Comedy": 1}),
        ("v", T, {"War": 1}),
    ]
    assert list(running_category_counts([])) == []

"""Known answers for the windowed item counts: bucket boundaries, late events, expiry."""

from __future__ import annotations

from datetime import UTC, datetime

from recfleet_store.windows import (
    BUCKETS_TTL_SECONDS,
    DAY,
    HOUR,
    bucket_increments,
    expired_fields,
    parse_field,
    window_counts,
)

# 2026-01-01 10:07:30 UTC: not on a bucket boundary.
NOW = int(datetime(2026, 1, 1, 10, 7, 30, tzinfo=UTC).timestamp())
TEN = int(datetime(2026, 1, 1, 10, 0, tzinfo=UTC).timestamp())  # 10:00, start of NOW's hour
FIVE_PAST = TEN + 300  # 10:05, start of NOW's 5-minute bucket


def counts_of(*timestamps: int, now: int = NOW) -> dict[str, int]:
    return window_counts(bucket_increments(timestamps, now), now)


def test_an_event_goes_into_its_5_minute_and_its_hour_bucket():
    assert bucket_increments([NOW, NOW - 60], NOW) == {f"300:{FIVE_PAST}": 2, f"3600:{TEN}": 2}
    # 09:59:59 is in the previous hour and the 09:55 bucket.
    assert bucket_increments([TEN - 1], NOW) == {f"300:{TEN - 300}": 1, f"3600:{TEN - HOUR}": 1}


def test_events_count_by_their_own_time_in_each_window():
    assert counts_of(NOW) == {"interactions_1h": 1, "interactions_24h": 1, "interactions_7d": 1}
    assert counts_of(NOW - 30 * 60) == {"interactions_1h": 1, "interactions_24h": 1, "interactions_7d": 1}
    assert counts_of(NOW - 3 * HOUR) == {"interactions_1h": 0, "interactions_24h": 1, "interactions_7d": 1}
    assert counts_of(NOW - 2 * DAY) == {"interactions_1h": 0, "interactions_24h": 0, "interactions_7d": 1}
    assert counts_of(NOW - 10 * DAY) == {"interactions_1h": 0, "interactions_24h": 0, "interactions_7d": 0}


def test_a_bucket_counts_while_it_starts_inside_the_window():
    # At 10:07:30 the 1-hour window holds the 5-minute buckets from 09:10 on: an event at
    # 09:10:00 (57.5 minutes ago) counts, one at 09:09:59 (its bucket starts at 09:05) does not.
    assert counts_of(TEN - 50 * 60)["interactions_1h"] == 1
    assert counts_of(TEN - 50 * 60 - 1)["interactions_1h"] == 0
    # Hourly buckets: 24 hours back from 10:07:30 the window starts at the 11:00 bucket.
    assert counts_of(TEN - 23 * HOUR)["interactions_24h"] == 1
    assert counts_of(TEN - 23 * HOUR - 1)["interactions_24h"] == 0
    # Exactly on the edge: a bucket starting at now - window still counts.
    on_the_hour = TEN
    assert counts_of(TEN - HOUR, now=on_the_hour)["interactions_1h"] == 1
    assert counts_of(TEN - 7 * DAY, now=on_the_hour)["interactions_7d"] == 1
    assert counts_of(TEN - 7 * DAY - 1, now=on_the_hour)["interactions_7d"] == 0


def test_events_older_than_every_window_get_no_bucket():
    assert bucket_increments([NOW - 7 * DAY - HOUR, NOW - 10 * DAY], NOW) == {}
    # Older than an hour but within 7 days: only the hour bucket.
    assert bucket_increments([NOW - 2 * HOUR], NOW) == {f"3600:{TEN - 2 * HOUR}": 1}


def test_a_late_event_lands_in_the_bucket_of_when_it_happened():
    buckets = bucket_increments([NOW], NOW)
    later = NOW + 20 * 60
    buckets.update(bucket_increments([NOW - 10 * 60], later))  # arrives 30 minutes after it happened
    # 09:57:30: the 09:55 bucket and the 09:00 hour, though it arrived at 10:17:30.
    assert buckets[f"300:{TEN - 300}"] == 1 and buckets[f"300:{FIVE_PAST}"] == 1
    assert buckets[f"3600:{TEN - HOUR}"] == 1 and buckets[f"3600:{TEN}"] == 1
    assert window_counts(buckets, later) == {"interactions_1h": 2, "interactions_24h": 2, "interactions_7d": 2}


def test_events_slightly_in_the_future_count_everywhere():
    assert counts_of(NOW + 4 * 60) == {"interactions_1h": 1, "interactions_24h": 1, "interactions_7d": 1}


def test_counts_decay_as_time_passes():
    buckets = bucket_increments([NOW, NOW - 20 * 3600], NOW)
    assert window_counts(buckets, NOW) == {"interactions_1h": 1, "interactions_24h": 2, "interactions_7d": 2}
    assert window_counts(buckets, NOW + 2 * HOUR) == {"interactions_1h": 0, "interactions_24h": 2, "interactions_7d": 2}
    assert window_counts(buckets, NOW + 6 * HOUR) == {"interactions_1h": 0, "interactions_24h": 1, "interactions_7d": 2}
    assert window_counts(buckets, NOW + 8 * DAY) == {"interactions_1h": 0, "interactions_24h": 0, "interactions_7d": 0}


def test_old_buckets_expire_and_foreign_fields_are_left_alone():
    buckets = [
        f"300:{FIVE_PAST}",
        f"300:{TEN - HOUR}",
        f"300:{TEN - HOUR + 600}",
        f"3600:{TEN - 7 * DAY}",
        f"3600:{TEN - 7 * DAY - HOUR}",
        f"3600:{TEN}",
        "60:0",
        "note",
    ]
    # At 10:07:30 a 5-minute bucket is dead once it starts before 09:07:30, an hourly one
    # once it starts before 10:07:30 seven days ago; sizes no window uses are dead too.
    assert expired_fields(buckets, NOW) == [
        f"300:{TEN - HOUR}",
        f"3600:{TEN - 7 * DAY}",
        f"3600:{TEN - 7 * DAY - HOUR}",
        "60:0",
    ]
    assert expired_fields(buckets, TEN) == [f"3600:{TEN - 7 * DAY - HOUR}", "60:0"]
    assert BUCKETS_TTL_SECONDS > 7 * DAY


def test_fields_that_are_not_buckets_are_not_counted():
    assert parse_field("300:1767261600") == (300, 1767261600)
    assert parse_field("note") is None and parse_field("x:1") is None and parse_field("300:") is None
    assert parse_field("300:--5") is None
    assert window_counts({"note": 5, f"300:{FIVE_PAST}": 2}, NOW)["interactions_1h"] == 2

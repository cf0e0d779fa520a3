"""Per-item interaction counts over time windows (1 hour, 24 hours, 7 days), pure.

Counts are kept in time buckets chosen by each event's own timestamp, so a late event
lands in the bucket of when it happened, not of when it arrived. The 1-hour window sums
5-minute buckets; the 24-hour and 7-day windows sum hourly buckets. A bucket counts in a
window when it starts no earlier than `now - window`: an event older than a window never
counts in it, and one less than a bucket younger than the window's edge may already have
left it (the 1-hour count covers the last 55 to 60 minutes, the 24-hour count the last 23
to 24 hours, the 7-day count the last 167 to 168 hours). Events up to the validation's
5 minutes in the future count in every window.

A bucket is stored as a hash field `<bucket seconds>:<bucket start, epoch seconds>` with
the number of events as value (docs/CONTRACTS.md, `recfleet_store.keys.item_buckets`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

FINE_BUCKET_SECONDS = 300
COARSE_BUCKET_SECONDS = 3600
HOUR = 3600
DAY = 24 * HOUR


@dataclass(frozen=True)
class Window:
    """One windowed count: the item feature it fills, its length and its bucket size."""

    feature: str
    seconds: int
    bucket_seconds: int


WINDOWS = (
    Window("interactions_1h", HOUR, FINE_BUCKET_SECONDS),
    Window("interactions_24h", DAY, COARSE_BUCKET_SECONDS),
    Window("interactions_7d", 7 * DAY, COARSE_BUCKET_SECONDS),
)

# How far back each bucket size is still summed: its longest window. Older buckets can
# never count again and are deleted.
HORIZONS = {
    size: max(window.seconds for window in WINDOWS if window.bucket_seconds == size)
    for size in {window.bucket_seconds for window in WINDOWS}
}

# The bucket hash outlives the longest window by a day, so an item whose events stop
# loses the key without anyone deleting it.
BUCKETS_TTL_SECONDS = 8 * DAY


def bucket_start(at: int, size: int) -> int:
    """Start (epoch seconds) of the `size`-second bucket holding the instant `at`."""
    return at - at % size


def bucket_field(size: int, start: int) -> str:
    return f"{size}:{start}"


def parse_field(name: str) -> tuple[int, int] | None:
    """(bucket seconds, bucket start) of a bucket field, or None when it is not one."""
    size, colon, start = name.partition(":")
    if not colon:
        return None
    try:
        return int(size), int(start)
    except ValueError:
        return None


def bucket_increments(timestamps: Iterable[int], now: int) -> Counter[str]:
    """Bucket field -> events to add for events at `timestamps` (epoch seconds), as of
    `now`. An event goes into every bucket size whose horizon it is within; an event
    older than every window goes nowhere."""
    counts: Counter[str] = Counter()
    for at in timestamps:
        for size, horizon in HORIZONS.items():
            start = bucket_start(at, size)
            if start >= now - horizon:
                counts[bucket_field(size, start)] += 1
    return counts


def expired_fields(buckets: Iterable[str], now: int) -> list[str]:
    """The bucket fields that no window counts any more at `now` (nor later)."""
    expired = []
    for name in buckets:
        parsed = parse_field(name)
        if parsed is None:
            continue
        size, start = parsed
        horizon = HORIZONS.get(size)
        if horizon is None or start < now - horizon:
            expired.append(name)
    return expired


def window_counts(buckets: Mapping[str, int], now: int) -> dict[str, int]:
    """Feature name -> events in that window at `now`, from bucket field -> count."""
    sums = {window.feature: 0 for window in WINDOWS}
    for name, count in buckets.items():
        parsed = parse_field(name)
        if parsed is None:
            continue
        size, start = parsed
        for window in WINDOWS:
            if window.bucket_seconds == size and start >= now - window.seconds:
                sums[window.feature] += count
    return sums

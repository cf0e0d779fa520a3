"""Event-derived feature histories computed in the materialization job. Pure."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime


def running_category_counts(
    events: Iterable[tuple[str, datetime, list[str] | None]],
) -> Iterator[tuple[str, datetime, dict[str, int]]]:
    """For events sorted by (user, ts) with the categories of their item, the user's
    category counts right after each distinct timestamp: (user, ts, {category: n}).

    An interaction counts once for every category of its item (the realtime consumer
    counts the same way); events at the same timestamp produce one value.
    """
    user: str | None = None
    ts: datetime | None = None
    counts: Counter[str] = Counter()
    for event_user, event_ts, categories in events:
        if event_user != user:
            if user is not None and ts is not None:
                yield user, ts, dict(counts)
            user, ts, counts = event_user, event_ts, Counter()
        elif event_ts != ts:
            if ts is not None:
                yield event_user, ts, dict(counts)
            ts = event_ts
        counts.update(categories or ())
    if user is not None and ts is not None:
        yield user, ts, dict(counts)

"""Point-in-time correct training rows: each event gets the features as they were at the
event's timestamp (the latest offline value with event_time <= ts), never a value written
later. Last-interaction times without a stored history of their own are derived from the
interaction count history (see DERIVED_FROM), and so are the windowed counts (see
WINDOWED_FROM). Pure: histories come from the offline store through an adapter.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..windows import WINDOWS, Window
from .registry import FeatureView


@dataclass(frozen=True)
class Event:
    user_id: str
    item_id: str
    ts: datetime
    type: str
    value: float | None


class History:
    """Every value one feature of one entity took, by the time it became true."""

    __slots__ = ("times", "values")

    def __init__(self) -> None:
        self.times: list[datetime] = []
        self.values: list[Any] = []

    def add(self, event_time: datetime, value: Any) -> None:
        """Append in time order (the offline query sorts); out-of-order adds are re-sorted."""
        if self.times and event_time < self.times[-1]:
            pairs = sorted([*zip(self.times, self.values, strict=False), (event_time, value)], key=lambda pair: pair[0])
            self.times = [t for t, _ in pairs]
            self.values = [v for _, v in pairs]
            return
        self.times.append(event_time)
        self.values.append(value)

    def as_of(self, ts: datetime, default: Any) -> Any:
        """The latest value with event_time <= ts, else `default`."""
        position = bisect_right(self.times, ts)
        return self.values[position - 1] if position else default

    def before(self, ts: datetime, default: Any) -> Any:
        """The latest value with event_time < ts, else `default`."""
        position = bisect_left(self.times, ts)
        return self.values[position - 1] if position else default

    def last_time_as_of(self, ts: datetime, default: Any) -> Any:
        """Epoch seconds of the latest event_time <= ts, else `default`."""
        position = bisect_right(self.times, ts)
        return float(int(self.times[position - 1].timestamp())) if position else default


Histories = dict[tuple[str, str, str], History]

# Features whose history is the times of another's: the last interaction time as of ts is
# the time of the latest running interaction count at or before ts.
DERIVED_FROM = {
    ("user", "last_seen_at"): "interaction_count",
    ("item", "last_interaction_at"): "interaction_count",
}


# Windowed counts as of ts from the running interaction count: the events at or before ts
# less those before the first bucket the window still counted at ts. Buckets and windows
# are the realtime consumer's own (recfleet_store.windows), so a training row holds what
# the online store would have served at that moment.
WINDOWED_FROM = {("item", window.feature): window for window in WINDOWS}
RUNNING_COUNT = "interaction_count"


def windowed_count_as_of(running: History, ts: datetime, window: Window) -> int:
    """Events in `window` at ts, from the history of the running interaction count."""
    edge = int(ts.timestamp()) - window.seconds
    first_counted = -(-edge // window.bucket_seconds) * window.bucket_seconds
    total = running.as_of(ts, 0)
    left = running.before(datetime.fromtimestamp(first_counted, UTC), 0)
    return int(total) - int(left)


def stored_features(views: list[FeatureView]) -> list[tuple[str, str]]:
    """The (entity, feature) histories the views need: their own and those they derive from."""
    needed = {(view.entity, view.name) for view in views}
    for view in views:
        key = (view.entity, view.name)
        if key in WINDOWED_FROM:
            needed.add((view.entity, RUNNING_COUNT))
        if key in DERIVED_FROM:
            needed.add((view.entity, DERIVED_FROM[key]))
    return sorted(needed)


def column(view: FeatureView) -> str:
    """The training-set column of a feature: `user__interaction_count`, `item__popularity`."""
    return f"{view.entity}__{view.name}"


def training_rows(events: Iterable[Event], histories: Histories, views: list[FeatureView]) -> Iterator[dict[str, Any]]:
    """One row per event: its identity and label fields, then every view's value as of ts."""
    empty = History()
    for event in events:
        row = {
            "user_id": event.user_id,
            "item_id": event.item_id,
            "ts": event.ts.isoformat(),
            "type": event.type,
            "value": event.value,
        }
        for view in views:
            entity_id = event.user_id if view.entity == "user" else event.item_id
            history = histories.get((view.entity, entity_id, view.name))
            source = DERIVED_FROM.get((view.entity, view.name))
            window = WINDOWED_FROM.get((view.entity, view.name))
            if history is None and window is not None:
                running = histories.get((view.entity, entity_id, RUNNING_COUNT), empty)
                value = windowed_count_as_of(running, event.ts, window)
            elif history is None and source is not None:
                source_history = histories.get((view.entity, entity_id, source), empty)
                value = source_history.last_time_as_of(event.ts, view.default)
            else:
                value = (history or empty).as_of(event.ts, view.default)
            try:
                row[column(view)] = view.coerce(value)
            except ValueError:
                row[column(view)] = view.default
        yield row

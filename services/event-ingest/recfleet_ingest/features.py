"""Real-time feature updates from a batch of events, pure: what to write to Redis given
what Redis holds now. The updater reads the current state, plans, and writes it all in
one pipeline. Windowed item counts follow `windows`."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from recfleet_store.windows import bucket_increments, expired_fields, window_counts

from .validation import Event


@dataclass
class UserState:
    last_seen_at: int | None = None
    category_counts: dict[str, int] = field(default_factory=dict)


@dataclass
class ItemState:
    """What the plan needs of an item: its categories, latest interaction and time
    buckets (bucket field -> events, see `windows`)."""

    categories: list[str] = field(default_factory=list)
    last_interaction_at: int | None = None
    buckets: dict[str, int] = field(default_factory=dict)


@dataclass
class FeatureUpdates:
    """Everything one batch changes. `recent` lists are oldest first (pushed in order, so
    the newest ends up at the head of the Redis list). Every item of the batch gets its
    window counts as of `windows_at` (epoch seconds), computed from its buckets with the
    batch's increments and without the expired buckets."""

    user_increments: dict[str, int] = field(default_factory=dict)
    user_last_seen: dict[str, int] = field(default_factory=dict)
    user_category_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    seen: dict[str, list[str]] = field(default_factory=dict)
    recent: dict[str, list[str]] = field(default_factory=dict)
    item_increments: dict[str, int] = field(default_factory=dict)
    item_last_interaction: dict[str, int] = field(default_factory=dict)
    item_bucket_increments: dict[str, dict[str, int]] = field(default_factory=dict)
    item_expired_buckets: dict[str, list[str]] = field(default_factory=dict)
    item_windows: dict[str, dict[str, int]] = field(default_factory=dict)
    windows_at: int = 0


def plan_updates(
    events: Sequence[Event],
    users: Mapping[str, UserState],
    items: Mapping[str, ItemState],
    recent_cap: int,
    now: int,
) -> FeatureUpdates:
    """Counters add up, timestamps only move forward, categories come from the item,
    window counts are those at `now` (epoch seconds) by event time."""
    updates = FeatureUpdates(windows_at=now)
    ordered = sorted(events, key=lambda e: e.timestamp)
    user_counts: Counter[str] = Counter()
    item_counts: Counter[str] = Counter()
    category_deltas: dict[str, Counter[str]] = defaultdict(Counter)
    recent: dict[str, list[str]] = defaultdict(list)
    seen: dict[str, dict[str, None]] = defaultdict(dict)
    user_latest: dict[str, int] = {}
    item_latest: dict[str, int] = {}
    item_times: dict[str, list[int]] = defaultdict(list)
    for event in ordered:
        at = int(event.timestamp.timestamp())
        user_counts[event.user_id] += 1
        item_counts[event.item_id] += 1
        user_latest[event.user_id] = max(at, user_latest.get(event.user_id, at))
        item_latest[event.item_id] = max(at, item_latest.get(event.item_id, at))
        item_times[event.item_id].append(at)
        recent[event.user_id].append(event.item_id)
        seen[event.user_id][event.item_id] = None
        for category in items.get(event.item_id, ItemState()).categories:
            category_deltas[event.user_id][category] += 1
    updates.user_increments = dict(user_counts)
    updates.item_increments = dict(item_counts)
    for user_id, at in user_latest.items():
        known = users.get(user_id, UserState()).last_seen_at
        updates.user_last_seen[user_id] = at if known is None else max(at, known)
    for item_id, at in item_latest.items():
        known = items.get(item_id, ItemState()).last_interaction_at
        updates.item_last_interaction[item_id] = at if known is None else max(at, known)
    for item_id, times in item_times.items():
        stored = items.get(item_id, ItemState()).buckets
        added = bucket_increments(times, now)
        expired = expired_fields(stored, now)
        live = Counter(stored)
        live.update(added)
        for name in expired:
            del live[name]
        updates.item_bucket_increments[item_id] = dict(added)
        updates.item_expired_buckets[item_id] = expired
        updates.item_windows[item_id] = window_counts(live, now)
    for user_id, deltas in category_deltas.items():
        merged = Counter(users.get(user_id, UserState()).category_counts)
        merged.update(deltas)
        updates.user_category_counts[user_id] = dict(merged)
    updates.recent = {user_id: items_[-recent_cap:] for user_id, items_ in recent.items()}
    updates.seen = {user_id: list(items_) for user_id, items_ in seen.items()}
    return updates

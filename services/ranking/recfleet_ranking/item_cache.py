"""Item features kept in the ranking process between calls.

Every Rank call needs the same few item features (categories, creator, age rating,
regions, availability, popularity) for up to 1,000 candidates, and those values change
rarely: the catalog on an upsert, popularity once a day. Reading them from the feature
store on every call cost more than ranking itself, so ranking keeps what it read for
`ttl_seconds` and asks the feature store only for the items it lacks or holds too long.
A catalog upsert is also announced (adapters/catalog_changes.py) and drops the items at
once; `ttl_seconds` bounds staleness when an announcement is missed and for values
written without one (popularity).

Pure: no network; the clock is injectable for tests.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from recfleet_models.ranking.features import Candidate


@dataclass(frozen=True, slots=True)
class ItemFeatures:
    """The features ranking reads for one item, decoded once."""

    categories: tuple[str, ...] = ()
    creator: str = ""
    published_at: float = 0.0
    age_rating: int = 0
    regions: tuple[str, ...] = ()
    available: bool = True
    popularity: float = 0.0
    popularity_7d: float = 0.0

    def apply(self, candidate: Candidate) -> None:
        candidate.categories = self.categories
        candidate.creator = self.creator
        candidate.published_at = self.published_at
        candidate.age_rating = self.age_rating
        candidate.regions = self.regions
        candidate.available = self.available
        candidate.popularity = self.popularity
        candidate.popularity_7d = self.popularity_7d


# What the feature store said about an item: its features, or None for an item it does
# not know (every feature defaulted). Unknown items stay unknown on the candidate (age
# rating None), which the age filter treats as restricted.
Known = ItemFeatures | None


class ItemFeatureCache:
    """item id -> (features, expiry), bounded; the oldest entries go first when full.

    Each entry lives `ttl_seconds` plus up to 10% jitter, so items read together do not
    all expire in the same call. `ttl_seconds` 0 turns the cache off.
    """

    def __init__(self, ttl_seconds: float, max_items: int = 200_000, clock: Callable[[], float] = time.monotonic):
        if ttl_seconds < 0:
            raise ValueError("ttl_seconds must be >= 0")
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        self.ttl_seconds = ttl_seconds
        self.max_items = max_items
        self.clock = clock
        self._entries: dict[str, tuple[Known, float]] = {}
        self._jitter = random.Random(0)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, item_ids: Iterable[str]) -> tuple[dict[str, Known], list[str]]:
        """(fresh entries by id, ids to read: missing or expired)."""
        now = self.clock()
        entries = self._entries
        found: dict[str, Known] = {}
        missing: list[str] = []
        for item_id in item_ids:
            entry = entries.get(item_id)
            if entry is not None and entry[1] > now:
                found[item_id] = entry[0]
            else:
                missing.append(item_id)
        return found, missing

    def stale(self, item_ids: Iterable[str]) -> dict[str, Known]:
        """Expired entries still held: better than nothing when the feature store is down."""
        entries = self._entries
        return {item_id: entries[item_id][0] for item_id in item_ids if item_id in entries}

    def forget(self, item_ids: Iterable[str]) -> None:
        """Drop these items: their catalog fields changed."""
        entries = self._entries
        for item_id in item_ids:
            entries.pop(item_id, None)

    def clear(self) -> None:
        self._entries.clear()

    def store(self, read: dict[str, Known]) -> None:
        if not self.ttl_seconds or not read:
            return
        entries = self._entries
        overflow = len(entries) + len(read) - self.max_items
        if overflow > 0:
            # Insertion order is age order: a refreshed entry is re-inserted at the end.
            for item_id in list(entries)[:overflow]:
                del entries[item_id]
        now = self.clock()
        ttl = self.ttl_seconds
        jitter = self._jitter.random
        for item_id, features in read.items():
            entries.pop(item_id, None)
            entries[item_id] = (features, now + ttl * (1.0 + 0.1 * jitter()))

"""Item features kept in the ranking process between calls, as columns indexed by item.

Every Rank call needs the same few item features (categories, creator, age rating,
regions, availability, popularity) for up to 1,000 candidates, and those values change
rarely: the catalog on an upsert, popularity once a day. Reading them from the feature
store on every call cost more than ranking itself, so ranking keeps what it read for
`ttl_seconds` and asks the feature store only for the items it lacks or holds too long.
A catalog upsert is also announced (recfleet_store/catalog_changes.py) and drops the items at
once; `ttl_seconds` bounds staleness when an announcement is missed and for values
written without one (popularity).

The values live in one column table (`ItemColumns`), an item's features in one row, so a
call gathers its candidates' features with one fancy index per column instead of copying
eight attributes onto each candidate; the expiry is a column too, so finding the fresh
rows of a call is one dict lookup per id and one comparison over the call. Every stored
entry gets a row of its own (an item the feature store does not know: every value at its
default, age rating unknown); row 0 is the unknown item for ids not held. Rows of
dropped or refreshed entries are garbage until the table is compacted; callers never
hold a row across an `await` (`gather` copies), so compaction is safe.

Pure: no network; the clock is injectable for tests.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np
from recfleet_models.ranking.features import Candidate, ItemColumns

UNKNOWN_ROW = 0


@dataclass(frozen=True, slots=True)
class ItemFeatures:
    """The features ranking reads for one item (one row of the cache's table)."""

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


class _Table:
    """Append-only rows with spare capacity (doubling): each row's `ItemColumns`, whether
    the feature store knew the item, and when the row expires. Row 0 is the unknown item
    and never fresh."""

    def __init__(self, capacity: int = 1024):
        capacity = max(capacity, 1)
        self.columns = ItemColumns.unknown(capacity)
        self.known = np.zeros(capacity, dtype=bool)
        self.expires = np.full(capacity, -np.inf)
        self.size = 1

    def append(self, items: ItemColumns, known: np.ndarray, expires: np.ndarray) -> np.ndarray:
        """Rows of the appended items."""
        end = self.size + len(items)
        capacity = len(self.known)
        if end > capacity:
            grown = max(end, 2 * capacity)
            kept = np.arange(self.size)
            columns = ItemColumns.unknown(grown)
            columns.put(kept, self.columns.take(kept))
            self.columns = columns
            self.known = np.concatenate([self.known[: self.size], np.zeros(grown - self.size, dtype=bool)])
            self.expires = np.concatenate([self.expires[: self.size], np.full(grown - self.size, -np.inf)])
        rows = np.arange(self.size, end)
        self.columns.put(rows, items)
        self.known[rows] = known
        self.expires[rows] = expires
        self.size = end
        return rows


class ItemFeatureCache:
    """item id -> row of the column table, bounded; the oldest entries go first when full.

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
        self._entries: dict[str, int] = {}
        self._table = _Table()
        self._jitter = random.Random(0)

    def __len__(self) -> int:
        return len(self._entries)

    # -- the columnar path (the servicer's) ---------------------------------------------

    def _held(self, item_ids: Sequence[str]) -> np.ndarray:
        """Row per id, the unknown row where none is held."""
        return np.fromiter(map(self._entries.get, item_ids, repeat(UNKNOWN_ROW)), np.int64, len(item_ids))

    def rows(self, item_ids: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """(row per id, positions of the ids to read: missing or expired). Those positions
        hold the unknown row until the caller fills them."""
        rows = self._held(item_ids)
        stale = ~(self._table.expires[rows] > self.clock())
        rows[stale] = UNKNOWN_ROW
        return rows, np.flatnonzero(stale).tolist()

    def stale_rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """Rows of entries still held, expired or not (unknown row for the others): better
        than nothing when the feature store is down."""
        return self._held(item_ids)

    def gather(self, rows: np.ndarray) -> ItemColumns:
        """The features at these rows, copied: valid whatever the cache does next."""
        return self._table.columns.take(rows)

    def store_columns(self, item_ids: Sequence[str], items: ItemColumns, known: np.ndarray) -> None:
        """Keep what the feature store answered: `items[i]` for `item_ids[i]`, which it
        did not know where `known[i]` is false (then every value is the default)."""
        if not self.ttl_seconds or not item_ids:
            return
        entries = self._entries
        overflow = len(entries) + len(item_ids) - self.max_items
        if overflow > 0:
            # Insertion order is age order: a refreshed entry is re-inserted at the end.
            for item_id in list(entries)[:overflow]:
                del entries[item_id]
        if self._table.size > 2 * len(entries) + 1024:
            self._compact()
        jitter = self._jitter.random
        ttl = self.ttl_seconds
        now = self.clock()
        expires = np.fromiter((now + ttl * (1.0 + 0.1 * jitter()) for _ in item_ids), np.float64, len(item_ids))
        rows = self._table.append(items, known, expires)
        for item_id, row in zip(item_ids, rows.tolist(), strict=True):
            entries.pop(item_id, None)
            entries[item_id] = row

    def forget(self, item_ids: Iterable[str]) -> None:
        """Drop these items: their catalog fields changed."""
        entries = self._entries
        for item_id in item_ids:
            entries.pop(item_id, None)

    def clear(self) -> None:
        self._entries.clear()
        self._table = _Table()

    def _compact(self) -> None:
        """Copy the live rows into a fresh table: dropped and refreshed entries left
        garbage rows behind."""
        old = self._table
        live = np.fromiter(self._entries.values(), np.int64, len(self._entries))
        table = _Table(2 * len(live) + 1024)
        moved = table.append(old.columns.take(live), old.known[live], old.expires[live])
        self._entries = dict(zip(self._entries, moved.tolist(), strict=True))
        self._table = table

    # -- one item at a time (tests, tools) ----------------------------------------------

    def lookup(self, item_ids: Iterable[str]) -> tuple[dict[str, Known], list[str]]:
        """(fresh entries by id, ids to read: missing or expired)."""
        ids = list(item_ids)
        rows, missing = self.rows(ids)
        lacking = set(missing)
        found = {item_id: self._features(int(rows[i])) for i, item_id in enumerate(ids) if i not in lacking}
        return found, [ids[i] for i in missing]

    def stale(self, item_ids: Iterable[str]) -> dict[str, Known]:
        """Expired entries still held: better than nothing when the feature store is down."""
        entries = self._entries
        return {item_id: self._features(entries[item_id]) for item_id in item_ids if item_id in entries}

    def store(self, read: dict[str, Known]) -> None:
        ids = list(read)
        candidates = []
        for item_id in ids:
            candidate = Candidate(item_id, 0.0)
            features = read[item_id]
            if features is not None:
                features.apply(candidate)
            candidates.append(candidate)
        known = np.fromiter((read[item_id] is not None for item_id in ids), bool, len(ids))
        self.store_columns(ids, ItemColumns.of(candidates), known)

    def _features(self, row: int) -> Known:
        if not self._table.known[row]:
            return None
        c = self._table.columns
        return ItemFeatures(
            categories=c.categories[row],
            creator=c.creators[row],
            published_at=float(c.published_at[row]),
            age_rating=int(c.age_rating[row]),
            regions=c.regions[row],
            available=bool(c.available[row]),
            popularity=float(c.popularity[row]),
            popularity_7d=float(c.popularity_7d[row]),
        )

"""Redis side of the real-time updater: read the state a batch needs in one round trip,
write the planned updates in another (keys and encodings per docs/CONTRACTS.md)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
import redis
from recfleet_store import keys
from recfleet_store.windows import BUCKETS_TTL_SECONDS
from redis.typing import EncodableT, FieldT

from ..features import FeatureUpdates, ItemState, UserState

# The feature store's freshness stamp beside a value (docs/CONTRACTS.md): the window
# counts carry the time they were computed, so a count that no new event refreshes
# falls back to its default after the view's freshness.
WRITTEN_AT_PREFIX = "_ts:"


def _json(raw: bytes | None, default: Any) -> Any:
    if raw is None:
        return default
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return default


def _epoch(raw: bytes | None) -> int | None:
    value = _json(raw, None)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _buckets(raw: dict[bytes, bytes]) -> dict[str, int]:
    """A bucket hash as field -> count; fields whose value is not an integer are skipped."""
    buckets = {}
    for name, count in raw.items():
        try:
            buckets[name.decode()] = int(count)
        except (UnicodeDecodeError, ValueError):
            continue
    return buckets


class OnlineFeatureWriter:
    """Reads and writes the online features that events change."""

    def __init__(self, client: redis.Redis, recent_cap: int):
        self.client = client
        self.recent_cap = recent_cap

    def read_state(self, user_ids: Iterable[str], item_ids: Iterable[str]) -> tuple[dict, dict]:
        user_ids, item_ids = list(user_ids), list(item_ids)
        pipe = self.client.pipeline(transaction=False)
        for user_id in user_ids:
            pipe.hmget(keys.user(user_id), "last_seen_at", "category_counts")
        for item_id in item_ids:
            pipe.hmget(keys.item(item_id), "categories", "last_interaction_at")
            pipe.hgetall(keys.item_buckets(item_id))
        replies = pipe.execute()
        users: dict[str, UserState] = {}
        for user_id, (last_seen, counts) in zip(user_ids, replies[: len(user_ids)], strict=True):
            parsed = _json(counts, {})
            users[user_id] = UserState(_epoch(last_seen), parsed if isinstance(parsed, dict) else {})
        items: dict[str, ItemState] = {}
        item_replies = replies[len(user_ids) :]
        for item_id, (categories, last), buckets in zip(item_ids, item_replies[::2], item_replies[1::2], strict=True):
            parsed = _json(categories, [])
            items[item_id] = ItemState(
                [str(c) for c in parsed] if isinstance(parsed, list) else [], _epoch(last), _buckets(buckets)
            )
        return users, items

    def apply(self, updates: FeatureUpdates) -> None:
        """One pipeline: counters, timestamps, category counts, seen, recent, cache drop,
        time buckets and window counts."""
        pipe = self.client.pipeline(transaction=False)
        for user_id, count in updates.user_increments.items():
            key = keys.user(user_id)
            # A JSON integer is its decimal digits, so HINCRBY keeps the value JSON.
            pipe.hincrby(key, "interaction_count", count)
            fields: dict[FieldT, EncodableT] = {"last_seen_at": orjson.dumps(updates.user_last_seen[user_id])}
            if user_id in updates.user_category_counts:
                fields["category_counts"] = orjson.dumps(updates.user_category_counts[user_id])
            pipe.hset(key, mapping=fields)
            pipe.sadd(keys.user_seen(user_id), *updates.seen[user_id])
            recent_key = keys.user_recent(user_id)
            pipe.lpush(recent_key, *updates.recent[user_id])
            pipe.ltrim(recent_key, 0, self.recent_cap - 1)
            # New events change what the user should be shown: drop cached results.
            pipe.delete(keys.result_cache(user_id))
        written_at = orjson.dumps(updates.windows_at)
        for item_id, count in updates.item_increments.items():
            key = keys.item(item_id)
            pipe.hincrby(key, "interaction_count", count)
            fields = {"last_interaction_at": orjson.dumps(updates.item_last_interaction[item_id])}
            for name, value in updates.item_windows.get(item_id, {}).items():
                fields[name] = orjson.dumps(value)
                fields[WRITTEN_AT_PREFIX + name] = written_at
            pipe.hset(key, mapping=fields)
            buckets_key = keys.item_buckets(item_id)
            for name, added in updates.item_bucket_increments.get(item_id, {}).items():
                pipe.hincrby(buckets_key, name, added)
            expired = updates.item_expired_buckets.get(item_id)
            if expired:
                pipe.hdel(buckets_key, *expired)
            pipe.expire(buckets_key, BUCKETS_TTL_SECONDS)
        pipe.execute()

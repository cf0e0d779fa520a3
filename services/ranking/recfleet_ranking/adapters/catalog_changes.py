"""Catalog change announcements: the feature store publishes the ids of upserted items on
a Redis channel (`keys.ITEMS_CHANGED`); ranking drops them from its item-feature cache so
the next call reads them again."""

from __future__ import annotations

import asyncio

import orjson
import redis.asyncio as aioredis
import structlog
from recfleet_store import keys
from redis.exceptions import RedisError

from ..item_cache import ItemFeatureCache

log = structlog.get_logger("recfleet.ranking.catalog")
RETRY_SECONDS = 1.0


def changed_ids(data: bytes | str) -> list[str]:
    """The item ids of one announcement; [] for anything else."""
    try:
        ids = orjson.loads(data)
    except orjson.JSONDecodeError:
        return []
    return [str(item_id) for item_id in ids] if isinstance(ids, list) else []


async def follow_catalog_changes(redis_url: str, cache: ItemFeatureCache) -> None:
    """Runs until cancelled. On every (re)subscription the whole cache is dropped: what was
    announced while not listening is unknown. When Redis is away, the cache's TTL bounds
    how stale an item can be."""
    client = aioredis.from_url(redis_url, socket_connect_timeout=2)
    try:
        while True:
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(keys.ITEMS_CHANGED)
                    cache.clear()
                    log.info("following catalog changes", channel=keys.ITEMS_CHANGED)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            cache.forget(changed_ids(message["data"]))
            except (RedisError, OSError) as error:
                log.warning("catalog changes not followed; retrying", error=str(error))
                await asyncio.sleep(RETRY_SECONDS)
    finally:
        await client.aclose()

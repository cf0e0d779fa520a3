"""Catalog change announcements: the feature store publishes the ids of upserted items on
a Redis channel (`keys.ITEMS_CHANGED`); every process that holds item data in memory
(ranking's item features, the gateway's item attributes) follows the channel and drops
those items, so the next request that shows them reads them again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Protocol

import orjson
import redis.asyncio as aioredis
from recfleet_runtime.logging import get_logger
from redis.exceptions import RedisError

from . import keys

log = get_logger("recfleet.catalog")
RETRY_SECONDS = 1.0
# How long one wait for an announcement lasts before the next.
LISTEN_SECONDS = 1.0


class ForgetsItems(Protocol):
    def forget(self, item_ids: Iterable[str]) -> None: ...

    def clear(self) -> None: ...


def changed_ids(data: bytes | str) -> list[str]:
    """The item ids of one announcement; [] for anything else."""
    try:
        ids = orjson.loads(data)
    except orjson.JSONDecodeError:
        return []
    return [str(item_id) for item_id in ids] if isinstance(ids, list) else []


async def follow_catalog_changes(redis_url: str, cache: ForgetsItems, stopped: asyncio.Event) -> None:
    """Runs until `stopped` is set. On every (re)subscription the whole cache is dropped:
    what was announced while not listening is unknown. While Redis is away, the cache's
    TTL bounds how stale an item can be.

    Cancelling this task is not enough to end it: redis-py can swallow a cancellation
    that arrives while it reads (its read timeout turns it into a retried timeout), so
    the loop also ends at `stopped`, within `LISTEN_SECONDS` (`follow_until_cancelled`
    turns a cancellation into that)."""
    # A connection of its own: a subscription holds it for as long as it listens, which
    # a request path's bounded pool (short timeouts) is not made for.
    client = aioredis.from_url(redis_url, socket_connect_timeout=2)
    try:
        while not stopped.is_set():
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(keys.ITEMS_CHANGED)
                    cache.clear()
                    log.info("following catalog changes", channel=keys.ITEMS_CHANGED)
                    while not stopped.is_set():
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=LISTEN_SECONDS)
                        if message is not None and message.get("type") == "message":
                            cache.forget(changed_ids(message["data"]))
            except (RedisError, OSError) as error:
                log.warning("catalog changes not followed; retrying", error=str(error))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stopped.wait(), RETRY_SECONDS)
    finally:
        await client.aclose()


async def follow_until_cancelled(redis_url: str, cache: ForgetsItems) -> None:
    """`follow_catalog_changes` as a background task that ends when cancelled: the
    cancellation sets its stop event and waits for it to end."""
    stopped = asyncio.Event()
    follower = asyncio.ensure_future(follow_catalog_changes(redis_url, cache, stopped))
    try:
        await asyncio.shield(follower)
    except asyncio.CancelledError:
        stopped.set()
        await follower
        raise

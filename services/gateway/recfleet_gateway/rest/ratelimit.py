"""Rate limits per API key and per user: sliding windows in Redis (the `limits` library)."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from prometheus_client import Counter
from recfleet_runtime.logging import get_logger
from redis.asyncio import BlockingConnectionPool
from redis.exceptions import RedisError

from .problems import Problem

RATE_LIMIT_ERRORS = Counter(
    "recfleet_gateway_rate_limit_errors_total", "Requests let through because the limit store failed."
)
log = get_logger("recfleet.gateway.ratelimit")
KEY_NAMESPACE = "key"
USER_NAMESPACE = "user"


def storage_uri(redis_url: str) -> str:
    """`redis://host/db` -> the async storage URI `limits` expects."""
    for scheme in ("redis://", "rediss://", "unix://"):
        if redis_url.startswith(scheme):
            return "async+" + redis_url
    return redis_url


def bounded_pool(redis_url: str, max_connections: int, wait_seconds: float) -> BlockingConnectionPool:
    """A pool whose every wait is bounded by `wait_seconds`: for a free connection (a burst
    beyond `max_connections` waits its turn instead of failing at once), for connecting,
    and for each answer."""
    return BlockingConnectionPool.from_url(
        redis_url,
        max_connections=max_connections,
        timeout=wait_seconds,
        socket_timeout=wait_seconds,
        socket_connect_timeout=wait_seconds,
    )


class RateLimiter:
    """Checks and counts one hit against a key's limit and, when given, a user's limit."""

    def __init__(
        self,
        redis_url: str,
        per_key: str,
        per_user: str,
        per_scope: dict[str, str] | None = None,
        timeout_seconds: float = 0.25,
        max_connections: int = 128,
    ):
        # A Redis that stops answering costs a request `timeout_seconds`, then the request is
        # let through (`check`). A non-blocking pool refused a burst beyond its size at once,
        # which let every request of the burst through uncounted.
        # `limits` hands its options to redis-py; it types them as scalars only.
        options: dict[str, Any] = {"connection_pool": bounded_pool(redis_url, max_connections, timeout_seconds)}
        self._storage = RedisStorage(storage_uri(redis_url), implementation="redispy", key_prefix="rf:rl", **options)
        self._strategy = SlidingWindowCounterRateLimiter(self._storage)
        self._per_key = parse(per_key)
        self._per_user = parse(per_user)
        self._per_scope = {scope: parse(value) for scope, value in (per_scope or {}).items()}

    def key_limit(self, scope: str) -> RateLimitItem:
        return self._per_scope.get(scope, self._per_key)

    async def check(self, key_id: str, scope: str, user_id: str | None) -> None:
        """`count`, failing open: when Redis cannot be reached the request is let through
        (and logged), because limits protect the fleet but must not take it down."""
        try:
            await self.count(key_id, scope, user_id)
        except (RedisError, OSError) as error:
            RATE_LIMIT_ERRORS.inc()
            log.warning("rate limits unavailable; request let through", error=str(error))

    async def count(self, key_id: str, scope: str, user_id: str | None) -> None:
        """Counts one request against the key's and (when given) the user's window;
        raises a 429 Problem with `Retry-After` and `RateLimit-*` headers when one is
        exhausted. Both windows are counted concurrently; a window's stats are read only
        when it refused, so an allowed request costs one Redis round trip per window."""
        windows = [(self.key_limit(scope), KEY_NAMESPACE, key_id)]
        if user_id:
            windows.append((self._per_user, USER_NAMESPACE, user_id))
        if len(windows) == 1:
            item, namespace, identifier = windows[0]
            allowed = [await self._strategy.hit(item, namespace, identifier)]
        else:
            allowed = await asyncio.gather(*(self._strategy.hit(item, ns, ident) for item, ns, ident in windows))
        for (item, namespace, identifier), ok in zip(windows, allowed, strict=True):
            if ok:
                continue
            window = await self._strategy.get_window_stats(item, namespace, identifier)
            reset = max(1, math.ceil(window.reset_time - time.time()))
            raise Problem(
                429,
                f"rate limit of {item} per {namespace} exceeded; retry in {reset} s",
                headers={
                    "Retry-After": str(reset),
                    "RateLimit-Limit": str(item.amount),
                    "RateLimit-Remaining": "0",
                    "RateLimit-Reset": str(reset),
                },
                limit=str(item),
                scope=namespace,
            )

    async def forget_user(self, user_id: str) -> None:
        """Removes the user's counters (erasure)."""
        await self._strategy.clear(self._per_user, USER_NAMESPACE, user_id)

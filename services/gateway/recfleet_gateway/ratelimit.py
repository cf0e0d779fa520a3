"""Rate limits per API key and per user: sliding windows in Redis (the `limits` library)."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from prometheus_client import Counter
from recfleet_runtime.logging import get_logger
from redis.exceptions import RedisError

from .problems import Problem

RATE_LIMIT_ERRORS = Counter(
    "recfleet_gateway_rate_limit_errors_total", "Requests let through because the limit store failed."
)
log = get_logger("recfleet.gateway.ratelimit")
KEY_NAMESPACE = "key"
USER_NAMESPACE = "user"


@dataclass(frozen=True)
class LimitState:
    limit: int
    remaining: int
    reset_seconds: int


def storage_uri(redis_url: str) -> str:
    """`redis://host/db` -> the async storage URI `limits` expects."""
    for scheme in ("redis://", "rediss://", "unix://"):
        if redis_url.startswith(scheme):
            return "async+" + redis_url
    return redis_url


class RateLimiter:
    """Checks and counts one hit against a key's limit and, when given, a user's limit."""

    def __init__(self, redis_url: str, per_key: str, per_user: str, per_scope: dict[str, str] | None = None):
        self._storage = RedisStorage(storage_uri(redis_url), implementation="redispy", key_prefix="rf:rl")
        self._strategy = SlidingWindowCounterRateLimiter(self._storage)
        self._per_key = parse(per_key)
        self._per_user = parse(per_user)
        self._per_scope = {scope: parse(value) for scope, value in (per_scope or {}).items()}

    def key_limit(self, scope: str) -> RateLimitItem:
        return self._per_scope.get(scope, self._per_key)

    async def check(self, key_id: str, scope: str, user_id: str | None) -> LimitState | None:
        """`count`, failing open: when Redis cannot be reached the request is let through
        (and logged), because limits protect the fleet but must not take it down."""
        try:
            return await self.count(key_id, scope, user_id)
        except (RedisError, OSError) as error:
            RATE_LIMIT_ERRORS.inc()
            log.warning("rate limits unavailable; request let through", error=str(error))
            return None

    async def count(self, key_id: str, scope: str, user_id: str | None) -> LimitState:
        """Counts one request against the key's and (when given) the user's window;
        raises a 429 Problem when one is exhausted. Returns the tightest state, for the
        `RateLimit-*` headers of a successful response. Both windows are counted
        concurrently: one Redis round trip each for the hit and for the stats."""
        windows = [(self.key_limit(scope), KEY_NAMESPACE, key_id)]
        if user_id:
            windows.append((self._per_user, USER_NAMESPACE, user_id))
        allowed = await asyncio.gather(*(self._strategy.hit(item, ns, ident) for item, ns, ident in windows))
        stats = await asyncio.gather(*(self._strategy.get_window_stats(item, ns, ident) for item, ns, ident in windows))
        now = time.time()
        states = []
        for (item, namespace, _), ok, window in zip(windows, allowed, stats, strict=True):
            reset = max(1, math.ceil(window.reset_time - now))
            state = LimitState(item.amount, max(0, window.remaining), reset)
            if not ok:
                raise Problem(
                    429,
                    f"rate limit of {item} per {namespace} exceeded; retry in {reset} s",
                    headers={
                        "Retry-After": str(reset),
                        "RateLimit-Limit": str(state.limit),
                        "RateLimit-Remaining": "0",
                        "RateLimit-Reset": str(reset),
                    },
                    limit=str(item),
                    scope=namespace,
                )
            states.append(state)
        return min(states, key=lambda state: state.remaining)

    async def forget_user(self, user_id: str) -> None:
        """Removes the user's counters (erasure)."""
        await self._strategy.clear(self._per_user, USER_NAMESPACE, user_id)

"""Rate limits per API key and per user: sliding windows in Redis (the `limits` library).

Every window a request counts against is counted in one Redis round trip: one script
that runs the library's own sliding-window acquire script once per window. The windows'
keys are the library's, so its stats (`Retry-After` on a 429) and its `clear` (erasure)
read and remove exactly what was counted.

A route whose first Redis call is a read of its own (the recommendation route's result
cache) takes its request's windows as a `PendingHit` and counts them in that call: the
same script, which then reads one hash field, so a cache hit costs one round trip.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.storage.redis.bridge import RedisBridge
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from prometheus_client import Counter
from recfleet_runtime.logging import get_logger
from redis.asyncio import BlockingConnectionPool, Redis
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


def acquire_windows_script(then_read: bool = False) -> str:
    """A Lua script that counts one hit against each of several sliding windows, each
    exactly as `limits` counts one (its `acquire_sliding_window` script, run as a
    function per window), and answers 1 (counted) or 0 (refused) per window.

    KEYS: previous and current key of each window, in order; ARGV: limit, expiry
    seconds and cost of each window. Each window is counted or refused on its own, as
    separate `hit` calls would: a request the user's window refuses still counts
    against its key's window. (The windows' keys hash to different slots: this needs
    one Redis server, not a Redis Cluster, like the rest of the gateway's Redis use.)

    `then_read`: the last key is a hash and the last argument one of its fields, whose
    value (or nil) follows the windows' answers."""
    windows = "(#KEYS - 1) / 2" if then_read else "#KEYS / 2"
    return (
        "local function acquire(KEYS, ARGV)\n"
        + RedisBridge.SCRIPT_ACQUIRE_SLIDING_WINDOW.decode()
        + "\nend\n"
        + "local counted = {}\n"
        + f"local windows = math.floor({windows})\n"
        + "for window = 0, windows - 1 do\n"
        + "  local ok = acquire({KEYS[2 * window + 1], KEYS[2 * window + 2]},\n"
        + "    {ARGV[3 * window + 1], ARGV[3 * window + 2], ARGV[3 * window + 3]})\n"
        + "  counted[window + 1] = ok and 1 or 0\n"
        + "end\n"
        + ("counted[windows + 1] = redis.call('HGET', KEYS[#KEYS], ARGV[#ARGV])\n" if then_read else "")
        + "return counted\n"
    )


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


@dataclass(frozen=True)
class Window:
    item: RateLimitItem
    namespace: str
    identifier: str


class PendingHit:
    """One request's hit against its windows, not yet counted: `count` counts it alone,
    `count_and_read` in the same round trip as the request's first read."""

    def __init__(self, limiter: RateLimiter, windows: list[Window]):
        self._limiter = limiter
        self._windows = windows
        self._keys: list[str] = []
        self._args: list[int] = []
        for window in windows:
            self._keys.extend(limiter.window_keys(window.item, window.namespace, window.identifier))
            self._args.extend((window.item.amount, window.item.get_expiry(), 1))

    async def count(self) -> None:
        """Counts the hit, failing open: when Redis cannot be reached the request is let
        through (and logged), because limits protect the fleet but must not take it down."""
        try:
            await self._limiter.settle(self._windows, await self._limiter.acquire(self._keys, self._args))
        except (RedisError, OSError) as error:
            failed_open(error)

    async def count_and_read(self, hash_key: str, field: str) -> bytes | None:
        """Counts the hit and reads `field` of the hash `hash_key` in one round trip; a 429
        Problem when a window refused. Redis errors are the caller's (who must let the
        request through, `failed_open`, as `count` does)."""
        answer = await self._limiter.acquire_then_read([*self._keys, hash_key], [*self._args, field])
        *counted, value = answer
        await self._limiter.settle(self._windows, counted)
        return value


def failed_open(error: BaseException) -> None:
    """A request let through uncounted because the limit store failed."""
    RATE_LIMIT_ERRORS.inc()
    log.warning("rate limits unavailable; request let through", error=str(error))


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
        pool = bounded_pool(redis_url, max_connections, timeout_seconds)
        # `limits` hands its options to redis-py; it types them as scalars only.
        options: dict[str, Any] = {"connection_pool": pool}
        self._storage = RedisStorage(storage_uri(redis_url), implementation="redispy", key_prefix="rf:rl", **options)
        self._strategy = SlidingWindowCounterRateLimiter(self._storage)
        # Counting goes through one script on the same pool; the strategy reads the stats
        # of a refused window and clears a user's windows.
        client = Redis(connection_pool=pool)
        self._acquire = client.register_script(acquire_windows_script())
        self._acquire_then_read = client.register_script(acquire_windows_script(then_read=True))
        self._per_key = parse(per_key)
        self._per_user = parse(per_user)
        self._per_scope = {scope: parse(value) for scope, value in (per_scope or {}).items()}

    def key_limit(self, scope: str) -> RateLimitItem:
        return self._per_scope.get(scope, self._per_key)

    def window_keys(self, item: RateLimitItem, namespace: str, identifier: str) -> tuple[str, str]:
        """The Redis keys (previous, current) under which `limits` keeps this window: the
        key layout of its sliding-window counter on Redis."""
        key = item.key_for(namespace, identifier)
        prefixed = self._storage.bridge.prefixed_key
        return prefixed(self._storage._previous_window_key(key)), prefixed(self._storage._current_window_key(key))

    def pending(self, key_id: str, scope: str, user_id: str | None) -> PendingHit:
        """The request's hit against the key's and (when given) the user's window."""
        windows = [Window(self.key_limit(scope), KEY_NAMESPACE, key_id)]
        if user_id:
            windows.append(Window(self._per_user, USER_NAMESPACE, user_id))
        return PendingHit(self, windows)

    async def check(self, key_id: str, scope: str, user_id: str | None) -> None:
        """Counts one request against the key's and (when given) the user's window, failing
        open (`PendingHit.count`)."""
        await self.pending(key_id, scope, user_id).count()

    async def acquire(self, keys: list[str], args: list[int]) -> list[int]:
        return list(await self._acquire(keys=keys, args=args))

    async def acquire_then_read(self, keys: list[str], args: list[Any]) -> list[Any]:
        return list(await self._acquire_then_read(keys=keys, args=args))

    async def settle(self, windows: list[Window], counted: list[int]) -> None:
        """Raises a 429 Problem with `Retry-After` and `RateLimit-*` headers for the first
        window that refused; a window's stats are read only when it refused."""
        for window, ok in zip(windows, counted, strict=True):
            if ok:
                continue
            stats = await self._strategy.get_window_stats(window.item, window.namespace, window.identifier)
            reset = max(1, math.ceil(stats.reset_time - time.time()))
            raise Problem(
                429,
                f"rate limit of {window.item} per {window.namespace} exceeded; retry in {reset} s",
                headers={
                    "Retry-After": str(reset),
                    "RateLimit-Limit": str(window.item.amount),
                    "RateLimit-Remaining": "0",
                    "RateLimit-Reset": str(reset),
                },
                limit=str(window.item),
                scope=window.namespace,
            )

    async def forget_user(self, user_id: str) -> None:
        """Removes the user's counters (erasure)."""
        await self._strategy.clear(self._per_user, USER_NAMESPACE, user_id)

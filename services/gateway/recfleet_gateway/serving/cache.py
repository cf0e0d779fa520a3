"""The recommendation result cache and the ranked-list snapshots behind cursors.

Responses live in the Redis hash `rf:cache:{user}` (field = digest of the request's
parameters) so that deleting that one key invalidates every cached response of the
user. Snapshots (the full ranked list a cursor pages through) live beside it in
`rf:cache:{user}:pages`, which outlives invalidation so that an issued cursor stays
stable for its lifetime.

A cached entry is stored as JSON with its `response` last and as the exact bytes the
API sends, so that a hit sends those bytes with only `request_id` replaced
(`rest.responses.RenderedJSON`) instead of serialising the same answer again. Entries
stay plain JSON objects of the same fields, readable by any replica.

Entries are keyed by the serving model versions too (`ServingModels`: the registry's
publication in Redis, re-read by every process each second and held in memory, so a hit
costs no extra round trip): after a promotion or rollback no process answers from a list
of the versions before it for longer than that second.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from functools import cache
from typing import Any, cast

import orjson
from prometheus_client import Counter
from recfleet_runtime.logging import get_logger
from recfleet_runtime.periodic import Periodic
from recfleet_store import keys, registry
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..rest.problems import Problem
from ..rest.ratelimit import PendingHit, failed_open
from ..rest.responses import RenderedJSON

CACHE_REQUESTS = Counter(
    "recfleet_gateway_cache_requests_total", "Result cache lookups, by result (hit, miss, error).", ["result"]
)
REDIS_ERRORS = (RedisError, OSError)
log = get_logger("recfleet.gateway.cache")
RESPONSE_FIELD = b'"response":'
# How often every gateway process re-reads the serving model versions: the bound on how
# long a process keeps answering from lists of the versions before a promotion.
SERVING_REFRESH_SECONDS = 1.0


@cache
def _counted(result: str) -> Counter:
    """The lookup counter's child for `result`, found once (`labels` takes a lock)."""
    return CACHE_REQUESTS.labels(result)


def _head(entry: dict[str, Any]) -> bytes:
    """The JSON of an entry up to its response's value: every other field, then
    `"response":`."""
    others = orjson.dumps({field: value for field, value in entry.items() if field != "response"})
    return (others[:-1] + b"," if len(others) > 2 else b"{") + RESPONSE_FIELD


def encode_entry(entry: dict[str, Any]) -> bytes:
    """A cache entry's JSON, with `response` last."""
    return _head(entry) + orjson.dumps(entry["response"]) + b"}"


def decode_entry(raw: bytes) -> dict[str, Any]:
    """A cache entry; its response a `RenderedJSON` over the stored bytes when the entry
    was written by `encode_entry` (any other JSON object is read as it is)."""
    entry: dict[str, Any] = orjson.loads(raw)
    response = entry.get("response")
    if isinstance(response, dict):
        head = _head(entry)
        if raw.startswith(head):
            entry["response"] = RenderedJSON(response, raw[len(head) : -1])
    return entry


def pages_key(user_id: str) -> str:
    return keys.result_cache(user_id) + ":pages"


def parameters_digest(parameters: dict) -> str:
    """A short, order-independent digest of request parameters."""
    return hashlib.blake2b(orjson.dumps(parameters, option=orjson.OPT_SORT_KEYS), digest_size=12).hexdigest()


class ServingModels:
    """The serving version of each model kind (None: not published), as promote and
    rollback publish them in Redis (`keys.serving_version_key`), held in memory and
    re-read every `refresh_seconds`; a change this process made itself counts at once."""

    def __init__(self, redis: Redis, refresh_seconds: float = SERVING_REFRESH_SECONDS):
        self._redis = redis
        self.versions: dict[str, str | None] = dict.fromkeys(registry.KINDS)
        self._changes = 0
        self._refresher = Periodic(refresh_seconds, self.refresh)

    async def refresh(self) -> None:
        """Re-read the versions; Redis being away keeps the last ones."""
        changes = self._changes
        try:
            # Bytes: the gateway's client does not decode responses.
            raw = cast(
                list[bytes | None], await self._redis.mget([keys.serving_version_key(kind) for kind in registry.KINDS])
            )
        except REDIS_ERRORS as error:
            log.warning("serving model versions not refreshed; keeping the last ones", error=str(error))
            return
        # A read that started before a change this process made must not undo it.
        if changes == self._changes:
            self.versions = {
                kind: value.decode() if value else None for kind, value in zip(registry.KINDS, raw, strict=True)
            }

    def changed(self, kind: str, version: str | None) -> None:
        """A promotion or rollback this process just made."""
        self._changes += 1
        self.versions = {**self.versions, kind: version}

    async def start(self) -> None:
        await self._refresher.start()

    async def stop(self) -> None:
        await self._refresher.stop()


# Stores a snapshot (KEYS[1], field ARGV[1], value ARGV[2], TTL ARGV[3]) and, when a second
# key is given, a response (KEYS[2], ARGV[4], ARGV[5], ARGV[6]): one command, where a
# pipeline of the four costs the client about twice the CPU.
STORE_SCRIPT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
if #KEYS > 1 then
  redis.call('HSET', KEYS[2], ARGV[4], ARGV[5])
  redis.call('EXPIRE', KEYS[2], ARGV[6])
end
return 1
"""


class ResultCache:
    def __init__(self, redis: Redis, ttl_seconds: int, snapshot_ttl_seconds: int):
        self._redis = redis
        self._store = redis.register_script(STORE_SCRIPT)
        self._ttl = ttl_seconds
        self._snapshot_ttl = snapshot_ttl_seconds
        # Part of every entry's key (see the module docstring).
        self.models = ServingModels(redis)

    async def get(self, user_id: str, digest: str, hit: PendingHit | None = None) -> dict | None:
        """The cached entry, or None on a miss. Redis being down is a miss: the cache
        only saves work, it is never a reason to fail a request. With `hit`, the request's
        rate-limit windows are counted in the same round trip (a 429 Problem when one
        refused; let through when Redis is down)."""
        try:
            # Bytes: the gateway's client does not decode responses.
            if hit is None:
                raw = cast(bytes | None, await self._redis.hget(keys.result_cache(user_id), digest))
            else:
                raw = await hit.count_and_read(keys.result_cache(user_id), digest)
        except REDIS_ERRORS as error:
            if hit is not None:
                failed_open(error)
            _counted("error").inc()
            log.warning("result cache unavailable", error=str(error))
            return None
        _counted("hit" if raw else "miss").inc()
        return decode_entry(raw) if raw else None

    async def put(self, user_id: str, snapshot_id: str, snapshot: dict, digest: str | None, entry: dict) -> None:
        """Stores a fresh ranked list's snapshot and, when `digest` is given, the cached
        response `entry` under it, in one round trip."""
        keys_: list[str] = [pages_key(user_id)]
        args: list[Any] = [snapshot_id, orjson.dumps(snapshot), self._snapshot_ttl]
        if digest is not None:
            keys_.append(keys.result_cache(user_id))
            args.extend((digest, encode_entry(entry), self._ttl))
        try:
            await self._store(keys=keys_, args=args)
        except REDIS_ERRORS as error:
            log.warning("result cache unavailable; not stored", error=str(error))

    async def get_snapshot(self, user_id: str, snapshot_id: str) -> dict | None:
        try:
            raw = await self._redis.hget(pages_key(user_id), snapshot_id)
        except REDIS_ERRORS as error:
            raise Problem(503, "the page cannot be read now; retry", headers={"Retry-After": "1"}) from error
        return orjson.loads(raw) if raw else None

    async def invalidate(self, *user_ids: str) -> None:
        if not user_ids:
            return
        try:
            await self._redis.unlink(*(keys.result_cache(u) for u in user_ids))
        except REDIS_ERRORS as error:
            # The entries expire with their TTL; the event path must not fail for this.
            log.warning("result cache invalidation failed", error=str(error))

    async def forget_user(self, user_id: str) -> int:
        """Erasure: cached responses and snapshots."""
        return int(await self._redis.unlink(keys.result_cache(user_id), pages_key(user_id)))


class CursorCodec:
    """Opaque cursors: base64url of JSON {offset, params digest, snapshot id}, signed."""

    def __init__(self, secret: str = ""):
        self._secret = (secret or secrets.token_hex(32)).encode()

    def _sign(self, payload: bytes) -> str:
        return hmac.new(self._secret, payload, hashlib.sha256).hexdigest()[:32]

    def encode(self, offset: int, digest: str, snapshot_id: str) -> str:
        payload = orjson.dumps({"o": offset, "p": digest, "s": snapshot_id})
        token = orjson.dumps({"d": payload.decode(), "h": self._sign(payload)})
        return base64.urlsafe_b64encode(token).decode().rstrip("=")

    def decode(self, cursor: str, digest: str) -> tuple[int, str]:
        """(offset, snapshot id); 400 when the cursor is forged, garbled or was issued for
        other parameters."""
        try:
            token = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
            payload = token["d"].encode()
            valid = hmac.compare_digest(token["h"], self._sign(payload))
            data = orjson.loads(payload)
            offset, given_digest, snapshot_id = int(data["o"]), str(data["p"]), str(data["s"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise _bad_cursor("the cursor is not one this API issued") from None
        if not valid:
            raise _bad_cursor("the cursor is not one this API issued")
        if given_digest != digest:
            raise _bad_cursor("the cursor belongs to a request with other parameters; repeat them unchanged")
        return offset, snapshot_id


def _bad_cursor(detail: str) -> Problem:
    return Problem(400, detail, errors=[{"field": "query.cursor", "message": detail}])

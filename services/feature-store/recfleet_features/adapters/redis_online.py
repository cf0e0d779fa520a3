"""The online store in Redis (key layout: docs/CONTRACTS.md, `recfleet_store.keys`).

Every read a request makes is one script call or one pipeline, so one network round trip.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from recfleet_store import keys
from redis.typing import EncodableT, FieldT

from ..rows import decode_hash, decode_values, decode_vector, encode_value, timestamp_field
from ..validation import CatalogItem, Profile

WINDOWS = ("all", "7d", "trending")

# Reads the same fields of many item hashes and answers ONE JSON document: a list of
# per-item texts, each the stored values of the fields joined by commas (null where
# absent), i.e. the inside of a JSON array. The stored values are JSON already, so they
# are spliced in as they are: the client parses one string instead of thousands of
# replies (most of the cost of a 500-item read in Python), and an item's text is a
# ready-made cache key for the row built from it. Absent fields are replaced in HMGET's
# own answer and joined without brackets because each string built per item is a
# measurable share of the script's time in Redis. Ids and field names travel as two
# newline-joined arguments (ids cannot hold a newline) because packing a thousand
# arguments costs more client time than the script: the hash keys are therefore not
# declared, which standalone Redis allows (a Redis Cluster would need per-slot batches).
ITEM_ROWS_SCRIPT = """
local fields = {}
for name in string.gmatch(ARGV[3], '[^\\n]+') do fields[#fields + 1] = name end
local count, prefix = #fields, ARGV[1]
local out = {}
for id in string.gmatch(ARGV[2], '[^\\n]+') do
  local values = redis.call('HMGET', prefix .. id, unpack(fields))
  for j = 1, count do
    if not values[j] then values[j] = 'null' end
  end
  out[#out + 1] = table.concat(values, ',')
end
return cjson.encode(out)
"""

# Pages through a popular set (KEYS[1]) from the top, `page` members at a time, and keeps
# up to `limit` members that are not excluded and whose item hash does not say
# available = 0 (no hash counts as available). Answers member, score, member, score, ...
POPULAR_SCRIPT = """
local prefix, limit, page = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local exclude = {}
for id in string.gmatch(ARGV[4], '[^\\n]+') do exclude[id] = true end
local out = {}
local start = 0
while #out < 2 * limit do
  local batch = redis.call('ZREVRANGE', KEYS[1], start, start + page - 1, 'WITHSCORES')
  for i = 1, #batch, 2 do
    local id = batch[i]
    if not exclude[id] then
      local flag = redis.call('HGET', prefix .. id, 'available')
      if flag ~= '0' and flag ~= 'false' and flag ~= '"0"' then
        out[#out + 1] = id
        out[#out + 1] = batch[i + 1]
        if #out >= 2 * limit then break end
      end
    end
  end
  if #batch < 2 * page then break end
  start = start + page
end
return out
"""

# The whole read of one or more users, one call for all of them: KEYS[1] is the serving
# version key, then each user's features hash, vectors hash and seen set. ARGV[1] is "1"
# when the serving version is wanted; ARGV[1 + n] the fields of user n, newline-separated.
# Answers the serving version (false when not asked or not set), then per user: the
# fields' stored values joined like an item's text, the vectors hash as HGETALL answers
# it, and the seen set as ONE newline-joined string (item ids cannot hold a newline;
# parsing thousands of set members one by one is the slow part of a pipelined read in
# Python). One script call rather than a pipeline of one per user: redis-py checks every
# script of a pipeline with SCRIPT EXISTS first, a second round trip.
USERS_READ_SCRIPT = """
local serving = false
if ARGV[1] == '1' then serving = redis.call('GET', KEYS[1]) end
local out = {serving}
local parsed = {}
for n = 1, #ARGV - 1 do
  local spec = ARGV[n + 1]
  local fields = parsed[spec]
  if not fields then
    fields = {}
    for name in string.gmatch(spec, '[^\\n]+') do fields[#fields + 1] = name end
    parsed[spec] = fields
  end
  local key = 3 * n - 1
  local values = {}
  if #fields > 0 then values = redis.call('HMGET', KEYS[key], unpack(fields)) end
  for j = 1, #fields do
    if not values[j] then values[j] = 'null' end
  end
  out[#out + 1] = table.concat(values, ',')
  out[#out + 1] = redis.call('HGETALL', KEYS[key + 1])
  out[#out + 1] = table.concat(redis.call('SMEMBERS', KEYS[key + 2]), '\\n')
end
return out
"""


@dataclass
class UserRead:
    """What the read of one user returned: the decoded values of the fields asked for
    (absent ones left out), stored vectors (version -> bytes) and the seen set."""

    stored: dict[str, Any]
    vectors: dict[str, bytes]
    seen: list[str]


@dataclass
class UsersRead:
    """What one read of several users returned: the serving version (None when no user
    needed it) and each user's read, in the order asked."""

    serving_version: str | None
    users: list[UserRead]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisOnlineStore:
    """Online features, popular sets and user keys in one Redis database."""

    def __init__(self, client: aioredis.Redis, serving_cache_seconds: float = 1.0):
        self.client = client
        self.serving_cache_seconds = serving_cache_seconds
        self._serving: tuple[float, str] | None = None
        self._item_rows = client.register_script(ITEM_ROWS_SCRIPT)
        self._popular = client.register_script(POPULAR_SCRIPT)
        self._users_read = client.register_script(USERS_READ_SCRIPT)

    @classmethod
    def from_url(
        cls,
        url: str,
        max_connections: int = 64,
        serving_cache_seconds: float = 1.0,
        pool_wait_seconds: float = 2.0,
        **pool_kwargs,
    ):
        """A store over a blocking connection pool: calls beyond `max_connections` wait up
        to `pool_wait_seconds` for a connection (the caller's deadline still applies)
        rather than failing at once. `pool_kwargs` reach the pool's connections."""
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=pool_wait_seconds, **pool_kwargs
        )
        return cls(aioredis.Redis.from_pool(pool), serving_cache_seconds)

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    async def warm_up(self) -> None:
        """Load the scripts and run each read once, so the first requests do not pay for
        script compilation, NOSCRIPT retries or new connections."""
        for script in (self._item_rows, self._popular, self._users_read):
            await self.client.script_load(script.script)
        await self.read_users([("warm-up", ["age"])], need_serving_version=True)
        await self.read_items(["warm-up"], ["title"])
        await self.popular("all", "", 1, set())

    async def close(self) -> None:
        await self.client.aclose()
        await self.client.connection_pool.disconnect()

    async def read_users(self, users: list[tuple[str, list[str]]], need_serving_version: bool) -> UsersRead:
        """For each (user id, fields): the user's fields, vectors and seen set; and (when
        asked and not cached) the serving version; all in one round trip (one script
        call), whatever the number of users. A second round trip, for the users concerned
        only, when a stored value is not JSON (that value counts as absent)."""
        now = time.monotonic()
        cached = self._serving
        fetch_serving = need_serving_version and (cached is None or now - cached[0] > self.serving_cache_seconds)
        script_keys = [keys.SERVING_VERSION]
        args = ["1" if fetch_serving else "0"]
        for user_id, fields in users:
            script_keys += (keys.user(user_id), keys.user_vectors(user_id), keys.user_seen(user_id))
            args.append("\n".join(fields))
        answer = await self._users_read(keys=script_keys, args=args)
        serving = None
        if fetch_serving:
            serving = _text(answer[0]) if answer[0] else ""
            self._serving = (now, serving)
        elif need_serving_version and cached is not None:
            serving = cached[1]
        reads = []
        unreadable = []
        for index, (_, fields) in enumerate(users):
            text, vectors, seen = answer[3 * index + 1 : 3 * index + 4]
            values = decode_values(text, len(fields))
            if values is None:
                unreadable.append(index)
                values = []
            reads.append(
                UserRead(
                    stored={name: value for name, value in zip(fields, values, strict=False) if value is not None},
                    vectors=_pairs(vectors),
                    seen=_text(seen).split("\n") if seen else [],
                )
            )
        if unreadable:
            pipe = self.client.pipeline(transaction=False)
            for index in unreadable:
                pipe.hmget(keys.user(users[index][0]), users[index][1])
            for index, raw in zip(unreadable, await pipe.execute(), strict=True):
                values = [_json_or_none(value) for value in raw]
                reads[index].stored = {
                    name: value for name, value in zip(users[index][1], values, strict=False) if value is not None
                }
        return UsersRead(serving_version=serving, users=reads)

    async def read_items(self, item_ids: list[str], fields: list[str]) -> list[str]:
        """Per item, the stored JSON texts of its `fields` in order joined by commas (null
        where absent), in one round trip (`rows.decode_values` decodes one). A value that is not
        JSON makes its item's text undecodable; such items are re-read with `read_item_values`."""
        if not item_ids:
            return []
        document = await self._item_rows(args=[keys.item(""), "\n".join(item_ids), "\n".join(fields)])
        return orjson.loads(document)

    async def read_item_values(self, item_id: str, fields: list[str]) -> list:
        """The decoded values of one item's `fields`; values that are not JSON count as absent."""
        return await self._hash_values(keys.item(item_id), fields)

    async def _hash_values(self, key: str, fields: list[str]) -> list:
        return [_json_or_none(value) for value in await self.client.hmget(key, fields)]

    async def write(self, entity: str, rows: dict[str, dict[str, Any]], event_time: float) -> None:
        """Feature values (JSON) and the time they were written, for freshness checks."""
        key_of = keys.user if entity == "user" else keys.item
        pipe = self.client.pipeline(transaction=False)
        for entity_id, values in rows.items():
            mapping: dict[FieldT, EncodableT] = {}
            for name, value in values.items():
                mapping[name] = encode_value(value)
                mapping[timestamp_field(name)] = encode_value(event_time)
            if mapping:
                pipe.hset(key_of(entity_id), mapping=mapping)
        await pipe.execute()

    async def popular(self, window: str, category: str, limit: int, exclude: set[str]) -> list[tuple[str, float]]:
        """Top `limit` of `rf:pop:<window>:<category>`, skipping excluded and unavailable
        items, in one round trip (a script pages through the set with over-fetch)."""
        page = max(2 * (limit + len(exclude)), 32)
        flat = await self._popular(
            keys=[keys.popular(window, category)],
            args=[keys.item(""), limit, page, "\n".join(sorted(exclude))],
        )
        return [(_text(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def upsert_items(self, items: list[CatalogItem], previous_categories: dict[str, list[str]]) -> None:
        """Item hashes with every catalog field; available items join the popular sets of
        their categories with score 0 unless already there (ZADD NX), so a new item is
        servable before the next popularity run; unavailable items leave every set."""
        pipe = self.client.pipeline(transaction=False)
        for item in items:
            pipe.hset(keys.item(item.item_id), mapping={k: encode_value(v) for k, v in item.online_fields().items()})
            old = previous_categories.get(item.item_id, [])
            if item.available:
                for window in WINDOWS:
                    for category in ["", *item.categories]:
                        pipe.zadd(keys.popular(window, category), {item.item_id: 0}, nx=True)
                    for category in old:
                        if category not in item.categories:
                            pipe.zrem(keys.popular(window, category), item.item_id)
            else:
                for window in WINDOWS:
                    for category in {"", *item.categories, *old}:
                        pipe.zrem(keys.popular(window, category), item.item_id)
        # After the writes, in the same round trip: every ranking replica forgets these
        # items and reads them again on its next call.
        pipe.publish(keys.ITEMS_CHANGED, orjson.dumps([item.item_id for item in items]))
        await pipe.execute()

    async def put_profile(self, profile: Profile) -> None:
        await self.client.hset(
            keys.user(profile.user_id), mapping={k: encode_value(v) for k, v in profile.online_fields().items()}
        )

    def _user_keys(self, user_id: str) -> list[str]:
        return [
            keys.user(user_id),
            keys.user_seen(user_id),
            keys.user_recent(user_id),
            keys.user_vectors(user_id),
            keys.result_cache(user_id),
        ]

    async def export_user(self, user_id: str) -> dict:
        """Everything Redis holds for the user, as JSON-ready values."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(keys.user(user_id))
        pipe.smembers(keys.user_seen(user_id))
        pipe.lrange(keys.user_recent(user_id), 0, -1)
        pipe.hgetall(keys.user_vectors(user_id))
        features, seen, recent, vectors = await pipe.execute()
        return {
            "features": {k: v for k, v in decode_hash(features).items() if not k.startswith("_")},
            "seen_items": sorted(_text(item) for item in seen),
            "recent_items": [_text(item) for item in recent],
            "vectors": {_text(version): decode_vector(raw) for version, raw in vectors.items()},
        }

    async def erase_user(self, user_id: str) -> int:
        """Delete every key of the user: the known ones and any other key carrying the
        user's hash tag `{user}`. Returns the number of keys removed."""
        names = set(self._user_keys(user_id))
        async for key in self.client.scan_iter(match=f"{keys.PREFIX}:*{{{user_id}}}*", count=1000):
            names.add(_text(key))
        return int(await self.client.delete(*names))


def _pairs(flat: list) -> dict:
    """A flat [field, value, ...] HGETALL answer (as scripts return it) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=False))


def _json_or_none(raw: bytes | str | None) -> Any:
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None

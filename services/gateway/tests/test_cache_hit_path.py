"""The cache-hit path: what one repeated recommendation costs in Redis round trips and
Postgres lookups, that its body is the cached answer under a fresh request id, and that
a revoked key stops working in every worker within the key cache's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import orjson
import pytest
from gateway_test_support import assert_problem, http_client, running_app
from recfleet_gateway.adapters.api_keys import ApiKeyTable
from recfleet_gateway.rest.responses import JSONBody
from recfleet_gateway.serving.cache import decode_entry, encode_entry
from recfleet_runtime.context import request_id_var
from redis.asyncio.connection import AbstractConnection

# Round trips to Redis of one cache hit: the per-key and per-user rate-limit windows
# counted in the result cache lookup's script. Raising this is a regression.
HIT_ROUND_TRIPS = 1


@pytest.fixture
def redis_trips(monkeypatch) -> Counter[str]:
    """Counts what every Redis connection of this process sends, by request id: one
    send is one round trip (a pipeline or a script is one send). Work outside a request
    (background refreshes) has no request id and is left out."""
    trips: Counter[str] = Counter()
    send = AbstractConnection.send_packed_command

    async def counted(self, command, check_health=True):
        request_id = request_id_var.get()
        if request_id:
            trips[request_id] += 1
        return await send(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    return trips


@pytest.fixture
def key_lookups(monkeypatch) -> list[str]:
    """The API-key hashes looked up in Postgres, in order."""
    looked_up: list[str] = []
    find_active = ApiKeyTable.find_active

    async def counted(self, key_hash, wait_seconds):
        looked_up.append(key_hash)
        return await find_active(self, key_hash, wait_seconds)

    monkeypatch.setattr(ApiKeyTable, "find_active", counted)
    return looked_up


@pytest.fixture
def quiet_settings(gateway_settings):
    """No background refresh touches Redis while round trips are counted."""
    return gateway_settings.model_copy(update={"traffic_refresh_seconds": 3600.0, "api_key_cache_seconds": 60.0})


async def create_key(client, scopes: list[str]) -> dict:
    reply = await client.post("/admin/v1/api-keys", json={"name": "reader", "scopes": scopes})
    assert reply.status_code == 201, reply.text
    return reply.json()


async def test_a_cache_hit_costs_one_redis_round_trip_and_no_key_lookup(quiet_settings, redis_trips, key_lookups):
    async with running_app(quiet_settings) as application, http_client(application) as admin:
        reader = await create_key(admin, ["recommend:read"])
        async with http_client(application, reader["secret"]) as http:
            params = {"user_id": "warm-1", "limit": 5}
            first = await http.get("/v1/recommendations", params=params)
            assert first.status_code == 200, first.text
            lookups = len(key_lookups)
            hits = [await http.get("/v1/recommendations", params=params) for _ in range(5)]
    for hit in hits:
        assert hit.status_code == 200, hit.text
        assert redis_trips[hit.headers["X-Request-ID"]] == HIT_ROUND_TRIPS
    assert len(key_lookups) == lookups, "a key verified moments ago is not looked up again"


async def test_a_cache_hit_is_the_cached_answer_under_its_own_request_id(client):
    params = {"user_id": "warm-4", "limit": 7, "explain": "true"}
    first = await client.get("/v1/recommendations", params=params)
    hit = await client.get("/v1/recommendations", params=params, headers={"X-Request-ID": "hit-request.1"})
    assert first.status_code == hit.status_code == 200, hit.text
    assert hit.headers["content-type"] == "application/json"
    assert int(hit.headers["content-length"]) == len(hit.content)
    fresh, cached = first.json(), hit.json()
    assert cached["request_id"] == hit.headers["X-Request-ID"] == "hit-request.1"
    assert {**cached, "request_id": fresh["request_id"]} == fresh
    assert list(cached) == list(fresh), "the same fields in the same order"
    assert cached["items"] and all("explanation" in item for item in cached["items"])
    # The cursor of a cached first page still leads to the second page.
    second = await client.get("/v1/recommendations", params={**params, "cursor": cached["next_cursor"]})
    assert second.status_code == 200, second.text
    assert second.json()["items"][0]["rank"] == 8


async def test_concurrent_first_uses_of_a_key_look_it_up_once(quiet_settings, key_lookups):
    async with running_app(quiet_settings) as application, http_client(application) as admin:
        reader = await create_key(admin, ["recommend:read"])
        async with http_client(application, reader["secret"]) as http:
            replies = await asyncio.gather(*(http.get("/v1/popular") for _ in range(10)))
    assert [reply.status_code for reply in replies] == [200] * 10
    assert len(key_lookups) == 1, key_lookups


async def test_a_revoked_key_stops_working_in_every_worker_within_the_cache_time(gateway_settings):
    """Two app instances on one database stand for two workers (or replicas): the one
    that revokes refuses the key at once, the other once its cached verification ends."""
    settings = gateway_settings.model_copy(update={"api_key_cache_seconds": 1.0})
    async with contextlib.AsyncExitStack() as stack:
        revoking = await stack.enter_async_context(running_app(settings))
        other = await stack.enter_async_context(running_app(settings))
        admin = await stack.enter_async_context(http_client(revoking))
        reader = await create_key(admin, ["recommend:read"])
        on_revoking = await stack.enter_async_context(http_client(revoking, reader["secret"]))
        on_other = await stack.enter_async_context(http_client(other, reader["secret"]))
        assert (await on_revoking.get("/v1/popular")).status_code == 200
        assert (await on_other.get("/v1/popular")).status_code == 200
        assert (await admin.delete(f"/admin/v1/api-keys/{reader['key_id']}")).status_code == 200
        assert_problem(await on_revoking.get("/v1/popular"), 401)
        await asyncio.sleep(settings.api_key_cache_seconds)
        assert_problem(await on_other.get("/v1/popular"), 401)


async def test_the_limits_count_in_one_trip_as_the_library_does(gateway_settings):
    """Both windows are counted by one script, each on its own (a request the user's
    window refuses still counts against its key), under the library's own keys: its
    stats give a 429 on a minute window a Retry-After of most of that minute."""
    settings = gateway_settings.model_copy(update={"rate_limit_per_key": "3/minute", "rate_limit_per_user": "1/minute"})
    async with running_app(settings) as application, http_client(application) as http:
        assert (await http.get("/v1/recommendations", params={"user_id": "warm-1"})).status_code == 200
        by_user = assert_problem(await http.get("/v1/recommendations", params={"user_id": "warm-1"}), 429)
        assert by_user["scope"] == "user"
        assert (await http.get("/v1/recommendations", params={"user_id": "warm-2"})).status_code == 200
        limited = await http.get("/v1/recommendations", params={"user_id": "warm-3"})
        assert assert_problem(limited, 429)["scope"] == "key"
        assert 30 < int(limited.headers["Retry-After"]) <= 60


def test_a_stored_entry_is_sent_as_stored_with_a_new_request_id():
    response = {"request_id": "first", "user_id": "u1", "items": [{"item_id": "m1", "score": 0.5}], "next_cursor": None}
    raw = encode_entry({"response": response, "tracks": {"ranking": "stable"}})
    assert orjson.loads(raw) == {"response": response, "tracks": {"ranking": "stable"}}
    entry = decode_entry(raw)
    assert entry["tracks"] == {"ranking": "stable"}
    hit = entry["response"]
    hit["request_id"] = "second"
    sent = JSONBody(hit).body
    assert sent == orjson.dumps({**response, "request_id": "second"})
    assert hit.rendered() == sent, "the stored bytes are reused, not serialised again"


def test_a_changed_answer_is_serialised_afresh():
    response = {"request_id": "first", "user_id": "u1", "items": []}
    hit = decode_entry(encode_entry({"response": response, "tracks": {}}))["response"]
    hit["items"] = [{"item_id": "m2"}]
    assert orjson.loads(JSONBody(hit).body) == {"request_id": "first", "user_id": "u1", "items": [{"item_id": "m2"}]}
    other = decode_entry(encode_entry({"response": response, "tracks": {}}))["response"]
    other.pop("items")
    assert orjson.loads(JSONBody(other).body) == {"request_id": "first", "user_id": "u1"}


def test_an_entry_in_the_earlier_layout_is_still_read():
    """Entries written before (response first) are plain JSON and serve as they are."""
    response = {"request_id": "first", "user_id": "u1", "items": []}
    entry = decode_entry(orjson.dumps({"response": response, "tracks": {"ranking": "canary"}}))
    assert entry == {"response": response, "tracks": {"ranking": "canary"}}
    entry["response"]["request_id"] = "second"
    assert orjson.loads(JSONBody(entry["response"]).body) == {**response, "request_id": "second"}

"""Canary routing through the gateway: sticky per-user tracks, the Recfleet-Tracks
header, refusal without a canary target, and shadow calls that leave responses alone."""

from __future__ import annotations

import pytest
from gateway_scripted_fleet import ScriptedFleet
from gateway_test_support import http_client, running_app


@pytest.fixture
async def canary_fleet():
    scripted = ScriptedFleet(ranking_canary=True)
    await scripted.start()
    yield scripted
    await scripted.stop()


@pytest.fixture
async def canary_client(canary_fleet, gateway_settings):
    settings = gateway_settings.model_copy(update=canary_fleet.settings_overrides())
    async with running_app(settings) as application, http_client(application) as http:
        yield http


def ranking_track(reply) -> str:
    tracks = dict(part.strip().split("=") for part in reply.headers["Recfleet-Tracks"].split(","))
    return tracks["ranking"]


async def tracks_of(client, users) -> dict[str, str]:
    found = {}
    for user in users:
        reply = await client.get("/v1/recommendations", params={"user_id": user, "limit": 3})
        assert reply.status_code == 200, reply.text
        found[user] = ranking_track(reply)
    return found


async def test_weight_routes_a_sticky_share_of_users_to_the_canary(canary_client, canary_fleet):
    users = [f"warm-c{i}" for i in range(120)]
    assert set((await tracks_of(canary_client, users[:20])).values()) == {"stable"}
    reply = await canary_client.put("/admin/v1/traffic/ranking", json={"weight": 30, "shadow_percent": 0})
    assert reply.status_code == 200, reply.text
    first = await tracks_of(canary_client, users)
    on_canary = {u for u, t in first.items() if t == "canary"}
    assert 15 <= len(on_canary) <= 60  # 30% of 120, with room for chance
    assert canary_fleet.ranking_canary.servicer.requests
    # Repeats (served from the cache) keep naming the same track.
    assert await tracks_of(canary_client, users[:30]) == {u: first[u] for u in users[:30]}
    await canary_client.put("/admin/v1/traffic/ranking", json={"weight": 60, "shadow_percent": 0})
    raised = await tracks_of(canary_client, users)
    assert on_canary <= {u for u, t in raised.items() if t == "canary"}


async def test_weight_without_a_canary_target_is_409(canary_client):
    reply = await canary_client.put("/admin/v1/traffic/feature-store", json={"weight": 10, "shadow_percent": 0})
    assert reply.status_code == 409
    assert "canary" in reply.json()["detail"]


async def test_shadow_mirrors_without_changing_responses(canary_client, canary_fleet, redis_url):
    import redis

    users = [f"warm-s{i}" for i in range(10)]

    async def lists():
        redis.Redis.from_url(redis_url).flushdb()
        out = {}
        for user in users:
            body = (await canary_client.get("/v1/recommendations", params={"user_id": user, "limit": 5})).json()
            out[user] = [item["item_id"] for item in body["items"]]
        return out

    before = await lists()
    await canary_client.put("/admin/v1/traffic/ranking", json={"weight": 0, "shadow_percent": 100})
    during = await lists()
    assert before == during
    metrics = (await canary_client.get("/metrics")).text
    assert 'recfleet_gateway_shadow_requests_total{outcome="ok",service="ranking"}' in metrics
    assert len(canary_fleet.ranking_canary.servicer.requests) >= 1


async def test_a_down_canary_does_not_make_the_gateway_unready(canary_client, canary_fleet):
    await canary_fleet.ranking_canary.stop()
    reply = await canary_client.get("/healthz/ready")
    assert reply.status_code == 200, reply.text
    assert reply.json()["not_serving"] == ["ranking:canary"]
    await canary_fleet.ranking.stop()
    assert (await canary_client.get("/healthz/ready")).status_code == 503

"""Canary routing through the gateway: sticky per-user tracks, the Recfleet-Tracks
header, refusal without a canary target, and shadow calls that leave responses alone."""

from __future__ import annotations

import asyncio

import pytest
from gateway_scripted_fleet import ScriptedFleet
from gateway_test_support import assert_problem, http_client, metrics_text, running_app


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
    metrics = metrics_text()
    assert 'recfleet_gateway_shadow_requests_total{outcome="ok",service="ranking"}' in metrics
    assert len(canary_fleet.ranking_canary.servicer.requests) >= 1


async def test_a_down_canary_does_not_make_the_gateway_unready(canary_client, canary_fleet):
    await canary_fleet.ranking_canary.stop()
    reply = await canary_client.get("/healthz/ready")
    assert reply.status_code == 200, reply.text
    assert reply.json()["not_serving"] == ["ranking:canary"]
    # Not even the stable track makes it unready: its requests get degraded answers.
    await canary_fleet.ranking.stop()
    reply = await canary_client.get("/healthz/ready")
    assert reply.status_code == 200, reply.text
    assert set(reply.json()["not_serving"]) == {"ranking", "ranking:canary"}


@pytest.fixture
async def read_canaries(gateway_settings):
    scripted = ScriptedFleet(canaries=("candidate-gen", "feature-store", "event-ingest"))
    await scripted.start()
    settings = gateway_settings.model_copy(update=scripted.settings_overrides())
    async with running_app(settings) as application, http_client(application) as http:
        yield scripted, http
    await scripted.stop()


def sample(metrics: str, name: str, service: str) -> float:
    prefix = f'{name}{{service="{service}"}} '
    return float(next(line[len(prefix) :] for line in metrics.splitlines() if line.startswith(prefix)))


async def test_shard_and_feature_reads_are_mirrored_and_compared(read_canaries, redis_url):
    import redis

    scripted, http = read_canaries
    users = [f"warm-m{i}" for i in range(8)]

    async def lists():
        redis.Redis.from_url(redis_url).flushdb()
        out = {}
        for user in users:
            reply = await http.get("/v1/recommendations", params={"user_id": user, "limit": 5})
            assert reply.status_code == 200, reply.text
            out[user] = [item["item_id"] for item in reply.json()["items"]]
        return out

    before = await lists()
    assert all(not shard.servicer.calls for shard in scripted.shard_canaries)
    for service in ("candidate-gen", "feature-store"):
        reply = await http.put(f"/admin/v1/traffic/{service}", json={"weight": 0, "shadow_percent": 100})
        assert reply.status_code == 200, reply.text
    during = await lists()
    assert before == during  # responses never depend on the mirrored calls
    await asyncio.sleep(0.2)  # mirrored calls finish in the background
    for canary in scripted.shard_canaries:
        assert canary.servicer.calls.count("Retrieve") == len(users)
    assert scripted.features_canary.servicer.calls.count("GetUserFeatures") == len(users)
    metrics = metrics_text()
    for service in ("candidate-gen", "feature-store"):
        assert f'recfleet_gateway_shadow_requests_total{{outcome="ok",service="{service}"}}' in metrics
        # The canaries answer exactly as the stable instances: full agreement every time.
        count = sample(metrics, "recfleet_gateway_shadow_overlap_ratio_count", service)
        total = sample(metrics, "recfleet_gateway_shadow_overlap_ratio_sum", service)
        assert count >= len(users) and total == count


async def test_writes_are_never_mirrored(read_canaries):
    scripted, http = read_canaries
    reply = await http.put("/admin/v1/traffic/event-ingest", json={"weight": 0, "shadow_percent": 10})
    problem = assert_problem(reply, 400)
    assert problem["errors"] == [{"field": "body.shadow_percent", "message": "must be 0 for event-ingest"}]
    # A weight is fine: the canary takes a share of the writes instead of a copy of them.
    assert (
        await http.put("/admin/v1/traffic/event-ingest", json={"weight": 50, "shadow_percent": 0})
    ).status_code == 200
    events = [{"user_id": f"writer-{i}", "item_id": "m1", "type": "click"} for i in range(40)]
    for event in events:
        assert (await http.post("/v1/events", json={"events": [event]})).status_code == 202
    stable = [e.user_id for e in scripted.ingest.servicer.events]
    canary = [e.user_id for e in scripted.ingest_canary.servicer.events]
    assert sorted(stable + canary) == sorted(e["user_id"] for e in events)  # each stored once
    assert stable and canary

"""`GET /admin/v1/fleet` (every downstream service and track: health, breakers, recent
call failures) and `GET /admin/v1/items` (catalog titles by id), the admin routes the
operator console draws its fleet page and item titles from, through REST against the
scripted fleet on real gRPC servers."""

from __future__ import annotations

import grpc
import pytest
from gateway_test_support import assert_problem, http_client, running_app


@pytest.fixture
async def gateway(canary_fleet, gateway_settings):
    settings = gateway_settings.model_copy(update=canary_fleet.settings_overrides())
    async with running_app(settings) as application:
        yield application


@pytest.fixture
async def admin(gateway):
    async with http_client(gateway) as http:
        yield http


def service(status: dict, name: str) -> dict:
    return next(s for s in status["services"] if s["service"] == name)


def track(status: dict, name: str, which: str) -> dict:
    return next(t for t in service(status, name)["tracks"] if t["track"] == which)


async def test_the_fleet_lists_every_service_and_track_with_health(admin, canary_fleet):
    reply = await admin.get("/admin/v1/fleet")
    assert reply.status_code == 200, reply.text
    status = reply.json()
    assert [s["service"] for s in status["services"]] == ["candidate-gen", "ranking", "feature-store", "event-ingest"]
    assert [t["track"] for t in service(status, "ranking")["tracks"]] == ["stable", "canary"]
    assert [t["track"] for t in service(status, "feature-store")["tracks"]] == ["stable"]
    shards = track(status, "candidate-gen", "stable")["endpoints"]
    assert [e["name"] for e in shards] == ["candidate-gen-shard-0", "candidate-gen-shard-1"]
    endpoints = [e for s in status["services"] for t in s["tracks"] for e in t["endpoints"]]
    assert all(e["serving"] and e["breaker"] == "closed" for e in endpoints)
    assert track(status, "ranking", "canary")["endpoints"][0]["target"] == canary_fleet.ranking_canary.target
    assert status["window_seconds"] > 0

    await canary_fleet.ranking_canary.stop()
    canary = track((await admin.get("/admin/v1/fleet")).json(), "ranking", "canary")
    assert canary["endpoints"][0]["serving"] is False
    assert track((await admin.get("/admin/v1/fleet")).json(), "ranking", "stable")["endpoints"][0]["serving"]


async def test_failed_calls_show_as_recent_failures_of_their_track(admin, canary_fleet):
    before = track((await admin.get("/admin/v1/fleet")).json(), "ranking", "stable")["recent"]
    canary_fleet.ranking.servicer.failing = grpc.StatusCode.UNAVAILABLE
    for n in range(3):
        reply = await admin.get("/v1/recommendations", params={"user_id": f"warm-fleet-{n}", "limit": 5})
        assert reply.status_code == 200
        assert reply.json()["served_by"] == "popular"
    canary_fleet.ranking.servicer.failing = None
    status = (await admin.get("/admin/v1/fleet")).json()
    recent = track(status, "ranking", "stable")["recent"]
    assert recent["errors"] >= before["errors"] + 3
    assert recent["requests"] >= recent["errors"] > 0
    assert 0 < recent["error_rate"] <= 1
    assert track(status, "ranking", "canary")["recent"]["errors"] == 0


async def test_the_fleet_needs_the_admin_scope(admin, gateway):
    async with http_client(gateway, None) as anonymous:
        assert_problem(await anonymous.get("/admin/v1/fleet"), 401)
    created = await admin.post("/admin/v1/api-keys", json={"name": "reader", "scopes": ["recommend:read"]})
    async with http_client(gateway, created.json()["secret"]) as reader:
        assert_problem(await reader.get("/admin/v1/fleet"), 403)
        assert_problem(await reader.get("/admin/v1/items", params={"item_id": "m1"}), 403)


async def test_items_answers_catalog_attributes_in_request_order(admin):
    reply = await admin.get("/admin/v1/items", params=[("item_id", "m2"), ("item_id", "unknown"), ("item_id", "m1")])
    assert reply.status_code == 200, reply.text
    items = reply.json()["items"]
    assert [i["item_id"] for i in items] == ["m2", "unknown", "m1"]
    # The scripted feature store keeps categories only; a missing attribute is its default.
    assert items[0] == {"item_id": "m2", "title": "", "categories": ["action"], "creator": ""}
    assert items[1] == {"item_id": "unknown", "title": "", "categories": [], "creator": ""}


async def test_items_refuses_bad_or_too_many_ids(admin):
    assert_problem(await admin.get("/admin/v1/items"), 400)
    assert_problem(await admin.get("/admin/v1/items", params={"item_id": "not an id"}), 400)
    many = [("item_id", f"m{n}") for n in range(101)]
    assert_problem(await admin.get("/admin/v1/items", params=many), 400)


async def test_items_is_503_while_the_feature_store_is_down(admin, canary_fleet):
    canary_fleet.features.servicer.failing = grpc.StatusCode.UNAVAILABLE
    reply = await admin.get("/admin/v1/items", params={"item_id": "m1"})
    canary_fleet.features.servicer.failing = None
    body = assert_problem(reply, 503)
    assert "feature store" in body["detail"]
    assert reply.headers["Retry-After"] == "1"

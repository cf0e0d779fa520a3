"""Events, catalog, profiles, export, erasure and the admin API through REST."""

from __future__ import annotations

import asyncio

import grpc
import psycopg
import redis
from gateway_test_support import assert_problem
from recfleet_store import keys, registry


async def wait_for(client, path: str, done, timeout: float = 10.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        body = (await client.get(path)).json()
        if done(body) or asyncio.get_running_loop().time() > deadline:
            return body
        await asyncio.sleep(0.05)


async def test_events_202_with_what_event_ingest_refused_per_index(client, fleet):
    events = [
        {"user_id": "u1", "item_id": "m1", "type": "click", "timestamp": "2026-11-23T10:00:00Z", "context": {"a": 1}},
        {"user_id": "u1", "item_id": "unknown-7", "type": "view"},
        {"user_id": "u3", "item_id": "m5", "type": "purchase", "value": 9.99},
    ]
    reply = await client.post("/v1/events", json={"events": events})
    assert reply.status_code == 202, reply.text
    body = reply.json()
    assert body["accepted"] == 2
    assert body["rejected"] == [{"index": 1, "error": "item_id: unknown item"}]
    sent = fleet.ingest.servicer.events
    assert [(e.user_id, e.item_id) for e in sent] == [("u1", "m1"), ("u3", "m5")]
    assert sent[0].context["a"] == 1 and sent[0].timestamp.seconds > 0
    assert sent[1].value == 9.99


async def test_events_all_refused_by_event_ingest_is_400_naming_each(client, fleet):
    reply = await client.post(
        "/v1/events", json={"events": [{"user_id": "u1", "item_id": "unknown-1", "type": "view"}]}
    )
    body = assert_problem(reply, 400)
    assert body["errors"] == [{"field": "body.events[0]", "message": "item_id: unknown item"}]


async def test_events_breaking_the_schema_refuse_the_batch_naming_every_field(client, fleet):
    events = [
        {"user_id": "u1", "item_id": "m1", "type": "click"},
        {"user_id": "u1", "item_id": "m2", "type": "teleport"},
        {"user_id": "u 2", "item_id": "m3", "type": "view"},
        {"user_id": "u2", "item_id": "m3", "type": "rating", "value": 4.5, "event_id": "not-a-uuid"},
        {"user_id": "u2", "item_id": "m4", "type": "like", "timestamp": "2026-11-23T10:00:00"},
        {"user_id": "u2", "item_id": "m4", "type": "rating"},
        {"user_id": "u2", "item_id": "m4", "type": "view", "value": True},
    ]
    body = assert_problem(await client.post("/v1/events", json={"events": events}), 400)
    assert [e["field"] for e in body["errors"]] == [
        "body.events[1]",
        "body.events[2].event.user_id",
        "body.events[3].rating.event_id",
        "body.events[4].event.timestamp",
        "body.events[5].rating.value",
        "body.events[6].event.value",
    ]
    assert "offset" in body["errors"][3]["message"]
    assert fleet.ingest.servicer.events == []


async def test_events_batch_limits(client):
    assert_problem(await client.post("/v1/events", json={"events": []}), 400)
    many = [{"user_id": "u1", "item_id": "m1", "type": "view"}] * 501
    assert_problem(await client.post("/v1/events", json={"events": many}), 400)


async def test_events_ingest_unavailable_is_503_with_retry_after(client, fleet):
    fleet.ingest.servicer.failing = grpc.StatusCode.UNAVAILABLE
    reply = await client.post("/v1/events", json={"events": [{"user_id": "u1", "item_id": "m1", "type": "view"}]})
    assert_problem(reply, 503)
    assert int(reply.headers["Retry-After"]) >= 1


async def test_catalog_upserts(client, fleet):
    reply = await client.put(
        "/v1/items/new-9",
        json={
            "title": "New",
            "categories": ["drama", "indie"],
            "published_at": "2026-01-02T03:04:05Z",
            "age_rating": 16,
            "regions": ["DE", "FR"],
        },
    )
    assert reply.json() == {"upserted": 1, "created": 1}
    stored = fleet.features.servicer.items["new-9"]
    assert list(stored.categories) == ["drama", "indie"] and stored.age_rating == 16 and stored.available
    batch = await client.post("/v1/items:batch", json={"items": [{"item_id": "new-9"}, {"item_id": "new-10"}]})
    assert batch.json() == {"upserted": 2, "created": 1}
    assert_problem(await client.put("/v1/items/x", json={"regions": ["germany"]}), 400)


async def test_profile_and_export(client, fleet, pg_dsn):
    put = await client.put(
        "/v1/users/exp-1/profile",
        json={"preferred_categories": ["drama"], "blocked_categories": ["action"], "age": 15, "country": "DE"},
    )
    assert put.json() == {
        "user_id": "exp-1",
        "preferred_categories": ["drama"],
        "blocked_categories": ["action"],
        "liked_items": [],
        "age": 15,
        "country": "DE",
    }
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO events (event_id, user_id, item_id, type, ts)"
            " VALUES (gen_random_uuid(), 'exp-1', 'm1', 'view', now())"
        )
    export = (await client.get("/v1/users/exp-1/export")).json()
    assert export["feature_store"]["profile"]["age"] == 15
    assert [(e["item_id"], e["type"]) for e in export["events"]] == [("m1", "view")]


async def test_erasure_receipt_flow(app, client, fleet, redis_url):
    await client.post("/v1/events", json={"events": [{"user_id": "gone-1", "item_id": "m1", "type": "view"}]})
    await client.get("/v1/recommendations", params={"user_id": "gone-1"})
    assert redis.Redis.from_url(redis_url).exists(keys.result_cache("gone-1"))
    reply = await client.delete("/v1/users/gone-1")
    assert reply.status_code == 202
    receipt = reply.json()
    assert receipt["status"] in ("pending", "completed")
    assert reply.headers["Location"] == f"/v1/erasures/{receipt['receipt_id']}"
    done = await wait_for(client, f"/v1/erasures/{receipt['receipt_id']}", lambda b: b["status"] != "pending")
    assert done["status"] == "completed" and done["completed_at"]
    assert done["stores"]["event-ingest"] == {"state": "done", "events_removed": 1, "tombstone_written": True}
    assert done["stores"]["feature-store"]["state"] == "done"
    assert done["stores"]["gateway"]["state"] == "done"
    assert fleet.ingest.servicer.erased == ["gone-1"] and fleet.features.servicer.erased == ["gone-1"]
    assert not redis.Redis.from_url(redis_url).exists(keys.result_cache("gone-1"))
    assert not list(redis.Redis.from_url(redis_url).scan_iter("*gone-1*"))


async def test_erasure_that_keeps_failing_is_reported(app, client, fleet):
    app.state.gateway.erasures.retry_pause = 0.01
    fleet.features.servicer.failing = grpc.StatusCode.UNAVAILABLE
    receipt = (await client.delete("/v1/users/gone-2")).json()
    done = await wait_for(client, f"/v1/erasures/{receipt['receipt_id']}", lambda b: b["status"] != "pending")
    assert done["status"] == "failed" and done["completed_at"] is None
    assert done["stores"]["feature-store"]["state"] == "failed"
    assert done["stores"]["event-ingest"]["state"] == "done"
    assert_problem(await client.get("/v1/erasures/er_unknown"), 404)


async def test_models_list_promote_rollback(client, pg_dsn, redis_url):
    with psycopg.connect(pg_dsn) as conn:
        for version in ("als-20260101T000000Z-t1", "als-20260102T000000Z-t2"):
            registry.register_version(conn, version, "als", f"models/als/{version}/", {}, {})
            registry.record_index(
                conn, version, shard_count=2, index_type="flat", dimension=4, item_count=60, built_at="2026-01-02"
            )
    first = await client.post("/admin/v1/models/als/promote", json={"version": "als-20260101T000000Z-t1"})
    assert first.status_code == 200, first.text
    second = (await client.post("/admin/v1/models/als/promote", json={"version": "als-20260102T000000Z-t2"})).json()
    assert second == {
        "kind": "als",
        "serving": "als-20260102T000000Z-t2",
        "previous": "als-20260101T000000Z-t1",
        "forced": False,
        "overridden": [],
    }
    listed = (await client.get("/admin/v1/models")).json()
    assert listed["serving"]["als"] == "als-20260102T000000Z-t2"
    assert redis.Redis.from_url(redis_url).get(keys.SERVING_VERSION) == b"als-20260102T000000Z-t2"
    back = (await client.post("/admin/v1/models/als/rollback")).json()
    assert back["serving"] == "als-20260101T000000Z-t1"
    assert_problem(await client.post("/admin/v1/models/als/promote", json={"version": "als-nope"}), 404)
    assert_problem(await client.post("/admin/v1/models/ranker/rollback"), 409)
    assert_problem(await client.post("/admin/v1/models/svd/rollback"), 400)


async def test_jobs_run_and_report(client):
    started = await client.post("/admin/v1/jobs/popularity")
    assert started.status_code == 202
    job = started.json()
    done = await wait_for(client, f"/admin/v1/jobs/{job['job_id']}", lambda b: b["status"] in ("succeeded", "failed"))
    assert done["status"] == "succeeded"
    assert "ran job popularity" in done["output"]
    assert_problem(await client.post("/admin/v1/jobs/rm-rf"), 400)
    assert_problem(await client.get("/admin/v1/jobs/job_unknown"), 404)


async def test_a_job_already_running_is_409(gateway_settings):
    import sys

    from gateway_test_support import http_client, running_app

    slow = [sys.executable, "-c", "import sys, time; time.sleep(1); print('ran job', sys.argv[1])"]
    settings = gateway_settings.model_copy(update={"jobs_command": slow})
    async with running_app(settings) as application, http_client(application) as http:
        first = (await http.post("/admin/v1/jobs/materialize")).json()
        second = await http.post("/admin/v1/jobs/materialize")
        assert assert_problem(second, 409)["job_id"] == first["job_id"]
        await wait_for(http, f"/admin/v1/jobs/{first['job_id']}", lambda b: b["status"] == "succeeded")
        assert (await http.post("/admin/v1/jobs/materialize")).status_code == 202


VALID_EXPERIMENT = {"name": "exp-types", "variants": [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5}]}


async def test_bodies_that_break_the_published_schema_are_refused_not_coerced(client):
    """A boolean where the schema says integer (or an integer where it says boolean) is a
    400 naming the field: before, `"available": 0` was stored as false and `"age": false`
    as no age."""
    cases = [
        ("PUT", "/v1/items/typed-1", {"title": "T", "available": 0}, "body.available"),
        ("POST", "/v1/items:batch", {"items": [{"item_id": "typed-2", "available": 1}]}, "body.items[0].available"),
        ("PUT", "/v1/users/typed-user/profile", {"age": False}, "body.age"),
        ("PUT", "/admin/v1/traffic/ranking", {"weight": 0, "shadow_percent": False}, "body.shadow_percent"),
        ("PUT", "/admin/v1/traffic/ranking", {"weight": True}, "body.weight"),
        (
            "POST",
            "/admin/v1/experiments",
            {**VALID_EXPERIMENT, "variants": VALID_EXPERIMENT["variants"][:1]},
            "body.variants",
        ),
        ("POST", "/admin/v1/experiments", {**VALID_EXPERIMENT, "name": "has space"}, "body.name"),
        (
            "POST",
            "/admin/v1/experiments",
            {**VALID_EXPERIMENT, "variants": [{"name": "a", "share": True}, {"name": "b", "share": 0.5}]},
            "body.variants[0].share",
        ),
    ]
    for method, path, body, field in cases:
        problem = assert_problem(await client.request(method, path, json=body), 400)
        assert field in [error["field"] for error in problem["errors"]], (path, body, problem)


async def test_the_published_schema_states_what_the_code_checks(anonymous):
    schemas = (await anonymous.get("/openapi.json")).json()["components"]["schemas"]
    experiment, variant = schemas["ExperimentIn"]["properties"], schemas["VariantIn"]["properties"]
    assert experiment["name"]["pattern"] == r"^[A-Za-z0-9_.:\-]{1,64}$"
    assert (experiment["variants"]["minItems"], experiment["variants"]["maxItems"]) == (2, 10)
    assert (variant["share"]["exclusiveMinimum"], variant["share"]["maximum"]) == (0, 1)
    assert experiment["salt"]["anyOf"][0]["maxLength"] == 128

"""API keys that expire and rotate, and disabling the bootstrap admin key, through REST:
expiry is honoured even by a process that cached the key, rotation keeps the old key for
its overlap only, and the bootstrap key stays disabled for every process and restart."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import pytest
from gateway_test_support import assert_problem, http_client, running_app
from recfleet_gateway.rest.auth import LOOKUP_SECONDS


@pytest.fixture
def pg_dsn(fresh_pg_dsn):
    """A database per test: disabling the bootstrap key must not reach other tests."""
    return fresh_pg_dsn


@pytest.fixture
def gateway_settings(gateway_settings):
    # Long enough that only the stored expiry can end a key within a test.
    return gateway_settings.model_copy(update={"api_key_cache_seconds": 60.0})


async def create(client, **body) -> dict:
    reply = await client.post("/admin/v1/api-keys", json={"name": "k", "scopes": ["recommend:read"], **body})
    assert reply.status_code == 201, reply.text
    return reply.json()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def wait_until(moment: str) -> None:
    await asyncio.sleep(max(0.0, (at(moment) - datetime.now(UTC)).total_seconds()) + 0.05)


async def listed(client, key_id: str) -> dict:
    keys = (await client.get("/admin/v1/api-keys")).json()["keys"]
    return next(k for k in keys if k["key_id"] == key_id)


async def test_expiry_must_be_in_the_future_and_given_once(client):
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    invalid = [
        ({"expires_at": past}, "body.expires_at"),
        ({"expires_at": "2099-01-01T00:00:00"}, "body.expires_at"),  # no offset: not RFC 3339
        ({"expires_at": "tomorrow"}, "body.expires_at"),
        ({"ttl_seconds": 0}, "body.ttl_seconds"),
        ({"ttl_seconds": "60"}, "body.ttl_seconds"),
        ({"ttl_seconds": 60, "expires_at": future}, "body"),
    ]
    for body, field in invalid:
        reply = await client.post("/admin/v1/api-keys", json={"name": "k", "scopes": ["admin"], **body})
        problem = assert_problem(reply, 400)
        assert field in [e["field"] for e in problem["errors"]], (body, problem)
    dated = await create(client, expires_at=future)
    assert at(dated["expires_at"]) == at(future) and dated["status"] == "active"
    forever = await create(client)
    assert forever["expires_at"] is None and forever["rotated_to"] is None


async def test_an_expired_key_is_refused_saying_so_even_where_it_was_cached(app, client):
    key = await create(client, ttl_seconds=1)
    async with http_client(app, key["secret"]) as http:
        assert (await http.get("/v1/popular")).status_code == 200
        await wait_until(key["expires_at"])
        problem = assert_problem(await http.get("/v1/popular"), 401)
    assert "expired" in problem["detail"]
    assert (await listed(client, key["key_id"]))["status"] == "expired"


async def test_rotation_keeps_the_old_key_for_the_overlap_then_only_the_new_one(app, client):
    old = await create(client, name="web", scopes=["recommend:read", "events:write"])
    async with http_client(app, old["secret"]) as on_old:
        assert (await on_old.get("/v1/popular")).status_code == 200  # cached from here on
        reply = await client.post(f"/admin/v1/api-keys/{old['key_id']}/rotate", json={"overlap_seconds": 1})
        assert reply.status_code == 201, reply.text
        new = reply.json()
        assert new["key_id"] != old["key_id"] and new["secret"].startswith("rfk_")
        assert (new["name"], new["scopes"], new["expires_at"]) == ("web", old["scopes"], None)
        assert new["previous"]["key_id"] == old["key_id"] and new["previous"]["rotated_to"] == new["key_id"]
        shown = await listed(client, old["key_id"])
        assert shown["rotated_to"] == new["key_id"] and shown["expires_at"] == new["previous"]["expires_at"]
        assert "secret" not in shown

        async with http_client(app, new["secret"]) as on_new:
            assert (await on_old.get("/v1/popular")).status_code == 200, "the overlap"
            assert (await on_new.get("/v1/popular")).status_code == 200
            await wait_until(shown["expires_at"])
            assert "expired" in assert_problem(await on_old.get("/v1/popular"), 401)["detail"]
            assert (await on_new.get("/v1/popular")).status_code == 200
    assert_problem(await client.post(f"/admin/v1/api-keys/{old['key_id']}/rotate"), 409)


async def test_rotation_never_lengthens_a_key_and_refuses_what_cannot_rotate(client):
    short = await create(client, ttl_seconds=120)
    reply = await client.post(f"/admin/v1/api-keys/{short['key_id']}/rotate", json={"ttl_seconds": 3600})
    assert reply.status_code == 201, reply.text
    assert reply.json()["previous"]["expires_at"] == short["expires_at"], "an earlier expiry stays"
    assert reply.json()["expires_at"] is not None, "the new key's own expiry"

    default = await create(client)
    before = datetime.now(UTC)
    reply = await client.post(f"/admin/v1/api-keys/{default['key_id']}/rotate")
    expires = at(reply.json()["previous"]["expires_at"])
    assert before + timedelta(minutes=59) < expires < before + timedelta(minutes=61), "an hour by default"
    twice = assert_problem(await client.post(f"/admin/v1/api-keys/{default['key_id']}/rotate"), 409)
    assert reply.json()["key_id"] in twice["detail"]

    revoked = await create(client)
    await client.delete(f"/admin/v1/api-keys/{revoked['key_id']}")
    assert (
        "revoked" in assert_problem(await client.post(f"/admin/v1/api-keys/{revoked['key_id']}/rotate"), 409)["detail"]
    )
    assert_problem(await client.post("/admin/v1/api-keys/key_missing/rotate"), 404)
    assert_problem(await client.post("/admin/v1/api-keys/bootstrap/rotate"), 404)
    for overlap in (-1, 604_801, "60", True):
        problem = assert_problem(
            await client.post(f"/admin/v1/api-keys/{short['key_id']}/rotate", json={"overlap_seconds": overlap}), 400
        )
        assert problem["errors"][0]["field"] == "body.overlap_seconds"


async def test_the_bootstrap_key_can_be_disabled_once_another_admin_key_exists(app, client):
    refused = assert_problem(await client.post("/admin/v1/api-keys/bootstrap/disable"), 409)
    assert "admin" in refused["detail"]
    await create(client, scopes=["recommend:read", "users:admin"])
    expired_admin = await create(client, scopes=["admin"], ttl_seconds=1)
    await wait_until(expired_admin["expires_at"])
    assert_problem(await client.post("/admin/v1/api-keys/bootstrap/disable"), 409)

    admin = await create(client, name="ops", scopes=["admin"])
    disabled = await client.post("/admin/v1/api-keys/bootstrap/disable")
    assert disabled.status_code == 200, disabled.text
    assert disabled.json()["disabled"] is True and disabled.json()["disabled_by"] == "bootstrap"
    problem = assert_problem(await client.get("/admin/v1/api-keys"), 401)
    assert "bootstrap key disabled" in problem["detail"]

    async with http_client(app, admin["secret"]) as ops:
        state = (await ops.get("/admin/v1/api-keys/bootstrap")).json()
        assert state["disabled"] is True and state["disabled_at"]
        audited = (await ops.get("/admin/v1/audit", params={"action": "bootstrap_key.disable"})).json()["entries"]
        assert [(e["key_id"], e["request_id"]) for e in audited] == [("bootstrap", disabled.headers["X-Request-ID"])]
        assert (audited[0]["before"]["disabled"], audited[0]["after"]["disabled"]) == (False, True)
        # The last admin key that lets anyone in cannot be revoked now.
        assert_problem(await ops.delete(f"/admin/v1/api-keys/{admin['key_id']}"), 409)


async def test_a_disabled_bootstrap_key_stays_disabled_in_other_processes_and_after_a_restart(gateway_settings):
    settings = gateway_settings.model_copy(update={"api_key_cache_seconds": 1.0})
    async with contextlib.AsyncExitStack() as stack:
        disabling = await stack.enter_async_context(running_app(settings))
        other = await stack.enter_async_context(running_app(settings))
        on_disabling = await stack.enter_async_context(http_client(disabling))
        on_other = await stack.enter_async_context(http_client(other))
        assert (await on_other.get("/admin/v1/api-keys")).status_code == 200  # cached there
        admin = await create(on_disabling, scopes=["admin"])
        assert (await on_disabling.post("/admin/v1/api-keys/bootstrap/disable")).status_code == 200
        assert_problem(await on_disabling.get("/admin/v1/api-keys"), 401)
        await asyncio.sleep(settings.api_key_cache_seconds)
        assert_problem(await on_other.get("/admin/v1/api-keys"), 401)

    async with running_app(settings) as restarted:
        async with http_client(restarted) as bootstrap:
            assert "bootstrap key disabled" in assert_problem(await bootstrap.get("/v1/popular"), 401)["detail"]
        async with http_client(restarted, admin["secret"]) as ops:
            enabled = await ops.post("/admin/v1/api-keys/bootstrap/enable")
            assert enabled.status_code == 200 and enabled.json()["disabled"] is False
        async with http_client(restarted) as bootstrap:
            assert (await bootstrap.get("/v1/popular")).status_code == 200


async def test_a_hung_postgres_never_holds_the_requests_of_a_known_key(gateway_settings, cuttable_pg_dsn):
    """Postgres frozen (connections open, no answers): a key this process verified before
    is answered from its cache once a lookup gave up, instead of every request waiting on
    a query that never returns."""
    settings = gateway_settings.model_copy(update={"postgres_dsn": cuttable_pg_dsn.dsn, "api_key_cache_seconds": 0.2})
    async with running_app(settings) as application:
        async with http_client(application) as admin:
            created = await admin.post("/admin/v1/api-keys", json={"name": "reader", "scopes": ["recommend:read"]})
        async with http_client(application, created.json()["secret"]) as reader:
            assert (await reader.get("/v1/popular", params={"limit": 3})).status_code == 200
            cuttable_pg_dsn.freeze()
            await asyncio.sleep(0.3)  # the key's cache entry is stale now
            for _ in range(3):
                # Generous: the first request waits for one lookup to give up, no more.
                reply = await asyncio.wait_for(reader.get("/v1/popular", params={"limit": 3}), LOOKUP_SECONDS + 5)
                assert reply.status_code == 200, reply.text
        cuttable_pg_dsn.cut()  # the app's shutdown must not wait on frozen connections

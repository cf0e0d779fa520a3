"""The audit log through REST and `recfleetctl audit`: every admin action that succeeded,
with its key, request id and the state before and after; never a secret; filters and
paging; a write that fails leaves the action's answer alone and is counted."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from gateway_scripted_fleet import ScriptedFleet
from gateway_test_support import ADMIN_KEY, assert_problem, http_client, recfleetctl
from prometheus_client import REGISTRY
from recfleet_gateway.rest.auth import hash_key
from recfleet_store import registry


@pytest.fixture
def pg_dsn(fresh_pg_dsn):
    """A database per test: these tests change models and bootstrap state, and count
    entries."""
    return fresh_pg_dsn


@pytest.fixture
async def fleet():
    scripted = ScriptedFleet(ranking_canary=True)
    await scripted.start()
    yield scripted
    await scripted.stop()


async def new_admin(client, scopes=("admin",)) -> dict:
    reply = await client.post("/admin/v1/api-keys", json={"name": "operator", "scopes": list(scopes)})
    assert reply.status_code == 201, reply.text
    return reply.json()


async def entries(client, **params) -> list[dict]:
    reply = await client.get("/admin/v1/audit", params=params)
    assert reply.status_code == 200, reply.text
    return reply.json()["entries"]


async def test_every_admin_action_is_recorded_with_key_request_and_states(app, client, pg_dsn):
    operator = await new_admin(client, ("admin", "users:admin"))
    with psycopg.connect(pg_dsn) as conn:
        for version in ("ranker-20260101T000000Z-a", "ranker-20260102T000000Z-b"):
            registry.register_version(conn, version, "ranker", f"models/ranker/{version}/", {}, {})
    experiment = {"name": "audited", "variants": [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5}]}
    async with http_client(app, operator["secret"]) as http:
        calls = [
            ("PUT", "/admin/v1/traffic/ranking", {"weight": 30, "shadow_percent": 10}),
            ("POST", "/admin/v1/rollback/ranking", {"reason": "looks wrong"}),
            ("POST", "/admin/v1/traffic/ranking/ack", None),
            ("POST", "/admin/v1/models/ranker/promote", {"version": "ranker-20260101T000000Z-a"}),
            ("POST", "/admin/v1/models/ranker/promote", {"version": "ranker-20260102T000000Z-b"}),
            ("POST", "/admin/v1/models/ranker/rollback", None),
            ("POST", "/admin/v1/jobs/popularity", None),
            ("POST", "/admin/v1/api-keys", {"name": "web", "scopes": ["recommend:read"], "ttl_seconds": 600}),
            ("POST", "/admin/v1/experiments", experiment),
            ("POST", "/admin/v1/experiments/audited/stop", None),
            ("DELETE", "/admin/v1/cache/audit-user", None),
            ("DELETE", "/v1/users/audit-user", None),
        ]
        answers = []
        for number, (method, path, body) in enumerate(calls):
            reply = await http.request(method, path, json=body, headers={"X-Request-ID": f"audit-{number}"})
            assert reply.status_code < 300, (path, reply.text)
            answers.append(reply.json())
        web = answers[7]
        rotated = await http.post(
            f"/admin/v1/api-keys/{web['key_id']}/rotate", json={"overlap_seconds": 60}, headers={"X-Request-ID": "r"}
        )
        revoked = await http.delete(f"/admin/v1/api-keys/{rotated.json()['key_id']}", headers={"X-Request-ID": "d"})
        assert rotated.status_code == 201 and revoked.status_code == 200

    found = list(reversed(await entries(client, key_id=operator["key_id"])))
    assert [e["action"] for e in found] == [
        "traffic.set",
        "traffic.rollback",
        "traffic.ack",
        "model.promote",
        "model.promote",
        "model.rollback",
        "job.start",
        "api_key.create",
        "experiment.create",
        "experiment.stop",
        "cache.flush",
        "user.erase",
        "api_key.rotate",
        "api_key.revoke",
    ]
    assert [e["request_id"] for e in found] == [f"audit-{n}" for n in range(len(calls))] + ["r", "d"]
    assert {(e["key_id"], e["key_name"]) for e in found} == {(operator["key_id"], "operator")}
    ids = [e["audit_id"] for e in found]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    by_step = dict(enumerate(found))

    traffic_set, traffic_rollback, ack = by_step[0], by_step[1], by_step[2]
    assert traffic_set["target"] == "ranking"
    assert traffic_set["before"] == {"weight": 0, "shadow_percent": 0, "frozen": False, "reason": ""}
    assert traffic_set["after"] == {"weight": 30, "shadow_percent": 10, "frozen": False, "reason": ""}
    assert traffic_rollback["before"]["weight"] == 30
    assert traffic_rollback["after"] == {"weight": 0, "shadow_percent": 10, "frozen": True, "reason": "looks wrong"}
    assert (ack["before"]["frozen"], ack["after"]["frozen"]) == (True, False)

    promote_a, promote_b, model_rollback = by_step[3], by_step[4], by_step[5]
    assert promote_a["target"] == "ranker"
    assert promote_a["before"] == {"serving": None}
    assert promote_a["after"] == {"serving": "ranker-20260101T000000Z-a", "forced": False}
    assert promote_b["before"] == {"serving": "ranker-20260101T000000Z-a"}
    assert promote_b["after"] == {"serving": "ranker-20260102T000000Z-b", "forced": False}
    assert model_rollback["after"] == {"serving": "ranker-20260101T000000Z-a"}

    job = by_step[6]
    assert (job["target"], job["after"]) == ("popularity", {"job_id": answers[6]["job_id"]})

    created = by_step[7]
    assert created["target"] == web["key_id"] and created["before"] is None
    assert created["after"]["name"] == "web" and created["after"]["scopes"] == ["recommend:read"]
    assert created["after"]["status"] == "active" and created["after"]["expires_at"]

    experiment_create, experiment_stop = by_step[8], by_step[9]
    assert experiment_create["target"] == "audited" and experiment_create["after"]["status"] == "running"
    assert [v["name"] for v in experiment_create["after"]["variants"]] == ["a", "b"]
    assert experiment_stop["before"] == {"status": "running", "stopped_at": None}
    assert experiment_stop["after"]["status"] == "stopped" and experiment_stop["after"]["stopped_at"]

    assert by_step[10]["target"] == "audit-user"
    erase = by_step[11]
    assert (erase["target"], erase["after"]) == ("audit-user", {"receipt_id": answers[11]["receipt_id"]})

    rotate, revoke = by_step[12], by_step[13]
    assert rotate["target"] == web["key_id"]
    assert rotate["before"]["rotated_to"] is None and rotate["before"]["expires_at"] == created["after"]["expires_at"]
    assert rotate["after"]["rotated_to"] == rotated.json()["key_id"]
    assert rotate["after"]["expires_at"] < rotate["before"]["expires_at"], "the overlap ends before the old expiry"
    assert revoke["target"] == rotated.json()["key_id"]
    assert (revoke["before"]["status"], revoke["after"]["status"]) == ("active", "revoked")
    assert revoke["before"]["revoked_at"] is None and revoke["after"]["revoked_at"]


async def test_no_secret_reaches_the_audit_log(client, pg_dsn):
    created = (await client.post("/admin/v1/api-keys", json={"name": "s", "scopes": ["admin"]})).json()
    rotated = (await client.post(f"/admin/v1/api-keys/{created['key_id']}/rotate")).json()
    secrets = [created["secret"], rotated["secret"], ADMIN_KEY]
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT row_to_json(a)::text FROM audit_log a").fetchall()
    assert len(rows) == 2
    for (row,) in rows:
        for secret in secrets:
            assert secret not in row and hash_key(secret) not in row


async def test_actions_that_fail_are_not_recorded(app, client):
    operator = await new_admin(client)
    gone = (await client.post("/admin/v1/api-keys", json={"name": "gone", "scopes": ["admin"]})).json()
    assert (await client.delete(f"/admin/v1/api-keys/{gone['key_id']}")).status_code == 200
    async with http_client(app, operator["secret"]) as http:
        failing = [
            ("POST", "/admin/v1/models/als/promote", {"version": "als-missing"}, 404),
            ("POST", "/admin/v1/models/ranker/rollback", None, 409),
            ("PUT", "/admin/v1/traffic/feature-store", {"weight": 10, "shadow_percent": 0}, 409),
            ("POST", "/admin/v1/api-keys", {"name": "x", "scopes": ["admin"], "ttl_seconds": 0}, 400),
            ("POST", "/admin/v1/api-keys/key_missing/rotate", None, 404),
            ("DELETE", "/admin/v1/api-keys/key_missing", None, 404),
            ("POST", "/admin/v1/experiments/none/stop", None, 404),
            ("POST", "/admin/v1/experiments", {"name": "one", "variants": [{"name": "a", "share": 1}]}, 400),
            ("POST", f"/admin/v1/api-keys/{gone['key_id']}/rotate", None, 409),
        ]
        for method, path, body, status in failing:
            assert_problem(await http.request(method, path, json=body), status)
    reader = (await client.post("/admin/v1/api-keys", json={"name": "r", "scopes": ["users:admin"]})).json()
    async with http_client(app, reader["secret"]) as http:
        assert_problem(await http.delete("/admin/v1/cache/u1"), 403)
    assert await entries(client, key_id=operator["key_id"]) == []
    assert await entries(client, key_id=reader["key_id"]) == []


async def test_filters_pages_and_their_validation(app, client):
    operator = await new_admin(client)
    async with http_client(app, operator["secret"]) as http:
        for n in range(5):
            assert (await http.delete(f"/admin/v1/cache/page-{n}")).status_code == 200
        assert (await http.post("/admin/v1/jobs/popularity")).status_code == 202
    mine = {"key_id": operator["key_id"]}
    everything = await entries(client, **mine)
    assert [e["action"] for e in everything] == ["job.start"] + ["cache.flush"] * 5, "newest first"
    flushes = await entries(client, **mine, action="cache.flush")
    assert [e["target"] for e in flushes] == [f"page-{n}" for n in reversed(range(5))]
    # By the bootstrap key: the operator key's creation only.
    assert [e["action"] for e in await entries(client, key_id="bootstrap")] == ["api_key.create"]

    pages, before = [], None
    while True:
        params = {**mine, "limit": 2, **({"before": before} if before else {})}
        page = (await client.get("/admin/v1/audit", params=params)).json()
        pages.append([e["audit_id"] for e in page["entries"]])
        before = page["next_before"]
        if before is None:
            break
    assert [len(p) for p in pages] == [2, 2, 2]
    assert [i for p in pages for i in p] == [e["audit_id"] for e in everything]

    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    earlier = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()
    assert await entries(client, **mine, since=later) == []
    assert len(await entries(client, **mine, since=earlier)) == 6

    invalid = [
        ({"limit": 0}, "query.limit"),
        ({"limit": 501}, "query.limit"),
        ({"since": "yesterday"}, "query.since"),
        ({"since": "2026-01-01T00:00:00"}, "query.since"),  # no offset: not RFC 3339
        ({"action": "traffic.delete"}, "query.action"),
        ({"key_id": "has space"}, "query.key_id"),
        ({"before": 0}, "query.before"),
        ({"actor": "x"}, "query.actor"),
    ]
    for params, field in invalid:
        problem = assert_problem(await client.get("/admin/v1/audit", params=params), 400)
        assert field in [e["field"] for e in problem["errors"]], (params, problem)
    async with http_client(app, operator["secret"].replace("rfk_", "rfk_x")) as stranger:
        assert_problem(await stranger.get("/admin/v1/audit"), 401)


async def test_an_audit_write_that_fails_keeps_the_answer_and_is_counted(client, pg_dsn):
    failures = REGISTRY.get_sample_value("recfleet_gateway_audit_write_failures_total") or 0
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE audit_log RENAME TO audit_log_away")
    reply = await client.delete("/admin/v1/cache/u-unaudited")
    assert reply.status_code == 200 and reply.json() == {"user_id": "u-unaudited", "flushed": True}
    assert REGISTRY.get_sample_value("recfleet_gateway_audit_write_failures_total") == failures + 1
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE audit_log_away RENAME TO audit_log")
    assert (await client.delete("/admin/v1/cache/u-audited")).status_code == 200
    assert [e["target"] for e in await entries(client, action="cache.flush")] == ["u-audited"]
    assert REGISTRY.get_sample_value("recfleet_gateway_audit_write_failures_total") == failures + 1


async def test_recfleetctl_audit_and_key_rotation(served, client):
    created = (await client.post("/admin/v1/api-keys", json={"name": "cli", "scopes": ["recommend:read"]})).json()
    code, out = await recfleetctl(served, "keys", "rotate", created["key_id"], "--overlap", "0")
    assert code == 0, out
    assert '"secret"' in out and created["key_id"] in out
    await client.delete("/admin/v1/cache/cli-user", headers={"X-Request-ID": "cli-flush-1"})

    code, out = await recfleetctl(served, "audit", "--action", "cache.flush")
    assert code == 0, out
    assert "cache.flush" in out and "cli-user" in out and "cli-flush-1" in out and "bootstrap" in out
    code, out = await recfleetctl(served, "audit", "--key-id", "bootstrap", "--limit", "2", "--json")
    assert code == 0, out
    page = json.loads(out)
    assert [e["action"] for e in page["entries"]] == ["cache.flush", "api_key.rotate"]
    assert page["entries"][1]["after"]["status"] == "expired" and page["next_before"]
    code, out = await recfleetctl(served, "audit", "--before", str(page["next_before"]), "--json")
    assert [e["action"] for e in json.loads(out)["entries"]] == ["api_key.create"]
    code, out = await recfleetctl(served, "audit", "--limit", "0")
    assert code == 1 and "400" in out and "query.limit" in out

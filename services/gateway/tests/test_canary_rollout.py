"""Staged canary rollouts through the gateway: a worse ranking model is stopped at its first
stage by the CTR gate on simulated clicks; one as good as stable moves through every stage
to 100%; operators follow and abort rollouts over REST and with `recfleetctl`.

Simulated users: half are routed to the canary from the first stage on (their ranking
bucket is under 1%), half stay on stable until 100%. Each user finds relevant the items
stable ranks on top for them, clicks a relevant item shown with high probability and any
other rarely, and sends the list's `request_id` with the click."""

from __future__ import annotations

import asyncio
import random

import pytest
from gateway_test_support import assert_problem, http_client, recfleetctl, running_app
from recfleet_gateway.downstream.tracks import user_bucket

STAGES = [1, 10, 50, 100]
LIMIT = 5
# Requests one test may make before giving up on the outcome it waits for.
MAX_REQUESTS = 2_000


def users(count: int = 40) -> tuple[list[str], list[str]]:
    """(users on the ranking canary from 1% on, users on stable until 100%)."""
    canary, stable = [], []
    n = 0
    while len(canary) < count or len(stable) < count:
        user = f"warm-rollout-{n}"
        n += 1
        bucket = user_bucket("ranking", user)
        if bucket < 100 and len(canary) < count:
            canary.append(user)
        elif bucket >= 5_000 and len(stable) < count:
            stable.append(user)
    return canary, stable


@pytest.fixture
def rollout_settings(canary_fleet, gateway_settings):
    """Small windows and minimum counts, so that a stage is judged within a second or two."""
    return gateway_settings.model_copy(
        update={
            **canary_fleet.settings_overrides(),
            "traffic_refresh_seconds": 0.1,
            "canary_analysis_seconds": 0.2,
            "canary_min_requests": 5,
            "canary_kpi_min_lists": 40,
            "canary_kpi_min_coverage_ratio": 0.6,
        }
    )


@pytest.fixture
async def rollout_client(rollout_settings):
    async with running_app(rollout_settings) as application, http_client(application) as http:
        yield http


async def relevant_items(http, people: list[str]) -> dict[str, set[str]]:
    """What stable ranks on top for each user (asked before any canary traffic)."""
    found = {}
    for user in people:
        reply = await http.get("/v1/recommendations", params={"user_id": user, "limit": LIMIT})
        assert reply.status_code == 200, reply.text
        assert "ranking=stable" in reply.headers["Recfleet-Tracks"]
        found[user] = {item["item_id"] for item in reply.json()["items"]}
    return found


async def visit(http, user: str, relevant: set[str], rng: random.Random) -> None:
    """One list shown to the user, and their click on at most one of its items."""
    reply = await http.get("/v1/recommendations", params={"user_id": user, "limit": LIMIT})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    for item in body["items"]:
        if rng.random() < (0.3 if item["item_id"] in relevant else 0.02):
            click = {
                "user_id": user,
                "item_id": item["item_id"],
                "type": "click",
                "context": {"request_id": body["request_id"]},
            }
            assert (await http.post("/v1/events", json={"events": [click]})).status_code == 202
            return


async def ranking_state(http) -> dict:
    reply = await http.get("/admin/v1/traffic")
    assert reply.status_code == 200, reply.text
    return next(s for s in reply.json()["services"] if s["service"] == "ranking")


async def drive_until(http, relevant: dict[str, set[str]], done) -> dict:
    """Simulated traffic until `done(ranking state)` holds; returns that state."""
    rng = random.Random(7)
    people = sorted(relevant)
    state = await ranking_state(http)
    for n in range(MAX_REQUESTS):
        user = rng.choice(people)
        await visit(http, user, relevant[user], rng)
        if n % 20 == 19:
            state = await ranking_state(http)
            if done(state):
                return state
    return state


async def rollout_events(http) -> list[dict]:
    """The ranking events since the latest rollout started, oldest first."""
    events = [e for e in (await http.get("/admin/v1/traffic")).json()["events"] if e["service"] == "ranking"]
    start = next(i for i, e in enumerate(events) if e["reason"].startswith("rollout started"))
    return events[start::-1]


async def start_rollout(http, hold_seconds: float = 0.5) -> dict:
    reply = await http.post("/admin/v1/traffic/ranking/rollout", json={"stages": STAGES, "hold_seconds": hold_seconds})
    assert reply.status_code == 200, reply.text
    return reply.json()


async def test_a_worse_model_is_stopped_at_its_first_stage_by_the_ctr_gate(rollout_client, canary_fleet):
    canary_users, stable_users = users()
    relevant = await relevant_items(rollout_client, canary_users + stable_users)
    canary_fleet.ranking_canary.servicer.random_order = random.Random(3)

    started = await start_rollout(rollout_client)
    assert started["weight"] == 1
    assert started["rollout"]["status"] == "running"
    assert (started["rollout"]["stage"], started["rollout"]["stages"]) == (1, STAGES)

    state = await drive_until(rollout_client, relevant, lambda s: s["frozen"])
    assert state["frozen"] and state["weight"] == 0, state
    assert state["reason"].startswith("ctr "), state["reason"]
    assert "< stable" in state["reason"] and "(z=-" in state["reason"]
    rollout = state["rollout"]
    assert rollout["status"] == "rolled-back"
    assert (rollout["stage"], rollout["weight"]) == (1, 1)  # stopped at its first stage
    assert rollout["reason"] == state["reason"]
    ctr = next(r for r in rollout["readings"] if r["gate"] == "ctr")
    assert ctr["verdict"] == "breach" and ctr["canary"] < ctr["stable"]

    events = await rollout_events(rollout_client)
    assert [(e["action"], e["weight"]) for e in events] == [("set", 1), ("auto-rollback", 0)]  # it never advanced
    assert events[1]["reason"] == state["reason"] and events[1]["actor"] == "canary-analysis"

    # Frozen as after any rollback: no new rollout and no weight before an acknowledgement.
    assert_problem(await rollout_client.post("/admin/v1/traffic/ranking/rollout", json={}), 409)
    weight = await rollout_client.put("/admin/v1/traffic/ranking", json={"weight": 10, "shadow_percent": 0})
    assert_problem(weight, 409)


async def test_a_model_as_good_as_stable_goes_through_every_stage(rollout_client):
    canary_users, stable_users = users()
    relevant = await relevant_items(rollout_client, canary_users + stable_users)

    await start_rollout(rollout_client)
    state = await drive_until(rollout_client, relevant, lambda s: s["rollout"]["status"] != "running")
    assert not state["frozen"], state
    assert state["weight"] == 100
    rollout = state["rollout"]
    assert (rollout["status"], rollout["stage"], rollout["weight"]) == ("complete", 4, 100)
    assert {r["gate"]: r["verdict"] for r in rollout["readings"]} == {
        "error_rate": "pass",
        "p99_seconds": "pass",
        "ctr": "pass",
        "empty_rate": "pass",
        "coverage": "pass",
    }

    moves = [(e["weight"], e["reason"].split(";")[0]) for e in await rollout_events(rollout_client)]
    assert moves == [
        (1, "rollout started: stages 1,10,50,100%, hold 0.5 s"),
        (10, "rollout at stage 2/4 (10%)"),
        (50, "rollout at stage 3/4 (50%)"),
        (100, "rollout complete at stage 4/4 (100%)"),
    ]
    # Every user now gets the canary.
    reply = await rollout_client.get("/v1/recommendations", params={"user_id": stable_users[0], "limit": LIMIT})
    assert "ranking=canary" in reply.headers["Recfleet-Tracks"]


async def test_a_rollout_is_refused_without_a_canary_or_with_a_bad_schedule(rollout_client):
    reply = await rollout_client.post("/admin/v1/traffic/feature-store/rollout", json={})
    assert "no canary target" in assert_problem(reply, 409)["detail"]
    reply = await rollout_client.post("/admin/v1/traffic/ranking/rollout", json={"stages": [10, 5]})
    problem = assert_problem(reply, 400)
    assert problem["errors"] == [
        {"field": "body.stages", "message": "weights must rise from stage to stage, not [10, 5]"}
    ]
    reply = await rollout_client.post("/admin/v1/traffic/ranking/rollout", json={"stages": [0, 100]})
    assert assert_problem(reply, 400)["errors"][0]["field"] == "body.stages[0]"
    for hold in (-1, 8 * 24 * 3600):
        reply = await rollout_client.post("/admin/v1/traffic/ranking/rollout", json={"hold_seconds": hold})
        assert assert_problem(reply, 400)["errors"][0]["field"] == "body.hold_seconds"
    reply = await rollout_client.post("/admin/v1/traffic/ranking/rollout/abort", json={})
    assert "no rollout in progress" in assert_problem(reply, 409)["detail"]


async def test_a_reason_with_nul_is_refused_before_anything_changes(rollout_client):
    # Postgres text cannot hold NUL: the reason goes into the traffic history and the audit
    # log, so it is refused as the schema says, before the weight moves.
    await start_rollout(rollout_client, hold_seconds=3600)

    def settled(state: dict) -> tuple:
        return state["weight"], state["frozen"], state["rollout"]["status"], state["rollout"]["stage"]

    before = settled(await ranking_state(rollout_client))
    assert before == (1, False, "running", 1)
    for path in ("/admin/v1/traffic/ranking/rollout/abort", "/admin/v1/rollback/ranking"):
        reply = await rollout_client.post(path, json={"reason": "bad\u0000build"})
        assert assert_problem(reply, 400)["errors"][0]["field"] == "body.reason", path
    assert settled(await ranking_state(rollout_client)) == before
    reply = await rollout_client.post("/admin/v1/rollback/ranking", json={"reason": "bad build"})
    assert reply.status_code == 200, reply.text
    assert (await ranking_state(rollout_client))["weight"] == 0


async def test_a_rollout_holds_its_stage_locks_the_weight_and_can_be_aborted(rollout_client):
    started = await start_rollout(rollout_client, hold_seconds=3600)
    assert started["rollout"]["started_by"]
    # A second rollout, or a hand-set weight, would fight the one in progress.
    assert (
        "already rolling out"
        in assert_problem(await rollout_client.post("/admin/v1/traffic/ranking/rollout", json={}), 409)["detail"]
    )
    reply = await rollout_client.put("/admin/v1/traffic/ranking", json={"weight": 50, "shadow_percent": 0})
    assert "abort the rollout" in assert_problem(reply, 409)["detail"]

    await asyncio.sleep(0.5)  # a few judgements: too little traffic, and the hold is long
    state = await ranking_state(rollout_client)
    assert (state["weight"], state["rollout"]["status"], state["rollout"]["stage"]) == (1, "running", 1)
    assert "held" in state["rollout"]["reason"]

    reply = await rollout_client.post("/admin/v1/traffic/ranking/rollout/abort", json={"reason": "wrong build"})
    assert reply.status_code == 200, reply.text
    aborted = reply.json()
    assert (aborted["weight"], aborted["frozen"]) == (0, False)
    assert (aborted["rollout"]["status"], aborted["rollout"]["reason"]) == ("aborted", "wrong build")

    audit = (await rollout_client.get("/admin/v1/audit", params={"limit": 10})).json()["entries"]
    actions = [(e["action"], e["target"]) for e in audit]
    assert ("traffic.rollout", "ranking") in actions and ("traffic.rollout_abort", "ranking") in actions
    start = next(e for e in audit if e["action"] == "traffic.rollout")
    assert start["after"]["weight"] == 1
    assert start["after"]["rollout"] == {
        "status": "running",
        "stages": STAGES,
        "hold_seconds": 3600,
        "stage": 1,
        "weight": 1,
    }


@pytest.fixture
async def served_with_canary(rollout_settings):
    """The gateway with a ranking canary on a real port, for the CLI."""
    import uvicorn
    from recfleet_runtime.ports import free_port

    async with running_app(rollout_settings) as application:
        port = free_port()
        config = uvicorn.Config(application, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
        server.should_exit = True
        await task


async def test_recfleetctl_starts_shows_and_aborts_a_rollout(served_with_canary):
    code, output = await recfleetctl(served_with_canary, "traffic", "rollout", "ranking", "--stages", "5,50,100")
    assert code == 0, output
    assert "ranking: running 1/3 (5%) held 0/300 s" in output
    code, output = await recfleetctl(served_with_canary, "traffic", "status")
    assert code == 0, output
    assert "running 1/3 (5%)" in output
    assert "last gate readings" in output
    code, output = await recfleetctl(served_with_canary, "traffic", "abort", "ranking", "--reason", "not today")
    assert code == 0, output
    assert "ranking: aborted 1/3 (5%): not today" in output
    code, output = await recfleetctl(served_with_canary, "traffic", "rollout", "ranking", "--stages", "1,ten")
    assert code == 2 and "--stages" in output

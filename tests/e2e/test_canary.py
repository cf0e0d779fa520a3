"""Issue 7's acceptance: canary weights move exactly that share of users, stick per user,
a bad canary rolls itself back, and shadow traffic leaves responses alone."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import httpx
import pytest
import redis

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]


def set_traffic(api, service: str, weight: int, shadow: int = 0) -> None:
    api.post(f"/admin/v1/traffic/{service}/ack")
    reply = api.put(f"/admin/v1/traffic/{service}", json={"weight": weight, "shadow_percent": shadow})
    assert reply.status_code == 200, reply.text
    time.sleep(1.5)  # every replica converges within one refresh


def ranking_track(reply: httpx.Response) -> str | None:
    """The ranking track that served the response; None when it never reached ranking
    (a fallback that served popular items without ranking them)."""
    tracks = dict(part.strip().split("=") for part in reply.headers["Recfleet-Tracks"].split(","))
    return tracks.get("ranking")


async def tracks_for(fleet, users: list[str], concurrency: int = 8) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {fleet.config.admin_key}"}
    found: dict[str, str] = {}
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=fleet.gateway_url, headers=headers, timeout=30) as client:

        async def one(user: str) -> None:
            async with gate:
                reply = await client.get("/v1/recommendations", params={"user_id": user, "limit": 5})
                assert reply.status_code == 200, reply.text
                found[user] = ranking_track(reply)

        await asyncio.gather(*(one(user) for user in users))
    return found


def test_weight_without_a_canary_target_is_refused(api):
    reply = api.put("/admin/v1/traffic/feature-store", json={"weight": 10, "shadow_percent": 0})
    assert reply.status_code == 409
    assert "canary" in reply.json()["detail"]


def test_weight_moves_that_share_of_users_and_sticks(api, fleet):
    set_traffic(api, "ranking", 10)
    users = [f"canary-{i}" for i in range(10_000)]
    tracks = {u: t for u, t in asyncio.run(tracks_for(fleet, users)).items() if t is not None}
    assert len(tracks) >= 9_500  # nearly every call reached ranking
    share = sum(t == "canary" for t in tracks.values()) / len(tracks)
    assert 0.09 <= share <= 0.11, share
    state = next(s for s in api.get("/admin/v1/traffic").json()["services"] if s["service"] == "ranking")
    assert not state["frozen"], state  # the healthy canary was never rolled back

    sample = [u for u in users[:400] if u in tracks]
    again = asyncio.run(tracks_for(fleet, sample))
    assert all(again[u] == tracks[u] for u in sample if again[u] is not None)  # one user, one track

    set_traffic(api, "ranking", 20)
    raised = asyncio.run(tracks_for(fleet, sample))
    moved_back = [u for u in sample if tracks[u] == "canary" and raised[u] == "stable"]
    assert not moved_back
    set_traffic(api, "ranking", 0)


def test_shadow_leaves_responses_identical(api, fleet):
    users = [f"shadow-{i}" for i in range(40)]
    cache = redis.Redis.from_url(fleet.config.redis_url)

    def lists() -> dict[str, list[str]]:
        for key in cache.scan_iter("rf:cache:*"):
            cache.delete(key)
        out = {}
        for user in users:
            reply = api.get("/v1/recommendations", params={"user_id": user, "limit": 10})
            assert reply.status_code == 200
            out[user] = [item["item_id"] for item in reply.json()["items"]]
        return out

    set_traffic(api, "ranking", 0, shadow=0)
    before = lists()
    set_traffic(api, "ranking", 0, shadow=100)
    during = lists()
    set_traffic(api, "ranking", 0, shadow=0)
    assert before == during
    metrics = httpx.get(fleet.gateway_metrics_url).text
    assert "recfleet_gateway_shadow_requests_total{" in metrics


def test_a_failing_canary_is_rolled_back_within_60_seconds(api, fleet):
    name = "ranking-canary"
    fleet.processes[name].env["RECFLEET_RANKING_INJECT_ERROR_RATE"] = "0.05"
    fleet.restart_process(name)
    fleet.wait_ready()
    set_traffic(api, "ranking", 50)
    started = time.monotonic()
    state = {}
    user = 0
    while time.monotonic() - started < 60:
        for _ in range(20):
            api.get("/v1/recommendations", params={"user_id": f"rollback-{user}", "limit": 5})
            user += 1
        state = next(s for s in api.get("/admin/v1/traffic").json()["services"] if s["service"] == "ranking")
        if state["frozen"]:
            break
    assert state["frozen"] and state["weight"] == 0, state
    assert "error rate" in state["reason"]
    assert time.monotonic() - started < 60

    # The operator sees why, and cannot raise the weight before acknowledging.
    status = subprocess.run(
        [
            sys.executable,
            "-m",
            "recfleet_ctl",
            "--url",
            fleet.gateway_url,
            "--key",
            fleet.config.admin_key,
            "traffic",
            "status",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**__import__("os").environ, "COLUMNS": "300"},
    )
    assert status.returncode == 0, status.stderr
    assert "auto-rollback" in status.stdout and "error rate" in status.stdout
    assert api.put("/admin/v1/traffic/ranking", json={"weight": 10, "shadow_percent": 0}).status_code == 409

    fleet.processes[name].env.pop("RECFLEET_RANKING_INJECT_ERROR_RATE")
    fleet.restart_process(name)

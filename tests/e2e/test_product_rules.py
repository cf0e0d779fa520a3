"""Issue 5's acceptance through the REST API with the real fleet: the degradation ladder,
every filter, diversity, explanations, rate limits and the result cache."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

RESTRICTED_USER = "10"  # a MovieLens user with history, given a minor's profile below
# Catalog upserts are announced to ranking at once; RECFLEET_RANKING_ITEM_CACHE_SECONDS
# (5 s by default) is the documented bound when an announcement is missed. The test waits
# for the bound, not for the announcement.
CATALOG_REACHES_RANKING_SECONDS = 5.6


def catalog(fleet, item_ids) -> dict[str, dict]:
    with psycopg.connect(fleet.config.postgres_dsn, row_factory=dict_row) as conn:
        rows = conn.execute(
            "SELECT item_id, title, categories, creator, published_at, tags, age_rating, regions, available "
            "FROM items WHERE item_id = ANY(%s)",
            (list(item_ids),),
        ).fetchall()
    return {row["item_id"]: row for row in rows}


def as_body(row: dict, **changes) -> dict:
    body = {
        "title": row["title"],
        "categories": row["categories"],
        "creator": row["creator"],
        "published_at": row["published_at"].isoformat() if row["published_at"] else None,
        "tags": row["tags"],
        "age_rating": row["age_rating"],
        "regions": row["regions"],
        "available": row["available"],
    }
    body.update(changes)
    return body


def recommend(api, user: str, **params) -> dict:
    reply = api.get("/v1/recommendations", params={"user_id": user, "limit": 20, **params})
    assert reply.status_code == 200, reply.text
    return reply.json()


@pytest.fixture(scope="module")
def restricted_catalog(api, fleet):
    """Marks items the restricted user would otherwise be shown as adult-only,
    region-locked, unavailable or in a blocked category; restores them afterwards."""
    shown = [i["item_id"] for i in recommend(api, RESTRICTED_USER, limit=60, surface="setup")["items"]]
    popular = [i["item_id"] for i in api.get("/v1/popular", params={"limit": 40}).json()["items"]]
    targets = list(dict.fromkeys(shown[:24] + popular[:16]))
    before = catalog(fleet, targets)
    changes = {}
    for index, item_id in enumerate(targets):
        kind = index % 4
        changes[item_id] = (
            {"age_rating": 18}
            if kind == 0
            else {"regions": ["FR"]}
            if kind == 1
            else {"available": False}
            if kind == 2
            else {"categories": ["Documentary", *before[item_id]["categories"]]}
        )
    batch = [{"item_id": i, **as_body(before[i], **c)} for i, c in changes.items()]
    assert api.post("/v1/items:batch", json={"items": batch}).status_code == 200
    time.sleep(CATALOG_REACHES_RANKING_SECONDS)
    reply = api.put(
        f"/v1/users/{RESTRICTED_USER}/profile", json={"age": 12, "country": "DE", "blocked_categories": ["Documentary"]}
    )
    assert reply.status_code == 200, reply.text
    yield changes
    api.post("/v1/items:batch", json={"items": [{"item_id": i, **as_body(r)} for i, r in before.items()]})
    api.put(f"/v1/users/{RESTRICTED_USER}/profile", json={})
    time.sleep(CATALOG_REACHES_RANKING_SECONDS)


def test_no_filtered_item_ever_appears(api, fleet, restricted_catalog):
    seen = set()
    for page in range(3):
        body = recommend(api, RESTRICTED_USER, limit=30, surface=f"filters-{page}")
        seen |= {i["item_id"] for i in body["items"]}
    rows = catalog(fleet, seen)
    for item_id in seen:
        row = rows[item_id]
        assert row["age_rating"] <= 12, f"{item_id} is rated {row['age_rating']} for a 12-year-old"
        assert not row["regions"] or "DE" in row["regions"], f"{item_id} is not available in DE"
        assert row["available"], f"{item_id} is unavailable"
        assert "Documentary" not in row["categories"], f"{item_id} is in a blocked category"
    assert not seen & set(restricted_catalog)


def test_diversity_holds_for_200_users(api, fleet):
    """Ranking applies the rule (learned ranker or rules alike). The popular rung, the last
    fallback when ranking cannot answer, does not: such an answer names what failed in
    `degraded`, and is asked again once."""
    violations = []
    for user in range(1, 201):
        answer = recommend(api, str(user), surface="diversity")
        if answer["served_by"] == "popular":
            answer = recommend(api, str(user), surface="diversity")
        items = [i["item_id"] for i in answer["items"]]
        rows = catalog(fleet, items)
        primaries = Counter(rows[i]["categories"][0] for i in items if rows[i]["categories"])
        if primaries and max(primaries.values()) > 3:
            violations.append((user, primaries.most_common(1), answer["served_by"], answer["degraded"]))
    assert not violations, violations[:5]


def test_explanations_are_present_and_add_up(api):
    body = recommend(api, "5", explain="true", surface="explain")
    assert body["served_by"] in ("ranker", "rules")
    for item in body["items"]:
        explanation = item["explanation"]
        assert "candidate_score" in explanation and explanation["ranker_contributions"]
        assert sum(explanation["ranker_contributions"].values()) == pytest.approx(item["score"], abs=1e-3)
    assert "explanation" not in recommend(api, "5", surface="no-explain")["items"][0]


def test_cache_hit_then_miss_after_a_new_event(api, fleet):
    def counts():
        text = httpx.get(fleet.gateway_metrics_url).text
        found = {}
        for line in text.splitlines():
            if line.startswith("recfleet_gateway_cache_requests_total{"):
                result = line.split('result="')[1].split('"')[0]
                found[result] = float(line.rsplit(" ", 1)[1])
        return found

    user = "42"
    first = recommend(api, user, surface="cache")
    hits = counts().get("hit", 0)
    again = recommend(api, user, surface="cache")
    assert counts().get("hit", 0) == hits + 1
    assert [i["item_id"] for i in again["items"]] == [i["item_id"] for i in first["items"]]
    assert again["request_id"] != first["request_id"]

    event = {"event_id": str(uuid.uuid4()), "user_id": user, "item_id": first["items"][0]["item_id"], "type": "click"}
    assert api.post("/v1/events", json={"events": [event]}).status_code == 202
    # The event invalidates the cached list, and once the real-time consumer has recorded
    # it, the clicked item is no longer recommended.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        misses = counts().get("miss", 0)
        after = recommend(api, user, surface="cache")
        missed = counts().get("miss", 0) == misses + 1
        if missed and event["item_id"] not in [i["item_id"] for i in after["items"]]:
            break
        time.sleep(0.3)
    else:
        pytest.fail("the user's cached recommendations survived a new event")


def test_rate_limit_per_user_answers_429_with_retry_after(api):
    user = "rate-limited-user"
    statuses = [api.get("/v1/recommendations", params={"user_id": user, "limit": 5}).status_code for _ in range(101)]
    assert statuses[:100].count(200) == 100
    assert statuses[100] == 429
    reply = api.get("/v1/recommendations", params={"user_id": user, "limit": 5})
    assert reply.status_code == 429
    assert int(reply.headers["Retry-After"]) >= 1
    assert reply.headers["content-type"].startswith("application/problem+json")


def test_degradation_ladder_ranker_rules_popular(api, fleet):
    assert recommend(api, "7", surface="ladder-0")["served_by"] == "ranker"

    ranking = fleet.processes["ranking"]
    ranking.env["RECFLEET_RANKING_RANKER_VERSION"] = "ranker-that-does-not-exist"
    fleet.restart_process("ranking")
    fleet.wait_ready()
    try:
        body = recommend(api, "7", surface="ladder-1")
        assert body["served_by"] == "rules"
        assert any("ranker" in reason for reason in body["degraded"]), body["degraded"]
        assert len(body["items"]) == 20

        fleet.stop_process("ranking")
        body = recommend(api, "7", surface="ladder-2")
        assert body["served_by"] == "popular"
        assert any("ranking" in reason for reason in body["degraded"]), body["degraded"]
        assert len(body["items"]) == 20
    finally:
        ranking.env.pop("RECFLEET_RANKING_RANKER_VERSION")
        fleet.restart_process("ranking")
        fleet.wait_ready()
    assert recommend(api, "7", surface="ladder-3")["served_by"] == "ranker"

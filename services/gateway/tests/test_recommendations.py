"""The recommendation path through the REST API against the scripted fleet."""

from __future__ import annotations

import asyncio

import redis
from gateway_test_support import assert_problem, http_client, metrics_text, running_app
from prometheus_client import REGISTRY
from recfleet_store import keys


async def test_warm_user_gets_ranked_unseen_items_with_headers(client):
    reply = await client.get("/v1/recommendations", params={"user_id": "warm-1", "limit": 10})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["user_id"] == "warm-1"
    assert [item["rank"] for item in body["items"]] == list(range(1, 11))
    assert not {"m1", "m2"} & {item["item_id"] for item in body["items"]}
    assert body["served_by"] == "rules"
    assert body["cold_start"] is False
    assert body["degraded"] == []
    assert body["model_version"] == "als-20261123T000000Z+rules"
    assert body["request_id"] == reply.headers["X-Request-ID"]
    assert body["experiment"] is None
    assert "explanation" not in body["items"][0]
    assert reply.headers["Recfleet-Tracks"] == "candidate-gen=stable, ranking=stable, feature-store=stable"
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)


async def test_incoming_request_id_is_honoured(client):
    reply = await client.get("/v1/recommendations", params={"user_id": "warm-1"}, headers={"X-Request-ID": "abc-123"})
    assert reply.headers["X-Request-ID"] == "abc-123"
    assert reply.json()["request_id"] == "abc-123"


async def test_trace_context_and_request_id_reach_downstream(client, fleet):
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01", "X-Request-ID": "req-trace-1"}
    await client.get("/v1/recommendations", params={"user_id": "warm-1"}, headers=headers)
    metadata = fleet.ranking.servicer.metadata[-1]
    assert metadata["traceparent"].split("-")[1] == trace_id
    assert metadata["x-request-id"] == "req-trace-1"


async def test_explain_adds_explanations(client):
    body = (await client.get("/v1/recommendations", params={"user_id": "warm-1", "explain": "true"})).json()
    explanation = body["items"][0]["explanation"]
    assert set(explanation) == {"candidate_score", "ranker_contributions", "rules", "source_scores"}
    assert explanation["candidate_score"] == body["items"][0]["score"]
    # Candidates from one source (the shards serve no EASE here) carry no source scores.
    assert explanation["source_scores"] == {}


async def test_fused_candidates_show_each_sources_score_when_explained(client, fleet):
    for server in fleet.shards:
        server.servicer.ease = True
    body = (await client.get("/v1/recommendations", params={"user_id": "warm-9", "explain": "true"})).json()
    # The user's history (seen m1, m2) reaches every shard, and stays in the exclusions.
    for server in fleet.shards:
        sent = server.servicer.requests[-1]
        assert list(sent.history_item_ids) == ["m1", "m2"] and {"m1", "m2"} <= set(sent.exclude_item_ids)
    # m1 is a comedy, m2 an action film: one history item shares each of their categories.
    categories = ("drama", "comedy", "action")
    for item in body["items"]:
        assert item["source"] == "als+ease"
        expected_ease = 0.0 if categories[int(item["item_id"][1:]) % 3] == "drama" else 1.0
        assert item["explanation"]["source_scores"] == {"als": item["score"], "ease": expected_ease}
    # Every shard's candidates reached ranking with their source scores.
    sent = fleet.ranking.servicer.source_scores[-1]
    assert len(sent) == len(fleet.ranking.servicer.requests[-1].candidates) > len(body["items"])

    for server in fleet.shards[1:]:
        server.servicer.ease = False
    # A shard of an older build answers without source scores: none go to ranking.
    body = (await client.get("/v1/recommendations", params={"user_id": "warm-8", "explain": "true"})).json()
    assert body["items"] and all(item["explanation"]["source_scores"] == {} for item in body["items"])
    assert fleet.ranking.servicer.source_scores[-1] == {}


async def test_exclude_and_category_reach_ranking(client, fleet):
    reply = await client.get(
        "/v1/recommendations", params={"user_id": "warm-1", "exclude": "m3,m4", "category": "comedy"}
    )
    body = reply.json()
    ids = {item["item_id"] for item in body["items"]}
    assert not ids & {"m3", "m4"}
    request = fleet.ranking.servicer.requests[-1]
    assert {"m1", "m2", "m3", "m4"} <= set(request.constraints.seen_item_ids)
    assert request.category == "comedy"


async def test_cold_start_user_gets_onboarding_candidates(client, fleet):
    put = await client.put(
        "/v1/users/new-1/profile", json={"preferred_categories": ["comedy"], "liked_items": ["m7"], "age": 30}
    )
    assert put.status_code == 200, put.text
    body = (await client.get("/v1/recommendations", params={"user_id": "new-1"})).json()
    assert body["cold_start"] is True
    assert body["model_version"] == "cold-start+rules"
    sources = {c.source for c in fleet.ranking.servicer.requests[-1].candidates}
    assert {"popular", "similar", "trending"} <= sources
    assert "GetPopularItems:all:comedy" in fleet.features.servicer.calls


async def test_cache_hit_then_miss_after_invalidation(client, fleet, redis_url):
    params = {"user_id": "warm-2", "limit": 5}
    first = (await client.get("/v1/recommendations", params=params)).json()
    ranks_before = len(fleet.ranking.servicer.requests)
    second_reply = await client.get("/v1/recommendations", params=params)
    second = second_reply.json()
    assert len(fleet.ranking.servicer.requests) == ranks_before, "a repeat must be served from the cache"
    assert second["items"] == first["items"]
    assert second["request_id"] != first["request_id"]
    # A cached list still names the tracks that produced it.
    assert second_reply.headers["Recfleet-Tracks"] == "candidate-gen=stable, ranking=stable, feature-store=stable"
    redis.Redis.from_url(redis_url).delete(keys.result_cache("warm-2"))
    await client.get("/v1/recommendations", params=params)
    assert len(fleet.ranking.servicer.requests) == ranks_before + 1
    metrics = metrics_text()
    assert 'recfleet_gateway_cache_requests_total{result="hit"}' in metrics


async def test_new_events_invalidate_the_users_cache(client, fleet):
    params = {"user_id": "warm-3", "limit": 5}
    await client.get("/v1/recommendations", params=params)
    before = len(fleet.ranking.servicer.requests)
    posted = await client.post("/v1/events", json={"events": [{"user_id": "warm-3", "item_id": "m9", "type": "click"}]})
    assert posted.status_code == 202
    await client.get("/v1/recommendations", params=params)
    assert len(fleet.ranking.servicer.requests) == before + 1


async def test_cursor_pages_never_repeat_items(client):
    seen: list[str] = []
    params = {"user_id": "warm-4", "limit": 7}
    reply = await client.get("/v1/recommendations", params=params)
    pages = 0
    while True:
        body = reply.json()
        assert reply.status_code == 200, body
        seen.extend(item["item_id"] for item in body["items"])
        assert [item["rank"] for item in body["items"]] == list(
            range(len(seen) - len(body["items"]) + 1, len(seen) + 1)
        )
        pages += 1
        if body["next_cursor"] is None:
            break
        reply = await client.get("/v1/recommendations", params={**params, "cursor": body["next_cursor"]})
    assert pages > 2
    assert len(seen) == len(set(seen))
    assert len(seen) == 58  # every catalog item but the two seen ones


async def test_cursor_bound_to_its_parameters_and_signed(client):
    body = (await client.get("/v1/recommendations", params={"user_id": "warm-5", "limit": 5})).json()
    cursor = body["next_cursor"]
    other = await client.get("/v1/recommendations", params={"user_id": "warm-5", "category": "drama", "cursor": cursor})
    assert other.status_code == 400
    assert other.json()["errors"][0]["field"] == "query.cursor"
    forged = await client.get("/v1/recommendations", params={"user_id": "warm-5", "cursor": cursor[:-4] + "AAAA"})
    assert forged.status_code == 400


async def test_a_page_survives_cache_invalidation(client, redis_url):
    params = {"user_id": "warm-6", "limit": 5}
    first = (await client.get("/v1/recommendations", params=params)).json()
    redis.Redis.from_url(redis_url).delete(keys.result_cache("warm-6"))
    second = (await client.get("/v1/recommendations", params={**params, "cursor": first["next_cursor"]})).json()
    assert second["items"][0]["rank"] == 6
    assert not {i["item_id"] for i in first["items"]} & {i["item_id"] for i in second["items"]}


async def test_a_down_shard_gives_partial_results_named_in_degraded(client, fleet):
    await fleet.shards[1].stop()
    reply = await client.get("/v1/recommendations", params={"user_id": "warm-7", "limit": 50})
    body = reply.json()
    assert reply.status_code == 200, body
    assert body["degraded"] == ["candidate-gen-shard-1-unavailable"]
    owned_by_zero = set(fleet.shards[0].servicer.items)
    assert {item["item_id"] for item in body["items"]} <= owned_by_zero
    assert body["items"]


async def test_ranking_down_serves_popular_items_without_seen_or_blocked(client, fleet):
    await client.put("/v1/users/warm-8/profile", json={"blocked_categories": ["drama"]})
    fleet.ranking.servicer.failing = __import__("grpc").StatusCode.UNAVAILABLE
    body = (await client.get("/v1/recommendations", params={"user_id": "warm-8", "limit": 10})).json()
    assert body["served_by"] == "popular"
    assert body["degraded"] == ["ranking-unavailable"]
    ids = [item["item_id"] for item in body["items"]]
    assert len(ids) == 10
    assert not {"m1", "m2"} & set(ids)
    from gateway_scripted_fleet import category_of

    assert all(category_of(i) != "drama" for i in ids)
    assert all(item["source"] == "popular" for item in body["items"])


async def test_feature_store_timeout_gives_defaults_and_says_so(app, client, fleet):
    app.state.gateway.fleet.feature_store.stable.timeout = 0.05
    fleet.features.servicer.user_features_delay = 0.5
    reply = await client.get("/v1/recommendations", params={"user_id": "warm-10"})
    body = reply.json()
    assert reply.status_code == 200, body
    assert body["degraded"] == ["feature-store-timeout"]
    assert body["cold_start"] is True
    assert body["items"]


async def test_everything_down_is_a_503_problem(client, fleet):
    """With ranking and the feature store down, only a popular list the gateway remembers
    can answer: for a category it never read there is none."""
    await fleet.features.stop()
    await fleet.ranking.stop()
    reply = await client.get("/v1/recommendations", params={"user_id": "warm-9", "category": "never-read"})
    assert reply.status_code == 503
    assert reply.headers["content-type"] == "application/problem+json"
    body = reply.json()
    assert body["status"] == 503 and body["request_id"] == reply.headers["X-Request-ID"]


async def test_similar_items_merge_across_shards(client, fleet):
    reply = await client.get("/v1/items/m10/similar", params={"limit": 10})
    body = reply.json()
    assert reply.status_code == 200, body
    ids = [item["item_id"] for item in body["items"]]
    assert "m10" not in ids and len(ids) == 10
    shards_with_results = {s for s in (0, 1) if set(ids) & set(fleet.shards[s].servicer.items)}
    assert shards_with_results == {0, 1}
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)


async def test_similar_unknown_item_is_404(client):
    reply = await client.get("/v1/items/nope/similar")
    assert reply.status_code == 404
    assert reply.json()["type"].endswith("item-not-found")


async def test_popular_by_category(client):
    body = (await client.get("/v1/popular", params={"category": "action", "limit": 3, "window": "7d"})).json()
    assert [item["rank"] for item in body["items"]] == [1, 2, 3]
    assert body["window"] == "7d"


async def test_redis_down_still_serves_recommendations(gateway_settings):
    from gateway_test_support import http_client, running_app

    settings = gateway_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    async with running_app(settings) as application, http_client(application) as http:
        reply = await http.get("/v1/recommendations", params={"user_id": "warm-1", "limit": 5})
        assert reply.status_code == 200, reply.text
        assert len(reply.json()["items"]) == 5
        metrics = metrics_text()
        assert 'recfleet_gateway_cache_requests_total{result="error"}' in metrics


async def test_the_gateway_logs_each_request_with_its_trace_id(client, capsys):
    import json
    import logging

    import structlog
    from recfleet_runtime.logging import configure_logging

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    configure_logging("gateway")
    try:
        trace_id = "0af7651916cd43dd8448eb211c80319c"
        headers = {"traceparent": f"00-{trace_id}-b7ad6b7169203331-01", "X-Request-ID": "req-log-1"}
        await client.get("/v1/popular", headers=headers)
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    finally:
        structlog.reset_defaults()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    access = [line for line in lines if line.get("event") == "request"]
    assert access, lines
    assert access[-1]["trace_id"] == trace_id
    assert access[-1]["request_id"] == "req-log-1"
    assert access[-1]["route"] == "/v1/popular" and access[-1]["status"] == 200


async def test_unsampled_quick_requests_write_no_info_access_line_refusals_do(client, capsys):
    import json
    import logging

    import structlog
    from recfleet_runtime.logging import configure_logging

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    configure_logging("gateway")
    try:
        unsampled = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"}
        assert (await client.get("/v1/popular", headers={**unsampled, "X-Request-ID": "quiet-1"})).status_code == 200
        assert (await client.get("/v1/popular", headers={"X-Request-ID": "quiet-2"})).status_code == 200
        refused = await client.get("/v1/popular", params={"limit": "-1"}, headers={"X-Request-ID": "loud-1"})
        assert refused.status_code == 400
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    finally:
        structlog.reset_defaults()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    logged = {line.get("request_id") for line in lines if line.get("event") == "request"}
    assert "loud-1" in logged
    assert not logged & {"quiet-1", "quiet-2"}


async def test_a_degraded_list_is_not_cached(client, fleet):
    await fleet.shards[1].stop()
    params = {"user_id": "warm-11", "limit": 5}
    first = (await client.get("/v1/recommendations", params=params)).json()
    assert first["degraded"] == ["candidate-gen-shard-1-unavailable"]
    before = len(fleet.ranking.servicer.requests)
    await client.get("/v1/recommendations", params=params)
    assert len(fleet.ranking.servicer.requests) == before + 1


async def test_an_empty_ranking_answer_falls_back_to_popular(client, fleet):
    fleet.ranking.servicer.empty_with = ["feature-store-unavailable"]
    body = (await client.get("/v1/recommendations", params={"user_id": "warm-12", "limit": 5})).json()
    assert body["served_by"] == "popular"
    assert body["degraded"] == ["feature-store-unavailable", "ranking-empty"]
    assert len(body["items"]) == 5 and not {"m1", "m2"} & {i["item_id"] for i in body["items"]}


async def test_a_shard_on_another_model_version_is_named(client, fleet):
    import grpc

    fleet.shards[0].servicer.failing = grpc.StatusCode.FAILED_PRECONDITION
    body = (await client.get("/v1/recommendations", params={"user_id": "warm-13", "limit": 5})).json()
    assert body["degraded"] == ["candidate-gen-shard-0-version-mismatch"]
    assert len(body["items"]) == 5


async def test_the_last_rung_remembers_popular_items_when_the_feature_store_is_down(client, fleet):
    import grpc

    assert (await client.get("/v1/popular", params={"limit": 5})).status_code == 200  # a popular list is remembered
    fleet.ranking.servicer.failing = grpc.StatusCode.UNAVAILABLE
    fleet.features.servicer.failing = grpc.StatusCode.UNAVAILABLE
    reply = await client.get("/v1/recommendations", params={"user_id": "warm-22", "limit": 5})
    body = reply.json()
    assert reply.status_code == 200, body
    assert body["served_by"] == "popular"
    assert "popular-from-memory" in body["degraded"]
    assert len(body["items"]) == 5


async def test_the_last_rung_answers_with_no_popular_request_before_the_outage(client, fleet):
    """The gateway reads the popular list at start (and again every 30 s): a store outage
    that comes before anyone asked for popular items still leaves the last rung standing."""
    import grpc

    fleet.ranking.servicer.failing = grpc.StatusCode.UNAVAILABLE
    fleet.features.servicer.failing = grpc.StatusCode.UNAVAILABLE
    reply = await client.get("/v1/recommendations", params={"user_id": "warm-23", "limit": 5})
    body = reply.json()
    assert reply.status_code == 200, body
    assert body["served_by"] == "popular" and "popular-from-memory" in body["degraded"]
    assert len(body["items"]) == 5


async def test_overload_is_shed_with_503_while_admin_and_probes_still_answer(gateway_settings, fleet):
    fleet.features.servicer.user_features_delay = 0.5
    overloaded = gateway_settings.model_copy(update={"max_in_flight": 2})
    # The counter is the process's: other tests of the run may have shed requests before.
    shed_before = shed_total()
    async with running_app(overloaded) as application, http_client(application) as client:
        started = [
            asyncio.ensure_future(client.get("/v1/recommendations", params={"user_id": f"warm-{i}"})) for i in range(5)
        ]
        await asyncio.sleep(0.2)
        # While two requests hold both slots, operators and probes still get through.
        assert (await client.get("/admin/v1/traffic")).status_code == 200
        assert (await client.get("/healthz/live")).status_code == 200
        replies = await asyncio.gather(*started)
        statuses = sorted(reply.status_code for reply in replies)
        assert statuses == [200, 200, 503, 503, 503]
        for reply in replies:
            if reply.status_code == 503:
                body = assert_problem(reply, 503)
                assert reply.headers["Retry-After"] == "1" and "capacity" in body["detail"]
        fleet.features.servicer.user_features_delay = 0.0
        assert (await client.get("/v1/recommendations", params={"user_id": "warm-1"})).status_code == 200
        assert shed_total() == shed_before + 3


def shed_total() -> float:
    return REGISTRY.get_sample_value("recfleet_gateway_shed_total") or 0.0


# After the overload test: it counts every shed request of the process.
async def test_hung_writes_never_take_the_slots_of_recommendations(gateway_settings, fleet):
    """Writes have a bulkhead of their own: with event-ingest hanging, event requests fill
    theirs and are refused, and recommendations are still answered."""
    fleet.ingest.servicer.ingest_delay = 0.5
    bounded = gateway_settings.model_copy(update={"max_in_flight": 2, "max_in_flight_writes": 2})
    event = {"events": [{"user_id": "warm-1", "item_id": "m1", "type": "click"}]}
    async with running_app(bounded) as application, http_client(application) as client:
        posts = [asyncio.ensure_future(client.post("/v1/events", json=event)) for _ in range(4)]
        await asyncio.sleep(0.2)  # two writes hold both write slots
        for _ in range(3):
            reply = await client.get("/v1/recommendations", params={"user_id": "warm-2", "limit": 5})
            assert reply.status_code == 200, reply.text
        statuses = sorted(reply.status_code for reply in await asyncio.gather(*posts))
        assert statuses == [202, 202, 503, 503]
    fleet.ingest.servicer.ingest_delay = 0.0

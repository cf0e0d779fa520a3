"""The API's contract: problem+json errors, validation, authorization, rate limits,
operations endpoints and the OpenAPI document."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator

import jsonschema
import pytest
from gateway_test_support import ADMIN_KEY, assert_problem, http_client, metrics_text, running_app
from recfleet_gateway.rest.auth import SCOPES


async def test_unknown_query_parameter_is_named(client):
    body = assert_problem(await client.get("/v1/recommendations", params={"user_id": "u1", "limt": 5}), 400)
    assert "limt" in body["detail"]
    assert body["errors"] == [{"field": "query.limt", "message": "unknown query parameter"}]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"user_id": "u1", "limit": 0}, "query.limit"),
        ({"user_id": "u1", "limit": 101}, "query.limit"),
        ({"user_id": "u1", "limit": "ten"}, "query.limit"),
        ({"user_id": "bad id"}, "query.user_id"),
        ({"user_id": "x" * 129}, "query.user_id"),
        ({}, "query.user_id"),
        ({"user_id": "u1", "exclude": "ok,not ok"}, "query.exclude[0]"),
    ],
)
async def test_validation_errors_are_400_with_field_paths(client, params, field):
    body = assert_problem(await client.get("/v1/recommendations", params=params), 400)
    assert field in [error["field"] for error in body["errors"]]


async def test_bad_path_id_and_body_fields(client):
    body = assert_problem(await client.put("/v1/items/bad%20id", json={}), 400)
    assert body["errors"][0]["field"] == "path.item_id"
    body = assert_problem(await client.put("/v1/items/m1", json={"age_rating": 12, "colour": "red"}), 400)
    assert {"body.age_rating", "body.colour"} <= {e["field"] for e in body["errors"]}
    assert_problem(
        await client.put("/v1/items/m1", content=b"{not json", headers={"content-type": "application/json"}), 400
    )


async def test_unknown_route_and_method_are_problems(client):
    assert_problem(await client.get("/v1/nothing-here"), 404)
    assert_problem(await client.delete("/v1/popular"), 405)
    # `Allow` names every method of the resource, whichever route matched first.
    reply = await client.delete("/admin/v1/experiments")
    assert_problem(reply, 405)
    assert reply.headers["Allow"] == "GET, POST"


async def test_a_concrete_path_is_never_served_by_a_templated_one(client):
    # `/admin/v1/api-keys/bootstrap` is a path of its own: DELETE there is not a revocation
    # of a key called "bootstrap" (`/admin/v1/api-keys/{key_id}`), as OpenAPI reads it.
    reply = await client.delete("/admin/v1/api-keys/bootstrap")
    assert_problem(reply, 405)
    assert reply.headers["Allow"] == "GET"
    reply = await client.patch("/admin/v1/api-keys/bootstrap")
    assert reply.headers["Allow"] == "GET"
    assert (await client.get("/admin/v1/api-keys/bootstrap")).status_code == 200
    assert_problem(await client.delete("/admin/v1/api-keys/key_missing"), 404)


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("PUT", "/v1/items/m1", {"age_rating": False}, "body.age_rating"),
        ("PUT", "/v1/items/m1", {"available": 0}, "body.available"),
        ("PUT", "/v1/items/m1", {"title": "a\x00b"}, "body.title"),
        ("PUT", "/v1/items/m1", {"tags": ["  "]}, "body.tags[0]"),
        ("PUT", "/v1/items/m1", {"published_at": 1_700_000_000}, "body.published_at"),
        ("PUT", "/v1/items/m1", {"published_at": "2026-01-01T00:00:00"}, "body.published_at"),
        ("POST", "/v1/items:batch", {"items": [{"item_id": "m1", "age_rating": False}]}, "body.items[0].age_rating"),
        ("PUT", "/v1/users/u1/profile", {"age": False}, "body.age"),
        ("PUT", "/v1/users/u1/profile", {"age": 20.5}, "body.age"),
        ("PUT", "/v1/users/u1/profile", {"liked_items": ["m1"] * 101}, "body.liked_items"),
        ("PUT", "/admin/v1/traffic/ranking", {"weight": True}, "body.weight"),
        ("PUT", "/admin/v1/traffic/ranking", {"weight": 0, "shadow_percent": False}, "body.shadow_percent"),
    ],
)
async def test_types_are_strict(client, method, path, body, field):
    problem = assert_problem(await client.request(method, path, json=body), 400)
    assert field in [error["field"] for error in problem["errors"]], problem


async def test_an_integral_number_is_an_integer_as_in_json_schema(client):
    reply = await client.put("/admin/v1/traffic/ranking", json={"weight": 0.0, "shadow_percent": 0})
    assert reply.status_code == 200, reply.text
    reply = await client.put("/v1/users/u1/profile", json={"age": 20.0})
    assert reply.status_code == 200, reply.text
    assert reply.json()["age"] == 20


async def test_a_batch_naming_one_item_twice_stores_the_later(client, fleet):
    items = [{"item_id": "twice-1", "title": "first"}, {"item_id": "twice-1", "title": "second"}]
    reply = await client.post("/v1/items:batch", json={"items": items})
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"upserted": 1, "created": 1}
    assert fleet.features.servicer.items["twice-1"].title == "second"


@pytest.mark.parametrize(
    ("cursor", "detail"),
    [("eyJkIjoiIn0", "the cursor is not one this API issued"), ("not a cursor!", "invalid request: query.cursor")],
)
async def test_a_cursor_this_api_did_not_issue_is_a_400_naming_it(client, cursor, detail):
    reply = await client.get("/v1/recommendations", params={"user_id": "warm-1", "cursor": cursor})
    body = assert_problem(reply, 400)
    assert body["detail"] == detail
    assert [error["field"] for error in body["errors"]] == ["query.cursor"]


async def test_body_over_one_mebibyte_is_413(client):
    big = b'{"events": [' + b'{"user_id": "u1", "item_id": "m1", "type": "view"},' * 25_000 + b"]}"
    assert_problem(await client.post("/v1/events", content=big, headers={"content-type": "application/json"}), 413)


async def test_chunked_body_over_the_limit_is_413(client):
    async def chunks():
        for _ in range(20):
            yield b" " * 65_536

    reply = await client.post("/v1/events", content=chunks(), headers={"content-type": "application/json"})
    assert_problem(reply, 413)


ROUTES = [
    ("GET", "/v1/recommendations?user_id=warm-1", None, "recommend:read"),
    ("GET", "/v1/items/m10/similar", None, "recommend:read"),
    ("GET", "/v1/popular", None, "recommend:read"),
    ("POST", "/v1/events", {"events": [{"user_id": "u1", "item_id": "m1", "type": "view"}]}, "events:write"),
    ("PUT", "/v1/items/m99", {"title": "t"}, "catalog:write"),
    ("POST", "/v1/items:batch", {"items": [{"item_id": "m98"}]}, "catalog:write"),
    ("PUT", "/v1/users/u1/profile", {"age": 20}, "users:admin"),
    ("GET", "/v1/users/u1/export", None, "users:admin"),
    ("DELETE", "/v1/users/u-erase", None, "users:admin"),
    ("GET", "/v1/erasures/er_missing", None, "users:admin"),
    ("GET", "/admin/v1/models", None, "admin"),
    ("POST", "/admin/v1/models/als/promote", {"version": "als-missing"}, "admin"),
    ("POST", "/admin/v1/models/ranker/rollback", None, "admin"),
    ("POST", "/admin/v1/jobs/popularity", None, "admin"),
    ("GET", "/admin/v1/jobs/job_missing", None, "admin"),
    ("GET", "/admin/v1/api-keys", None, "admin"),
    ("POST", "/admin/v1/api-keys", {"name": "n", "scopes": ["admin"]}, "admin"),
    ("DELETE", "/admin/v1/api-keys/key_missing", None, "admin"),
    ("GET", "/admin/v1/traffic", None, "admin"),
    ("PUT", "/admin/v1/traffic/ranking", {"weight": 0, "shadow_percent": 0}, "admin"),
    ("POST", "/admin/v1/rollback/ranking", None, "admin"),
]


async def test_authorization_matrix(app, client, anonymous):
    secrets = {}
    for scope in SCOPES:
        reply = await client.post("/admin/v1/api-keys", json={"name": f"only-{scope}", "scopes": [scope]})
        assert reply.status_code == 201, reply.text
        secrets[scope] = reply.json()["secret"]
    for method, path, body, needed in ROUTES:
        reply = await anonymous.request(method, path, json=body)
        assert_problem(reply, 401)
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
        unknown = await anonymous.request(method, path, json=body, headers={"X-API-Key": "rfk_not-a-key"})
        assert_problem(unknown, 401)
        for scope, secret in secrets.items():
            async with http_client(app, secret) as keyed:
                reply = await keyed.request(method, path, json=body)
            if scope == needed:
                assert reply.status_code not in (401, 403), (method, path, scope, reply.text)
            else:
                problem = assert_problem(reply, 403)
                assert needed in problem["detail"], (method, path, scope)


async def test_x_api_key_header_and_revocation(app, client):
    created = (await client.post("/admin/v1/api-keys", json={"name": "reader", "scopes": ["recommend:read"]})).json()
    assert created["secret"].startswith("rfk_")
    listed = (await client.get("/admin/v1/api-keys")).json()["keys"]
    assert created["key_id"] in {k["key_id"] for k in listed}
    assert all("secret" not in k for k in listed)
    async with http_client(app, None) as http:
        ok = await http.get("/v1/popular", headers={"X-API-Key": created["secret"]})
        assert ok.status_code == 200
        revoked = await client.delete(f"/admin/v1/api-keys/{created['key_id']}")
        assert revoked.json()["revoked_at"] is not None
        assert_problem(await http.get("/v1/popular", headers={"X-API-Key": created["secret"]}), 401)


async def test_rate_limit_per_user_gives_429_with_retry_after(gateway_settings):
    settings = gateway_settings.model_copy(update={"rate_limit_per_user": "3/minute"})
    async with running_app(settings) as application, http_client(application) as http:
        for _ in range(3):
            reply = await http.get("/v1/recommendations", params={"user_id": "warm-1"})
            assert reply.status_code == 200
        limited = await http.get("/v1/recommendations", params={"user_id": "warm-1"})
        assert_problem(limited, 429)
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert limited.headers["RateLimit-Remaining"] == "0"
        assert limited.headers["RateLimit-Limit"] == "3"
        assert int(limited.headers["RateLimit-Reset"]) == int(limited.headers["Retry-After"])
        # Another user is not limited by this one's window.
        assert (await http.get("/v1/recommendations", params={"user_id": "warm-2"})).status_code == 200


async def test_rate_limit_holds_for_a_burst_larger_than_its_connection_pool(redis_url):
    """A burst of checks larger than the limit store's connection pool waits for
    connections and is counted, rather than let through uncounted."""
    from prometheus_client import REGISTRY
    from recfleet_gateway.rest.problems import Problem
    from recfleet_gateway.rest.ratelimit import RateLimiter

    # Generous waits: this is about the pool, not about a slow machine.
    limiter = RateLimiter(redis_url, "1000/minute", "5/minute", timeout_seconds=10, max_connections=4)
    errors = REGISTRY.get_sample_value("recfleet_gateway_rate_limit_errors_total") or 0
    user = f"burst-{uuid.uuid4().hex[:8]}"

    async def one() -> int:
        try:
            await limiter.check("key-burst", "recommend:read", user)
        except Problem as problem:
            return problem.status
        return 200

    codes = await asyncio.gather(*(one() for _ in range(60)))
    assert sorted(codes).count(200) == 5, codes
    assert sorted(codes).count(429) == 55, codes
    assert (REGISTRY.get_sample_value("recfleet_gateway_rate_limit_errors_total") or 0) == errors


async def test_rate_limit_per_key(gateway_settings):
    settings = gateway_settings.model_copy(update={"rate_limit_per_key": "2/minute"})
    async with running_app(settings) as application, http_client(application) as http:
        assert (await http.get("/v1/popular")).status_code == 200
        assert (await http.get("/v1/popular")).status_code == 200
        limited = await http.get("/v1/popular")
        assert_problem(limited, 429)
        assert int(limited.headers["Retry-After"]) >= 1


async def test_a_limit_store_that_stops_answering_lets_requests_through_quickly(gateway_settings):
    """The limits protect the fleet but must not take it down: a Redis that accepts
    connections and never answers costs a request a bounded wait, then lets it through."""
    from prometheus_client import REGISTRY
    from recfleet_gateway.rest.ratelimit import RateLimiter

    accepted = []

    async def swallow(reader, writer):
        accepted.append(writer)
        await reader.read()  # never answers

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    limiter = RateLimiter(f"redis://127.0.0.1:{port}/0", "2/minute", "2/minute")
    errors = REGISTRY.get_sample_value("recfleet_gateway_rate_limit_errors_total") or 0
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(3):  # past the limit: nothing could count, so nothing is refused
            await asyncio.wait_for(limiter.check("key-1", "recommend:read", "user-1"), timeout=5)
        assert loop.time() - started < 3
        assert accepted, "the limiter never reached the silent store"
        assert REGISTRY.get_sample_value("recfleet_gateway_rate_limit_errors_total") == errors + 3
    finally:
        for writer in accepted:
            writer.close()
        server.close()


async def test_a_dead_downstream_degrades_answers_but_never_makes_the_gateway_unready(client, anonymous, fleet):
    assert (await anonymous.get("/healthz/live")).json() == {"status": "live"}
    ready = await anonymous.get("/healthz/ready")
    assert ready.status_code == 200, ready.text
    await fleet.ranking.stop()
    ready = await anonymous.get("/healthz/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["not_serving"] == ["ranking"]
    reply = await client.get("/v1/recommendations", params={"user_id": "warm-1"})
    assert reply.status_code == 200, reply.text
    assert "ranking-unavailable" in reply.json()["degraded"]


async def test_metrics_are_not_served_on_the_public_port(anonymous):
    assert (await anonymous.get("/metrics")).status_code == 404


async def test_metrics_expose_gateway_and_grpc_client_families(client, anonymous):
    await client.get("/v1/recommendations", params={"user_id": "warm-1"})
    text = metrics_text()
    assert 'recfleet_gateway_requests_total{route="/v1/recommendations",status="200"}' in text
    assert 'recfleet_gateway_request_seconds_bucket{le="0.5",route="/v1/recommendations"}' in text
    assert 'grpc_client_handled_total{downstream="ranking"' in text


async def test_openapi_documents_every_status_with_a_schema(anonymous):
    schema = (await anonymous.get("/openapi.json")).json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, (method, path)
            for status, response in responses.items():
                content = response.get("content", {})
                assert content, (method, path, status)
                media_type = "application/problem+json" if status[0] in "45" else "application/json"
                assert list(content) == [media_type], (method, path, status)
                assert content[media_type].get("schema"), (method, path, status)
            if path.startswith("/v1/"):
                assert {"400", "401", "403", "429"} <= set(responses), (method, path)
    # OpenAPI counts paths that differ only in a parameter's name as one path.
    templates = [re.sub(r"\{[^}]+\}", "{}", path) for path in schema["paths"]]
    assert len(templates) == len(set(templates))
    cursor = next(p for p in schema["paths"]["/v1/recommendations"]["get"]["parameters"] if p["name"] == "cursor")
    assert cursor["schema"]["anyOf"][0] == {"type": "string", "maxLength": 2048, "pattern": "^[A-Za-z0-9_-]*$"}
    events = schema["components"]["schemas"]["EventBatch"]["properties"]["events"]
    assert events["items"]["oneOf"] == [
        {"$ref": "#/components/schemas/InteractionEvent"},
        {"$ref": "#/components/schemas/RatingEvent"},
    ]


# Every keyword a schema object of the document may use (JSON Schema 2020-12 as OpenAPI
# 3.1 takes it, with OpenAPI's own `discriminator` and `example`). pydantic writes a
# constraint it cannot express under the constraint's own name (`ge`, `le`), which every
# client and fuzzer reading the document ignores.
SCHEMA_KEYWORDS = {
    "$ref", "$defs", "type", "enum", "const", "title", "description", "default", "examples", "example",
    "deprecated", "readOnly", "writeOnly", "format", "pattern", "minLength", "maxLength", "minimum",
    "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "items", "prefixItems", "minItems",
    "maxItems", "uniqueItems", "contains", "properties", "required", "additionalProperties",
    "patternProperties", "propertyNames", "minProperties", "maxProperties", "dependentRequired",
    "anyOf", "oneOf", "allOf", "not", "if", "then", "else", "discriminator", "contentMediaType",
    "contentEncoding",
}  # fmt: skip
SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
SUBSCHEMA = ("items", "not", "if", "then", "else", "additionalProperties", "contains", "propertyNames")
SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs")
# Subschemas a value is refused by, or only tested against: a string there takes nothing.
REFUSING = ("not", "if", "contains", "propertyNames")


def each_schema(
    schema: object,
    where: str,
    components: dict | None = None,
    skip: tuple[str, ...] = (),
    seen: frozenset = frozenset(),
) -> Iterator[tuple[str, dict]]:
    """`(where, schema)` for `schema` and each of its subschemas but those under `skip`,
    references followed (each once) when `components` is given."""
    if not isinstance(schema, dict):
        return
    if components is not None and "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name not in seen:
            yield from each_schema(components[name], name, components, skip, seen | {name})
        return
    yield where, schema
    for key in SUBSCHEMA:
        if key not in skip:
            yield from each_schema(schema.get(key), f"{where}.{key}", components, skip, seen)
    for key in SUBSCHEMA_LISTS:
        for n, sub in enumerate(schema.get(key, ())):
            yield from each_schema(sub, f"{where}.{key}[{n}]", components, skip, seen)
    for key in SUBSCHEMA_MAPS:
        for name, sub in schema.get(key, {}).items():
            yield from each_schema(sub, f"{where}.{name}", components, skip, seen)


def request_schemas(document: dict) -> Iterator[tuple[str, dict]]:
    """`(where, schema)` of every parameter and request body of every operation."""
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", ()):
                yield f"{method} {path} {parameter['in']}.{parameter['name']}", parameter["schema"]
            for media, content in operation.get("requestBody", {}).get("content", {}).items():
                yield f"{method} {path} body {media}", content["schema"]


async def test_every_schema_in_the_document_speaks_json_schema(anonymous):
    document = (await anonymous.get("/openapi.json")).json()
    roots = [*document["components"]["schemas"].items(), *request_schemas(document)]
    found = [
        f"{where}.{key}"
        for root, schema in roots
        for where, sub in each_schema(schema, root)
        for key in sub
        if key not in SCHEMA_KEYWORDS
    ]
    assert not found, found
    # What it once wrote for the rollout's stages: the bounds the route checks.
    stages = document["components"]["schemas"]["RolloutIn"]["properties"]["stages"]["anyOf"][0]["items"]
    assert stages == {"type": "integer", "minimum": 1, "maximum": 100}


async def test_no_request_takes_a_string_its_schema_does_not_bound(anonymous):
    # Every text a request carries is stored, logged or passed on: its schema says what it
    # may hold (at least: no NUL, which Postgres text cannot store), so a client learns the
    # rule from the document instead of from a 500.
    document = (await anonymous.get("/openapi.json")).json()
    components = document["components"]["schemas"]
    found = [
        where
        for root, schema in request_schemas(document)
        for where, sub in each_schema(schema, root, components, skip=REFUSING)
        if sub.get("type") == "string" and not {"pattern", "enum", "const", "format"} & set(sub)
    ]
    assert not found, found


@pytest.mark.parametrize("model", ["ApiKeyIn", "RotateIn"])
async def test_the_schema_states_that_a_key_takes_one_expiry(anonymous, client, model):
    document = (await anonymous.get("/openapi.json")).json()
    validator = jsonschema.Draft202012Validator(
        {**document["components"]["schemas"][model], "components": document["components"]}
    )
    base = {"name": "k", "scopes": ["recommend:read"]} if model == "ApiKeyIn" else {}
    both = {**base, "expires_at": "2999-01-01T00:00:00Z", "ttl_seconds": 60}
    assert not validator.is_valid(both)
    for one in (
        {"ttl_seconds": 60},
        {"expires_at": "2999-01-01T00:00:00Z"},
        {"expires_at": None, "ttl_seconds": 60},
        {},
    ):
        assert validator.is_valid({**base, **one}), one
    # The route refuses what the schema refuses, and nothing was created.
    before = (await client.get("/admin/v1/api-keys")).json()["keys"]
    if model == "ApiKeyIn":
        reply = await client.post("/admin/v1/api-keys", json=both)
    else:
        created = (
            await client.post("/admin/v1/api-keys", json={"name": "to-rotate", "scopes": ["recommend:read"]})
        ).json()
        before = (await client.get("/admin/v1/api-keys")).json()["keys"]
        reply = await client.post(f"/admin/v1/api-keys/{created['key_id']}/rotate", json=both)
    assert_problem(reply, 400)
    assert (await client.get("/admin/v1/api-keys")).json()["keys"] == before


async def test_bootstrap_key_is_the_configured_one(anonymous):
    reply = await anonymous.get("/v1/popular", headers={"Authorization": f"Bearer {ADMIN_KEY}x"})
    assert_problem(reply, 401)


async def test_waiting_retry_after_is_enough(gateway_settings):
    settings = gateway_settings.model_copy(update={"rate_limit_per_user": "2/2 seconds"})
    async with running_app(settings) as application, http_client(application) as http:
        params = {"user_id": "warm-1"}
        while (reply := await http.get("/v1/recommendations", params=params)).status_code == 200:
            pass
        assert_problem(reply, 429)
        await asyncio.sleep(int(reply.headers["Retry-After"]))
        assert (await http.get("/v1/recommendations", params=params)).status_code == 200


def test_a_body_with_an_integer_beyond_64_bits_is_still_json():
    """A JSON number such as 1e30 in an event's context reads back from Postgres as an
    integer orjson refuses; an export holding it is answered all the same."""
    import json
    from datetime import UTC, datetime

    from recfleet_gateway.rest.responses import JSONBody

    moment = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    body = JSONBody({"context": {"n": 10**30}, "at": moment, "id": uuid.UUID(int=1)}).body
    assert json.loads(body) == {
        "context": {"n": 10**30},
        "at": "2026-01-02T03:04:05.000006+00:00",
        "id": "00000000-0000-0000-0000-000000000001",
    }

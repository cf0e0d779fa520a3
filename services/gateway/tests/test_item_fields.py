"""`fields=` on the three list routes: catalog attributes inline on each item, from a
catalog written through the API."""

from __future__ import annotations

import asyncio
import re

import grpc
import pytest
from gateway_catalog_store import catalog_fleet
from gateway_scripted_fleet import ITEMS, category_of
from gateway_test_support import assert_problem, http_client, running_app

ALL_FIELDS = ("title", "categories", "creator", "published_at", "tags", "age_rating", "regions", "available")
ITEM_KEYS = {"item_id", "rank", "score", "source"}
DEFAULTS = {
    "title": "",
    "categories": [],
    "creator": "",
    "published_at": None,
    "tags": [],
    "age_rating": 0,
    "regions": [],
    "available": True,
}
ROUTES = [
    ("/v1/recommendations", {"user_id": "warm-1"}),
    ("/v1/items/m3/similar", {}),
    ("/v1/popular", {}),
]
ROUTE_IDS = ["recommendations", "similar", "popular"]


@pytest.fixture
async def fleet(redis_url):
    scripted = catalog_fleet(redis_url)
    await scripted.start()
    yield scripted
    await scripted.stop()


def catalog_entry(item_id: str) -> dict:
    number = int(item_id[1:])
    return {
        "title": f"Title of {item_id}",
        "categories": [category_of(item_id), "feature"],
        "creator": f"studio-{number % 7}",
        "published_at": "2025-03-04T05:06:07Z",
        "tags": [f"tag-{number % 3}"],
        "age_rating": 13 if number % 2 else 0,
        "regions": ["DE", "FR"] if number % 5 == 0 else [],
        "available": True,
    }


def expected(item_id: str, fields: tuple[str, ...] = ALL_FIELDS) -> dict:
    entry = {**catalog_entry(item_id), "published_at": "2025-03-04T05:06:07+00:00"}
    return {name: entry[name] for name in fields}


async def write_catalog(client) -> None:
    reply = await client.post("/v1/items:batch", json={"items": [{"item_id": i, **catalog_entry(i)} for i in ITEMS]})
    assert reply.status_code == 200, reply.text


def attributes(item: dict) -> dict:
    return {name: value for name, value in item.items() if name not in ITEM_KEYS}


@pytest.mark.parametrize(("path", "params"), ROUTES, ids=ROUTE_IDS)
async def test_each_list_route_returns_the_attributes_named(client, fleet, path, params):
    await write_catalog(client)
    # Comma-separated and repeated; each attribute once, in the catalog's order.
    wanted = {**params, "fields": ["creator,title", "categories,title"]}
    reply = await client.get(path, params=wanted)
    assert reply.status_code == 200, reply.text
    items = reply.json()["items"]
    assert items
    for item in items:
        assert list(attributes(item)) == ["title", "categories", "creator"]
        assert attributes(item) == expected(item["item_id"], ("title", "categories", "creator"))
    # One feature-store read for the whole list, and none while the attributes are held.
    reads = fleet.features.servicer.item_reads
    assert len(reads) == 1
    assert set(reads[0]) == {item["item_id"] for item in items}
    again = await client.get(path, params=wanted)
    assert [attributes(item) for item in again.json()["items"]] == [attributes(item) for item in items]
    assert len(reads) == 1


async def test_every_attribute_as_the_catalog_holds_it(client):
    await write_catalog(client)
    reply = await client.get("/v1/popular", params={"fields": ",".join(ALL_FIELDS), "limit": 10})
    items = reply.json()["items"]
    assert len(items) == 10
    for item in items:
        assert attributes(item) == expected(item["item_id"])
    assert reply.json()["degraded"] == []


async def test_items_without_a_catalog_entry_get_the_defaults(client):
    reply = await client.get("/v1/popular", params={"fields": ",".join(ALL_FIELDS)})
    assert reply.status_code == 200, reply.text
    assert [attributes(item) for item in reply.json()["items"]] == [DEFAULTS] * len(reply.json()["items"])


@pytest.mark.parametrize(("path", "params"), ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize(("fields", "unknown"), [("title,colour", "colour"), ("title,", ""), ("Title", "Title")])
async def test_an_unknown_attribute_is_refused_by_name(client, path, params, fields, unknown):
    body = assert_problem(await client.get(path, params={**params, "fields": fields}), 400)
    assert repr(unknown) in body["detail"]
    assert [error["field"] for error in body["errors"]] == ["query.fields"]
    assert repr(unknown) in body["errors"][0]["message"]


@pytest.mark.parametrize(("path", "params"), ROUTES, ids=ROUTE_IDS)
async def test_without_fields_items_carry_no_attributes(client, fleet, path, params):
    await write_catalog(client)
    for query in (params, {**params, "fields": ""}):
        reply = await client.get(path, params=query)
        assert reply.status_code == 200, reply.text
        assert all(set(item) == ITEM_KEYS for item in reply.json()["items"])
        if path == "/v1/popular":
            assert "degraded" not in reply.json()
    assert fleet.features.servicer.item_reads == []


async def test_one_cached_list_serves_every_fields_value(client, fleet):
    await write_catalog(client)
    params = {"user_id": "warm-1", "limit": 10}
    titled = (await client.get("/v1/recommendations", params={**params, "fields": "title"})).json()
    by_creator = (await client.get("/v1/recommendations", params={**params, "fields": "creator"})).json()
    bare = (await client.get("/v1/recommendations", params=params)).json()
    ids = [item["item_id"] for item in titled["items"]]
    assert [item["item_id"] for item in by_creator["items"]] == ids == [item["item_id"] for item in bare["items"]]
    assert [attributes(item) for item in titled["items"]] == [expected(i, ("title",)) for i in ids]
    assert [attributes(item) for item in by_creator["items"]] == [expected(i, ("creator",)) for i in ids]
    assert all(set(item) == ITEM_KEYS for item in bare["items"])
    # Ranked once: the second and third answers came from the result cache.
    assert fleet.ranking.servicer.calls.count("Rank") == 1


async def test_the_pages_of_a_cursor_carry_the_fields_they_ask_for(client):
    await write_catalog(client)
    first = (
        await client.get("/v1/recommendations", params={"user_id": "warm-1", "limit": 5, "fields": "title"})
    ).json()
    assert first["next_cursor"]
    reply = await client.get(
        "/v1/recommendations",
        params={"user_id": "warm-1", "limit": 5, "cursor": first["next_cursor"], "fields": "title,creator"},
    )
    assert reply.status_code == 200, reply.text
    second = reply.json()["items"]
    assert second
    assert not {item["item_id"] for item in second} & {item["item_id"] for item in first["items"]}
    for item in second:
        assert attributes(item) == expected(item["item_id"], ("title", "creator"))


@pytest.mark.parametrize("batch", [False, True], ids=["put", "batch"])
async def test_a_catalog_change_shows_in_the_next_answer(client, batch):
    await write_catalog(client)

    async def title_of_m1() -> str:
        reply = await client.get("/v1/popular", params={"fields": "title", "limit": 5})
        return next(item["title"] for item in reply.json()["items"] if item["item_id"] == "m1")

    assert await title_of_m1() == "Title of m1"
    renamed = {**catalog_entry("m1"), "title": "Renamed"}
    if batch:
        reply = await client.post("/v1/items:batch", json={"items": [{"item_id": "m1", **renamed}]})
    else:
        reply = await client.put("/v1/items/m1", json=renamed)
    assert reply.status_code == 200, reply.text
    assert await title_of_m1() == "Renamed"


async def test_a_catalog_change_through_another_replica_reaches_this_one(client, gateway_settings):
    """The feature store announces every upsert; each replica drops what it held."""
    await write_catalog(client)
    async with running_app(gateway_settings) as other_app, http_client(other_app) as other:

        async def title_of_m1() -> str:
            reply = await other.get("/v1/popular", params={"fields": "title", "limit": 5})
            return next(item["title"] for item in reply.json()["items"] if item["item_id"] == "m1")

        assert await title_of_m1() == "Title of m1"
        reply = await client.put("/v1/items/m1", json={**catalog_entry("m1"), "title": "Renamed elsewhere"})
        assert reply.status_code == 200, reply.text
        # The announcement travels through Redis: wait for it (bounded), never for a time.
        for _ in range(200):
            if await title_of_m1() == "Renamed elsewhere":
                break
            await asyncio.sleep(0.05)
        assert await title_of_m1() == "Renamed elsewhere"


@pytest.mark.parametrize(("path", "params"), ROUTES, ids=ROUTE_IDS)
async def test_without_the_feature_store_the_list_comes_without_attributes(client, fleet, path, params):
    await write_catalog(client)
    fleet.features.servicer.failing_item_reads = grpc.StatusCode.UNAVAILABLE
    reply = await client.get(path, params={**params, "fields": "title"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["items"]
    assert all(set(item) == ITEM_KEYS for item in body["items"])
    assert "item-attributes-unavailable" in body["degraded"]


async def test_a_server_answering_rows_is_read_too(client, fleet):
    """A feature store from before columnar answers (rows) gives the same attributes."""
    await write_catalog(client)
    fleet.features.servicer.answer_rows = True
    reply = await client.get("/v1/popular", params={"fields": "title,tags,published_at", "limit": 5})
    assert reply.status_code == 200, reply.text
    for item in reply.json()["items"]:
        assert attributes(item) == expected(item["item_id"], ("title", "published_at", "tags"))


async def test_the_openapi_document_states_fields_on_the_three_routes(client):
    schema = (await client.get("/openapi.json")).json()
    for path, _ in ROUTES:
        template = path.replace("m3", "{item_id}")
        parameters = {p["name"]: p for p in schema["paths"][template]["get"]["parameters"]}
        fields = parameters["fields"]
        array = next(option for option in fields["schema"]["anyOf"] if option.get("type") == "array")
        pattern = re.compile(array["items"]["pattern"])
        assert pattern.fullmatch("title,categories")
        assert pattern.fullmatch("")
        assert not pattern.fullmatch("title,colour")
        assert not pattern.fullmatch("title,")
        for name in ALL_FIELDS:
            assert name in fields["description"]
    items = schema["components"]["schemas"]
    for model in ("RecommendedItem", "ScoredItemOut"):
        properties = items[model]["properties"]
        assert set(ALL_FIELDS) <= set(properties)
        assert set(items[model]["required"]) == ITEM_KEYS
        assert properties["title"]["default"] == ""

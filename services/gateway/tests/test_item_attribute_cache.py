"""The gateway's item-attribute cache and the decoding of feature-store answers, with
known answers (no network)."""

from __future__ import annotations

from datetime import UTC, datetime

from recfleet.features.v1 import features_pb2
from recfleet_gateway.serving.attributes import CATALOG_FIELDS, ItemAttributeCache, decode, default_attributes
from recfleet_gateway.serving.schemas import ItemIn


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_defaults_are_the_catalog_items():
    assert default_attributes() == {name: ItemIn.model_fields[name].default for name in CATALOG_FIELDS}


def test_entries_expire_and_are_forgotten():
    clock = Clock()
    cache = ItemAttributeCache(10, clock=clock)
    cache.store({"a": {"title": "A"}, "b": {"title": "B"}}, cache.generation)
    assert cache.lookup(["a", "b", "c"]) == ({"a": {"title": "A"}, "b": {"title": "B"}}, ["c"])
    cache.forget(["a"])
    assert cache.lookup(["a", "b"]) == ({"b": {"title": "B"}}, ["a"])
    clock.now += 12
    assert cache.lookup(["b"]) == ({}, ["b"])
    assert cache.stale(["b"]) == {"b": {"title": "B"}}


def test_a_read_that_started_before_a_change_is_not_kept():
    cache = ItemAttributeCache(10)
    started = cache.generation
    cache.forget(["a"])
    cache.store({"a": {"title": "old"}}, started)
    assert cache.lookup(["a"]) == ({}, ["a"])


def test_the_oldest_entries_go_first_when_full():
    cache = ItemAttributeCache(10, max_items=2)
    for item_id in ("a", "b", "c"):
        cache.store({item_id: {}}, cache.generation)
    assert len(cache) == 2
    assert cache.lookup(["a", "b", "c"])[1] == ["a"]


def test_columns_decode_to_the_apis_values():
    reply = features_pb2.GetItemFeaturesResponse(
        columns=[
            features_pb2.FeatureColumn(name="title", texts=["Heat", ""]),
            features_pb2.FeatureColumn(
                name="categories", lists=[features_pb2.StringList(values=["crime", "drama"]), features_pb2.StringList()]
            ),
            features_pb2.FeatureColumn(name="published_at", numbers=[818035200, 0]),
            features_pb2.FeatureColumn(name="age_rating", numbers=[16, 0]),
            features_pb2.FeatureColumn(name="available", numbers=[0, 1]),
            # Not one value per item: the default stands.
            features_pb2.FeatureColumn(name="creator", texts=["only one"]),
        ]
    )
    decoded = decode(["heat", "unknown"], reply)
    assert decoded["heat"] == {
        **default_attributes(),
        "title": "Heat",
        "categories": ["crime", "drama"],
        "published_at": datetime(1995, 12, 4, tzinfo=UTC),
        "age_rating": 16,
        "available": False,
    }
    assert decoded["unknown"] == default_attributes()

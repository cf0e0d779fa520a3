"""Unit tests of the pure modules: rows, validation, wire encoding. (The registry and the
point-in-time join are tested beside them in recfleet_store.features.)"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from recfleet_store.features import registry

from .rows import build_row, choose_vector, constraints_from, decode_values, timestamp_field
from .validation import CatalogItem, Profile, ValidationError, validate_items, validate_profile

REGISTRY = registry.load()
T = datetime(2025, 1, 1, tzinfo=UTC)


def test_row_uses_stored_values_and_defaults_missing_stale_and_mistyped_ones():
    views = list(REGISTRY.for_entity("item").values())
    now = T.timestamp()
    stored = {
        "title": "A",
        "popularity": 0.4,
        timestamp_field("popularity"): now - 3 * 86400,
        "popularity_7d": 0.3,
        timestamp_field("popularity_7d"): now - 60,
        "age_rating": [1],
        "available": False,
    }
    row = build_row("i", stored, views, now)
    assert row.values["title"] == "A" and row.values["popularity_7d"] == 0.3
    assert row.values["popularity"] == 0.0 and "popularity" in row.defaulted
    assert row.values["age_rating"] == 0.0 and "age_rating" in row.defaulted
    assert row.values["available"] == 0.0 and "available" not in row.defaulted
    assert "title" not in row.defaulted and "creator" in row.defaulted


def test_joined_values_decode_only_when_each_is_json():
    assert decode_values('0.5,null,["a, b"],"x"', 4) == [0.5, None, ["a, b"], "x"]
    assert decode_values(b'{"k": 1}', 1) == [{"k": 1}]
    assert decode_values("", 0) == []
    assert decode_values("not json,1", 2) is None
    # A value that is not JSON but splices into valid JSON is caught by the count.
    assert decode_values("1,2,3", 2) is None


def test_vector_is_returned_only_for_its_version():
    stored = {b"als-2": np.array([1, 2], dtype="<f4").tobytes(), b"als-1": b"\0" * 8}
    assert choose_vector(stored, "als-2") == ([1.0, 2.0], "")
    assert choose_vector(stored, "als-3") == (None, "version-mismatch:als-1,als-2")
    assert choose_vector(stored, "") == (None, "version-mismatch:als-1,als-2")
    assert choose_vector({}, "als-2") == (None, "missing")


def test_constraints_tolerate_missing_and_odd_values():
    c = constraints_from({"age": "old", "country": 5, "blocked_categories": ["X"]}, {"b", "a"})
    assert (c.age, c.country, c.blocked_categories, c.seen_item_ids) == (0, "", ["X"], ["a", "b"])


def test_items_are_normalised_and_errors_name_index_and_field():
    [item] = validate_items([CatalogItem("m:1", title=" T ", categories=["A", "A", "B"], regions=["FR", "DE", "FR"])])
    assert (item.title, item.categories, item.regions) == ("T", ["A", "B"], ["DE", "FR"])
    assert item.online_fields()["available"] == 1 and item.online_fields()["published_at"] == 0
    cases = [
        ([CatalogItem("")], "items[0].item_id: required"),
        ([CatalogItem("a"), CatalogItem("a")], "items[1].item_id: duplicates items[0] ('a')"),
        ([CatalogItem("a", categories=["ok", " "])], "items[0].categories[1]: must not be empty"),
        ([], "items: at least one item is required"),
    ]
    for items, message in cases:
        with pytest.raises(ValidationError) as caught:
            validate_items(items)
        assert str(caught.value) == message


def test_profile_validation():
    assert validate_profile(Profile("u", liked_items=["1", "1"], age=0)).liked_items == ["1"]
    with pytest.raises(
        ValidationError, match=r"^profile.age: must be between 0 \(unknown\) and 150 years \(got 200\)$"
    ):
        validate_profile(Profile("u", age=200))
    with pytest.raises(ValidationError, match=r"^profile.liked_items\[0\]: must be 1-128 characters"):
        validate_profile(Profile("u", liked_items=["a b"]))


def test_stores_are_chosen_by_url_scheme():
    from .adapters.redis_online import RedisOnlineStore
    from .stores import open_offline_store, open_online_store

    assert isinstance(open_online_store("redis://127.0.0.1:6379/0"), RedisOnlineStore)
    with pytest.raises(ValueError, match="online store URL: unsupported scheme 'memcached'"):
        open_online_store("memcached://127.0.0.1")
    with pytest.raises(ValueError, match="offline store DSN: unsupported scheme 'mysql'"):
        open_offline_store("mysql://127.0.0.1/x")


def test_id_lists_are_checked_at_once_and_the_first_bad_one_is_named():
    from .validation import check_ids

    check_ids(["a", "b:1", "x" * 128], "ids")
    check_ids([], "ids")
    for ids, message in (
        (["a", "b\nc"], "ids[1]: must be 1-128 characters of A-Z a-z 0-9 _ . : - (got 'b\\nc')"),
        (["a", "", "c"], "ids[1]: required"),
        (["a", "y" * 129], "ids[1]: must be 1-128 characters"),
    ):
        with pytest.raises(ValidationError) as caught:
            check_ids(ids, "ids")
        assert str(caught.value).startswith(message)


def test_pre_encoded_rows_parse_as_the_response_message():
    from recfleet.features.v1 import features_pb2

    from .rows import Row
    from .servicer import row_entry

    rows = [
        Row("i" * size or "x", {"title": "t" * size}, ["title"] if size == 5 else []) for size in (0, 5, 200, 20000)
    ]
    answer = features_pb2.GetItemFeaturesResponse.FromString(b"".join(map(row_entry, rows)))
    assert [(r.entity_id, r.values["title"].text, list(r.defaulted)) for r in answer.rows] == [
        (row.entity_id, row.values["title"], row.defaulted) for row in rows
    ]


def test_columns_assembled_from_cells_are_the_message_protobuf_would_build():
    from recfleet.features.v1 import features_pb2

    from .servicer import column_cells, encode_columns

    views = [REGISTRY.view("item", name) for name in ("popularity", "creator", "categories", "title")]
    now = T.timestamp()
    stored = [
        {"popularity": 0.25, "creator": "Zoë", "categories": ["Drama", "War"], "title": "x" * 300},
        {},
        {"popularity": -0.0, "creator": "", "categories": [""], "title": "T"},
    ] + [{"popularity": float(n), "categories": ["c"] * (n % 3)} for n in range(200)]
    rows = [build_row(f"i{n}", values, views, now) for n, values in enumerate(stored)]
    expected = features_pb2.GetItemFeaturesResponse()
    for view in views:
        column = expected.columns.add(name=view.name)
        column.defaulted.extend(n for n, row in enumerate(rows) if view.name in row.defaulted)
        values = [row.values[view.name] for row in rows]
        if view.type == "number":
            column.numbers.extend(values)
        elif view.type == "text":
            column.texts.extend(values)
        else:
            for value in values:
                column.lists.add().values.extend(value)
    encoded = encode_columns(views, rows, [column_cells(row, views) for row in rows])
    assert encoded == expected.SerializeToString()
    assert features_pb2.GetItemFeaturesResponse.FromString(encoded) == expected

    empty = features_pb2.GetItemFeaturesResponse.FromString(encode_columns(views, [], []))
    assert [(c.name, len(c.numbers), len(c.texts), len(c.lists)) for c in empty.columns] == [
        (view.name, 0, 0, 0) for view in views
    ]


def test_wire_varints_match_protobuf():
    from recfleet.features.v1 import features_pb2

    from . import wire

    positions = [0, 1, 127, 128, 300, 16383, 16384, 2**31 - 1]
    column = features_pb2.FeatureColumn(defaulted=positions)
    assert wire.packed_varints(5, positions) == column.SerializeToString()
    assert wire.packed_varints(5, []) == wire.packed_doubles(2, []) == b""

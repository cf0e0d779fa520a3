"""Unit tests of the pure modules: registry, rows, validation, point-in-time join, windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from recfleet_store.windows import bucket_increments, window_counts

from . import registry
from .materialization import BEGINNING, OVERLAP, window_start
from .pointintime import Event, History, stored_features, training_rows
from .rows import build_row, choose_vector, constraints_from, decode_values, timestamp_field
from .validation import CatalogItem, Profile, ValidationError, validate_items, validate_profile

REGISTRY = registry.load()
T = datetime(2025, 1, 1, tzinfo=UTC)


def test_bundled_registry_has_typed_defaults():
    items = REGISTRY.for_entity("item")
    assert items["available"].default == 1.0 and items["regions"].default == []
    assert REGISTRY.for_entity("user")["category_counts"].default == "{}"
    assert REGISTRY.unknown("user", ["age", "height"]) == ["height"]


def test_a_registry_file_given_by_path_replaces_the_bundled_one(tmp_path):
    path = tmp_path / "views.yaml"
    path.write_text(
        "views:\n  - {name: score, entity: item, type: number, source: test, freshness: 60, default: 0.5, version: 2}\n"
    )
    loaded = registry.load(path)
    assert [(v.name, v.entity, v.default, v.freshness_seconds, v.version) for v in loaded.views] == [
        ("score", "item", 0.5, 60, 2)
    ]
    assert loaded.for_entity("user") == {}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"views": []}, "registry: `views` must be a non-empty list"),
        ({"views": [{"name": "x", "entity": "user"}]}, "views[0]: missing type, source, freshness, default, version"),
        (
            {
                "views": [
                    {
                        "name": "x",
                        "entity": "shop",
                        "type": "number",
                        "source": "s",
                        "freshness": 0,
                        "default": 0,
                        "version": 1,
                    }
                ]
            },
            "views[0].entity: must be one of user, item",
        ),
        (
            {
                "views": [
                    {
                        "name": "x",
                        "entity": "user",
                        "type": "number",
                        "source": "s",
                        "freshness": 0,
                        "default": [1],
                        "version": 1,
                    }
                ]
            },
            "views[0].default: x: expected a number, got list",
        ),
    ],
)
def test_malformed_registry_is_refused_with_the_place(document, message):
    with pytest.raises(registry.RegistryError) as caught:
        registry.parse(document)
    assert str(caught.value) == message


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


def test_point_in_time_join_never_uses_a_later_value():
    views = [REGISTRY.view("user", "interaction_count"), REGISTRY.view("item", "popularity")]
    count, popularity = History(), History()
    count.add(T, 1)
    count.add(T + timedelta(hours=2), 2)
    popularity.add(T + timedelta(hours=1), 0.7)
    popularity.add(T - timedelta(hours=1), 0.1)  # out of order: re-sorted
    histories = {("user", "u", "interaction_count"): count, ("item", "i", "popularity"): popularity}
    events = [Event("u", "i", T + timedelta(minutes=m), "click", None) for m in (-5, 0, 61, 120)]
    rows = list(training_rows(events, histories, views))
    assert [r["user__interaction_count"] for r in rows] == [0.0, 1.0, 1.0, 2.0]
    assert [r["item__popularity"] for r in rows] == [0.1, 0.1, 0.7, 0.7]


def test_last_interaction_time_is_derived_from_the_count_history():
    views = [REGISTRY.view("user", "last_seen_at"), REGISTRY.view("item", "last_interaction_at")]
    count = History()
    count.add(T, 1)
    count.add(T + timedelta(hours=2), 2)
    histories = {("user", "u", "interaction_count"): count}
    events = [Event("u", "i", T + timedelta(minutes=m), "click", None) for m in (-1, 0, 90, 120)]
    rows = list(training_rows(events, histories, views))
    seen = [r["user__last_seen_at"] for r in rows]
    assert seen == [0.0, T.timestamp(), T.timestamp(), (T + timedelta(hours=2)).timestamp()]
    assert {r["item__last_interaction_at"] for r in rows} == {0.0}


WINDOWED = ["interactions_1h", "interactions_24h", "interactions_7d"]


def running_count(times: list[datetime]) -> History:
    """The offline history materialization writes: the running count at each distinct time."""
    history = History()
    for position, at in enumerate(sorted(times)):
        if history.times and history.times[-1] == at:
            history.values[-1] = position + 1
        else:
            history.add(at, position + 1)
    return history


def test_windowed_counts_are_derived_from_the_count_history_as_of_each_event():
    views = [REGISTRY.view("item", name) for name in WINDOWED]
    start = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)  # on an hour boundary
    times = [start - timedelta(days=8), start - timedelta(days=2), start - timedelta(hours=3), start, start]
    histories = {("item", "i", "interaction_count"): running_count(times)}
    events = [Event("u", "i", at, "click", None) for at in (start - timedelta(days=2), start, start + timedelta(minutes=59))]
    rows = list(training_rows(events, histories, views))
    # Two days back: only that event (the 8-day-old one is out of every window).
    assert [rows[0][f"item__{name}"] for name in WINDOWED] == [1, 1, 2]
    # At `start`: the two events at that very second, the 3-hour-old one, and the 2-day one.
    assert [rows[1][f"item__{name}"] for name in WINDOWED] == [2, 3, 4]
    # 59 minutes later nothing new happened; the 1-hour window still holds `start`'s bucket.
    assert [rows[2][f"item__{name}"] for name in WINDOWED] == [2, 3, 4]
    assert ("item", "interaction_count") in stored_features(views)


def test_offline_windowed_counts_match_what_the_realtime_buckets_serve():
    """No training/serving skew: for events at random times, the count a training row
    gets equals the realtime consumer's bucket sum at that instant."""
    generator = np.random.default_rng(7)
    base = int(datetime(2025, 3, 1, tzinfo=UTC).timestamp())
    drawn = generator.integers(base, base + 10 * 86400, size=400)
    # Half of them on 5-minute boundaries, where a window's edge falls.
    seconds = sorted(int(s) - int(s) % 300 if n % 2 else int(s) for n, s in enumerate(drawn))
    times = [datetime.fromtimestamp(s, UTC) for s in seconds]
    histories = {("item", "i", "interaction_count"): running_count(times)}
    views = [REGISTRY.view("item", name) for name in WINDOWED]
    events = [Event("u", "i", at, "click", None) for at in times[::5]]
    for event, row in zip(events, training_rows(events, histories, views), strict=True):
        now = int(event.ts.timestamp())
        online = window_counts(bucket_increments([s for s in seconds if s <= now], now), now)
        assert {name: row[f"item__{name}"] for name in WINDOWED} == online


def test_window_start():
    mark = datetime(2025, 5, 1, tzinfo=UTC)
    assert window_start(mark, None, full=True) == BEGINNING
    assert window_start(mark, None, full=False) == mark - OVERLAP
    assert window_start(None, None, full=False) == BEGINNING
    assert window_start(mark, datetime(2025, 1, 1), full=False) == datetime(2025, 1, 1, tzinfo=UTC)


def test_stores_are_chosen_by_url_scheme():
    from .adapters.redis_online import RedisOnlineStore
    from .stores import open_offline_store, open_online_store

    assert isinstance(open_online_store("redis://127.0.0.1:6379/0"), RedisOnlineStore)
    with pytest.raises(ValueError, match="online store URL: unsupported scheme 'memcached'"):
        open_online_store("memcached://127.0.0.1")
    with pytest.raises(ValueError, match="offline store DSN: unsupported scheme 'mysql'"):
        open_offline_store("mysql://127.0.0.1/x")


def test_running_category_counts_emit_one_value_per_user_and_timestamp():
    from .aggregates import running_category_counts

    later = T + timedelta(hours=1)
    events = [
        ("u", T, ["Drama", "War"]),
        ("u", T, ["Drama"]),
        ("u", later, None),
        ("u", later + timedelta(hours=1), ["Comedy"]),
        ("v", T, ["War"]),
    ]
    assert list(running_category_counts(events)) == [
        ("u", T, {"Drama": 2, "War": 1}),
        ("u", later, {"Drama": 2, "War": 1}),
        ("u", later + timedelta(hours=1), {"Drama": 2, "War": 1, "Comedy": 1}),
        ("v", T, {"War": 1}),
    ]
    assert list(running_category_counts([])) == []


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

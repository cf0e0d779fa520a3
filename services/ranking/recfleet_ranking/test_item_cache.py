"""The item-feature cache with a fake clock: what is fresh, what must be read again."""

import numpy as np
import pytest
from recfleet_models.ranking.features import Candidate

from .item_cache import ItemFeatureCache, ItemFeatures


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_entries_serve_until_their_ttl_then_are_read_again():
    clock = Clock()
    cache = ItemFeatureCache(10, clock=clock)
    cache.store({"a": ItemFeatures(categories=("Drama",)), "b": None})
    found, missing = cache.lookup(["a", "b", "c"])
    assert found == {"a": ItemFeatures(categories=("Drama",)), "b": None} and missing == ["c"]
    clock.now += 9.9
    assert cache.lookup(["a", "b"])[1] == []
    clock.now += 1.2  # past ttl plus the largest jitter (10%)
    assert cache.lookup(["a", "b"]) == ({}, ["a", "b"])
    assert cache.stale(["a", "c"]) == {"a": ItemFeatures(categories=("Drama",))}


def test_zero_ttl_keeps_nothing():
    cache = ItemFeatureCache(0)
    cache.store({"a": ItemFeatures()})
    assert len(cache) == 0 and cache.lookup(["a"]) == ({}, ["a"])


def test_oldest_entries_leave_first_when_full():
    clock = Clock()
    cache = ItemFeatureCache(60, max_items=3, clock=clock)
    cache.store({"a": ItemFeatures(), "b": ItemFeatures(), "c": ItemFeatures()})
    cache.store({"a": ItemFeatures(creator="again")})  # refreshed: now the youngest
    cache.store({"d": ItemFeatures()})
    found, missing = cache.lookup(["a", "b", "c", "d"])
    assert missing == ["b"] and found["a"].creator == "again" and len(cache) == 3


def test_apply_copies_every_feature_onto_the_candidate():
    features = ItemFeatures(("Comedy", "Drama"), "studio", 1.5e9, 16, ("DE",), False, 0.7, 0.2)
    candidate = Candidate("x", 0.5)
    features.apply(candidate)
    assert (candidate.primary_category, candidate.creator, candidate.age_rating, candidate.regions) == (
        "Comedy",
        "studio",
        16,
        ("DE",),
    )
    assert (candidate.available, candidate.popularity, candidate.popularity_7d) == (False, 0.7, 0.2)


@pytest.mark.parametrize("kwargs", [{"ttl_seconds": -1}, {"ttl_seconds": 1, "max_items": 0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        ItemFeatureCache(**kwargs)


def test_forget_and_clear_drop_entries_before_their_ttl():
    cache = ItemFeatureCache(60)
    cache.store({"a": ItemFeatures(), "b": ItemFeatures(), "c": None})
    cache.forget(["a", "missing"])
    assert cache.lookup(["a", "b", "c"])[1] == ["a"]
    cache.clear()
    assert len(cache) == 0


def test_announcements_are_read_leniently():
    from recfleet_store.catalog_changes import changed_ids

    assert changed_ids(b'["1", "x:2"]') == ["1", "x:2"]
    assert changed_ids(b"not json") == [] and changed_ids(b'{"a": 1}') == []


def test_many_refreshes_and_drops_keep_every_entry_right():
    """Refreshed and dropped entries leave rows behind that the cache reclaims; what it
    answers never changes because of that."""
    clock = Clock()
    cache = ItemFeatureCache(60, clock=clock)
    cache.store({"unknown": None})
    for round_ in range(3000):
        cache.store({"a": ItemFeatures(creator=f"a{round_}"), f"gone{round_}": ItemFeatures()})
        cache.forget([f"gone{round_}"])
    cache.store({"b": ItemFeatures(categories=("Drama",), age_rating=16)})
    found, missing = cache.lookup(["a", "b", "unknown", "gone5"])
    assert missing == ["gone5"] and len(cache) == 3
    assert found == {
        "a": ItemFeatures(creator="a2999"),
        "b": ItemFeatures(categories=("Drama",), age_rating=16),
        "unknown": None,
    }
    items = cache.gather(cache.rows(["b", "unknown", "a"])[0])
    assert items.primary_categories.tolist() == ["Drama", "", ""]
    assert items.age_rating[0] == 16 and np.isnan(items.age_rating[1]) and items.creators[2] == "a2999"

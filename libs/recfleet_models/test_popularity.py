"""Popularity windows with hand-computed answers."""

import numpy as np
import pytest

from recfleet_models.popularity import DAY, PopularityParams, by_category, normalise, window_scores

NOW = 1_000_000_000.0


def test_windows_are_relative_to_the_newest_event():
    items = ["old", "old", "recent", "newest"]
    weights = np.array([1.0, 1.0, 2.0, 1.0])
    # "old" is 40 days before the newest event, "recent" 2 days, "newest" 0 days.
    stamps = np.array([NOW - 40 * DAY, NOW - 40 * DAY, NOW - 2 * DAY, NOW])
    scores = window_scores(items, weights, stamps)
    assert scores["all"] == {"old": 2.0, "recent": 2.0, "newest": 1.0}
    assert scores["7d"] == {"recent": 2.0, "newest": 1.0}
    # Half-life 3 days: 2 * 0.5 ** (2 / 3) for "recent", 1 for "newest", nothing 40 days old.
    assert scores["trending"] == pytest.approx({"recent": 2 * 0.5 ** (2 / 3), "newest": 1.0})


def test_trending_prefers_the_item_rising_now():
    params = PopularityParams(half_life_days=1.0)
    items = ["steady"] * 10 + ["rising"] * 4
    stamps = np.array([NOW - 20 * DAY] * 10 + [NOW] * 4)
    scores = window_scores(items, np.ones(14), stamps, params)
    assert scores["all"]["steady"] > scores["all"]["rising"]
    assert scores["trending"]["rising"] > scores["trending"]["steady"]


def test_zero_weights_score_nothing_and_empty_input():
    scores = window_scores(["x"], np.array([0.0]), np.array([NOW]))
    assert scores == {"all": {}, "7d": {}, "trending": {}}
    assert window_scores([], np.array([]), np.array([])) == {"all": {}, "7d": {}, "trending": {}}


def test_normalise_and_categories():
    assert normalise({"a": 4.0, "b": 1.0}) == {"a": 1.0, "b": 0.25}
    assert normalise({}) == {}
    assert by_category({"a": 2.0, "b": 1.0}, {"a": ["Drama", "Comedy"], "b": ["Drama"]}) == {
        "Drama": {"a": 2.0, "b": 1.0},
        "Comedy": {"a": 2.0},
    }


def test_bad_params():
    with pytest.raises(ValueError):
        PopularityParams(half_life_days=0)
    with pytest.raises(ValueError):
        window_scores(["a"], np.array([1.0, 2.0]), np.array([NOW]))

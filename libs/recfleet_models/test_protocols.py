"""Splits with known answers, and the protocols' invariants on the bundled data."""

from pathlib import Path

import numpy as np

from recfleet_models.data import Ratings, read_ml_latest_small
from recfleet_models.protocols import (
    make_split,
    recbole,
    recbole_split_counts,
    recommenders_ml100k,
    stratified_train_mask,
    tuning_split,
)

BUNDLED = Path(__file__).resolve().parents[2] / "data" / "ml-latest-small"


def _ratings(users, items, stars=None):
    n = len(users)
    return Ratings(
        np.asarray(users, dtype=np.int64),
        np.asarray(items, dtype=np.int64),
        np.asarray(stars if stars is not None else [4.0] * n, dtype=np.float32),
        np.arange(n, dtype=np.int64),
    )


def test_stratified_split_known_answer():
    # numpy's legacy generator seeded with 42 draws 0.3745, 0.9507, 0.7320, 0.5987, 0.15602,
    # 0.15599 for the six rows. Item 7 (rows 0-3) sorts to rows 0, 3, 2, 1 with ranks
    # 1/4 .. 4/4: rows 0, 3, 2 train, row 1 test. Item 9 sorts to rows 5, 4 (ranks 1/2,
    # 2/2): row 5 train. Item 3 has one rating, rank 1/1 > 0.75: test only.
    mask = stratified_train_mask(np.array([7, 7, 7, 7, 9, 9, 3]), 0.75, 42)
    assert mask.tolist() == [True, False, True, True, False, True, False]


def test_stratified_split_matches_a_direct_reading_of_the_algorithm():
    rng = np.random.default_rng(1)
    items = rng.integers(0, 30, size=500)
    random = np.random.RandomState(42).rand(len(items))
    expected = np.zeros(len(items), dtype=bool)
    for item in np.unique(items):
        rows = sorted(np.flatnonzero(items == item), key=lambda r: random[r])
        for position, row in enumerate(rows, start=1):
            expected[row] = position / len(rows) <= 0.75
    assert (stratified_train_mask(items, 0.75, 42) == expected).all()


def test_recommenders_split_is_stratified_per_item():
    data = read_ml_latest_small(BUNDLED)
    split = recommenders_ml100k(data.ratings)
    assert len(split.train) + len(split.test) == len(data.ratings)
    items, counts = np.unique(data.ratings.movie_ids, return_counts=True)
    train_items, train_counts = np.unique(split.train.movie_ids, return_counts=True)
    in_train = dict(zip(train_items.tolist(), train_counts.tolist(), strict=False))
    for item, count in zip(items.tolist(), counts.tolist(), strict=False):
        # rank / count <= 0.75 keeps floor(0.75 * count) of an item's ratings in train.
        assert in_train.get(item, 0) == int(0.75 * count)
    again = recommenders_ml100k(data.ratings)
    assert (again.test.user_ids == split.test.user_ids).all()


def test_recbole_rounding():
    assert recbole_split_counts(10, (0.8, 0.1, 0.1)) == [8, 1, 1]
    assert recbole_split_counts(5, (0.8, 0.1, 0.1)) == [3, 1, 1]
    assert recbole_split_counts(2, (0.8, 0.1, 0.1)) == [1, 0, 1]
    assert recbole_split_counts(1, (0.8, 0.1, 0.1)) == [1, 0, 0]


def test_recbole_split_filters_low_ratings_and_splits_per_user():
    users = [1] * 12 + [2] * 10
    items = list(range(12)) + list(range(10))
    stars = [2.5, 2.0] + [4.0] * 10 + [3.0] * 10
    split = recbole(_ratings(users, items, stars))
    assert len(split.train) == 8 + 8 and len(split.validation) == 2 and len(split.test) == 2
    assert split.train.ratings.min() >= 3.0
    for user in (1, 2):
        parts = [set(p.movie_ids[p.user_ids == user].tolist()) for p in (split.train, split.validation, split.test)]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    seen = split.seen()
    assert len(seen) == len(split.train) + len(split.validation)


def test_tuning_split_never_uses_test_ratings():
    data = read_ml_latest_small(BUNDLED)
    for protocol in ("recommenders-ml100k", "recbole"):
        split = make_split(data.ratings, protocol)
        tuning = tuning_split(split)
        test_keys = set(zip(split.test.user_ids.tolist(), split.test.movie_ids.tolist(), strict=False))
        tuning_keys = set(zip(tuning.train.user_ids.tolist(), tuning.train.movie_ids.tolist(), strict=False)) | set(
            zip(tuning.test.user_ids.tolist(), tuning.test.movie_ids.tolist(), strict=False)
        )
        assert not (test_keys & tuning_keys)

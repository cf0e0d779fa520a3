"""Offline evaluation protocols: how ratings are split into train, validation and test.

- `recommenders-ml100k` reproduces microsoft/recommenders' benchmark split,
  `python_stratified_split(data, ratio=0.75, filter_by="item", seed=42)` as their
  current code does it: one uniform random number per rating drawn in file order from
  numpy's legacy generator seeded with 42, ratings sorted by (item, random number), and
  within each item the ratings whose rank / count is at most 0.75 go to train, the rest
  to test. Checked against their published figures: SAR (jaccard, 30-day time decay)
  evaluated by this harness on this split scores NDCG@10 0.3939, their benchmark table
  says 0.394. (Their older per-group `sample(frac=1)` splitter gives a different split:
  SAR 0.388 on it.) Every test rating is relevant, seen (train) items are never
  recommended, k = 10.
- `recbole`: RecBole's default for MovieLens: ratings >= 3 kept, each user's ratings
  shuffled (seeded) and split 8:1:1 into train, validation and test with RecBole's
  rounding (`_calcu_split_ids`), full ranking over every item, train and validation items
  excluded, k = 10.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import Ratings

PROTOCOLS = ("recommenders-ml100k", "recbole")


@dataclass(frozen=True)
class Split:
    """One protocol's split. `validation` is None when the protocol has none."""

    protocol: str
    train: Ratings
    test: Ratings
    validation: Ratings | None = None
    k: int = 10

    def seen(self) -> Ratings:
        """Ratings whose items are excluded from a user's recommendations at test time."""
        if self.validation is None:
            return self.train
        return concat(self.train, self.validation)


def concat(*parts: Ratings) -> Ratings:
    return Ratings(
        np.concatenate([p.user_ids for p in parts]),
        np.concatenate([p.movie_ids for p in parts]),
        np.concatenate([p.ratings for p in parts]),
        np.concatenate([p.timestamps for p in parts]),
    )


def stratified_train_mask(groups: np.ndarray, ratio: float = 0.75, seed: int = 42) -> np.ndarray:
    """recommenders' `_do_stratification` with `is_random=True` for a single ratio.

    Returns a boolean mask over the input rows: True = train.
    """
    if not 0 < ratio < 1:
        raise ValueError("ratio must be between 0 and 1")
    n = len(groups)
    random = np.random.RandomState(seed).rand(n)
    # pandas sorts on several columns with a stable lexicographic sort.
    order = np.lexsort((random, groups))
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    counts = np.diff(np.r_[starts, n])
    position = np.arange(n) - np.repeat(starts, counts)  # cumcount
    rank = (position + 1) / np.repeat(counts, counts)
    mask = np.empty(n, dtype=bool)
    mask[order] = rank <= ratio
    return mask


def recommenders_ml100k(ratings: Ratings, ratio: float = 0.75, seed: int = 42) -> Split:
    """The microsoft/recommenders benchmark split (item-stratified 75/25, seed 42)."""
    train = stratified_train_mask(ratings.movie_ids, ratio, seed)
    return Split("recommenders-ml100k", ratings.subset(train), ratings.subset(~train))


def recbole_split_counts(total: int, ratios: tuple[float, ...]) -> list[int]:
    """How many of a user's `total` interactions go to each part (RecBole's rounding)."""
    counts = [int(r * total) for r in ratios]
    counts[0] = total - sum(counts[1:])
    for i in range(1, len(ratios)):
        if counts[0] <= 1:
            break
        if 0 < ratios[-i] * total < 1:
            counts[-i] += 1
            counts[0] -= 1
    return counts


def recbole(
    ratings: Ratings, seed: int = 2020, threshold: float = 3.0, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> Split:
    """RecBole-style 8:1:1 per-user random split of the ratings >= threshold."""
    kept = ratings.subset(ratings.ratings >= threshold)
    n = len(kept)
    shuffled = np.random.default_rng(seed).permutation(n)
    order = shuffled[np.argsort(kept.user_ids[shuffled], kind="stable")]
    users = kept.user_ids[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if n else np.empty(0, dtype=np.int64)
    counts = np.diff(np.r_[starts, n])
    part = np.empty(n, dtype=np.int8)
    for start, count in zip(starts.tolist(), counts.tolist(), strict=False):
        sizes = recbole_split_counts(count, ratios)
        part[start : start + sizes[0]] = 0
        part[start + sizes[0] : start + sizes[0] + sizes[1]] = 1
        part[start + sizes[0] + sizes[1] : start + count] = 2
    rows = kept.subset(order)
    return Split("recbole", rows.subset(part == 0), rows.subset(part == 2), rows.subset(part == 1))


def make_split(ratings: Ratings, protocol: str) -> Split:
    if protocol == "recommenders-ml100k":
        return recommenders_ml100k(ratings)
    if protocol == "recbole":
        return recbole(ratings)
    raise ValueError(f"unknown protocol {protocol!r} (expected one of {', '.join(PROTOCOLS)})")


def tuning_split(split: Split) -> Split:
    """A split for hyper-parameter search that never touches the test ratings.

    RecBole's own validation part is used as it is; for the recommenders protocol the
    train part is split again the same way (item-stratified 75/25, seed 42).
    """
    if split.validation is not None:
        return Split(f"{split.protocol}/validation", split.train, split.validation, None, split.k)
    inner = stratified_train_mask(split.train.movie_ids, 0.75, 42)
    return Split(f"{split.protocol}/validation", split.train.subset(inner), split.train.subset(~inner), None, split.k)

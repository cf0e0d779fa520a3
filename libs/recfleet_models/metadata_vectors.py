"""Vectors for items a model version has never seen, from their catalog metadata.

A category's (or tag's) vector is the mean of the item factors of the version's items
that carry it. A new item gets the weighted mean of the vectors of its known categories
and tags, so it lands in the region of the factor space where items like it live and can
be retrieved before the next retrain gives it factors of its own.

Weights: the primary category (the first one listed) counts `PRIMARY_CATEGORY_WEIGHT`,
every other category `CATEGORY_WEIGHT` and every tag `TAG_WEIGHT`, because categories
are curated and describe an item more reliably than free-form tags. Tags carried by fewer
than `min_tag_items` of the version's items are ignored: their mean is one or two items'
noise. Categories need one item.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

PRIMARY_CATEGORY_WEIGHT = 2.0
CATEGORY_WEIGHT = 1.0
TAG_WEIGHT = 0.5


@dataclass(frozen=True)
class ItemMetadata:
    """What the catalog says about an item: categories (primary first) and tags."""

    categories: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


def _means(
    row_of: Mapping[str, int], factors: np.ndarray, labels: Iterable[tuple[str, Sequence[str]]], min_items: int
) -> dict[str, np.ndarray]:
    """Mean factor vector per label over the version's items carrying it (labels with at
    least `min_items` items only). One sparse (labels x items) product, so a million-item
    catalog takes a fraction of a second."""
    names: dict[str, int] = {}
    label_rows: list[int] = []
    item_rows: list[int] = []
    for item_id, item_labels in labels:
        row = row_of.get(item_id)
        if row is None:
            continue
        for label in set(item_labels):
            label_rows.append(names.setdefault(label, len(names)))
            item_rows.append(row)
    if not names:
        return {}
    membership = sparse.csr_matrix(
        (np.ones(len(label_rows), dtype=np.float32), (label_rows, item_rows)), shape=(len(names), len(factors))
    )
    counts = np.asarray(membership.sum(axis=1)).ravel()
    sums = np.asarray(membership @ factors, dtype=np.float32)
    return {name: sums[index] / counts[index] for name, index in names.items() if counts[index] >= max(1, min_items)}


@dataclass(frozen=True)
class MetadataVectors:
    """Per-category and per-tag vectors of one model version."""

    dimension: int
    categories: dict[str, np.ndarray]
    tags: dict[str, np.ndarray]

    @classmethod
    def from_version(
        cls,
        item_ids: Sequence[str],
        factors: np.ndarray,
        metadata: Mapping[str, ItemMetadata],
        min_tag_items: int = 1,
    ) -> MetadataVectors:
        """Means over the version's items (`item_ids[i]` has `factors[i]`); `metadata`
        may hold any items, those outside the version are skipped."""
        factors = np.ascontiguousarray(factors, dtype=np.float32)
        if factors.ndim != 2 or factors.shape[0] != len(item_ids):
            raise ValueError(f"{factors.shape} factors for {len(item_ids)} item ids")
        row_of = {item: row for row, item in enumerate(item_ids)}
        return cls(
            dimension=int(factors.shape[1]),
            categories=_means(row_of, factors, ((i, m.categories) for i, m in metadata.items()), 1),
            tags=_means(row_of, factors, ((i, m.tags) for i, m in metadata.items()), min_tag_items),
        )

    def vector_for(self, metadata: ItemMetadata) -> np.ndarray | None:
        """The item's weighted mean of its known categories' and tags' vectors; None when
        none of them is known (such an item cannot be placed and is not served)."""
        weighted: list[tuple[float, np.ndarray]] = []
        seen: set[str] = set()
        for position, category in enumerate(metadata.categories):
            vector = self.categories.get(category)
            if vector is None or category in seen:
                continue
            seen.add(category)
            weighted.append((PRIMARY_CATEGORY_WEIGHT if position == 0 else CATEGORY_WEIGHT, vector))
        for tag in dict.fromkeys(metadata.tags):
            vector = self.tags.get(tag)
            if vector is not None:
                weighted.append((TAG_WEIGHT, vector))
        if not weighted:
            return None
        weights = np.array([weight for weight, _ in weighted], dtype=np.float32)
        stacked = np.stack([vector for _, vector in weighted])
        placed: np.ndarray = (weights @ stacked / weights.sum()).astype(np.float32)
        return placed

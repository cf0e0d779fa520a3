"""Known answers for metadata vectors: category/tag means and the weighted mean for a new item."""

from __future__ import annotations

import numpy as np
import pytest

from recfleet_models.metadata_vectors import ItemMetadata, MetadataVectors

IDS = ["a", "b", "c", "d"]
FACTORS = np.array([[2.0, 0.0], [4.0, 0.0], [0.0, 6.0], [0.0, 2.0]])
METADATA = {
    "a": ItemMetadata(("drama",), ("classic", "rare")),
    "b": ItemMetadata(("drama", "comedy"), ("classic",)),
    "c": ItemMetadata(("horror",), ("classic",)),
    "d": ItemMetadata(("horror", "comedy"), ()),
    # In the catalog but not in the version: contributes nothing.
    "new": ItemMetadata(("drama",), ("classic",)),
}


def vectors(min_tag_items: int = 2) -> MetadataVectors:
    return MetadataVectors.from_version(IDS, FACTORS, METADATA, min_tag_items=min_tag_items)


def test_category_and_tag_means_over_the_versions_items():
    built = vectors()
    assert built.dimension == 2
    assert built.categories["drama"] == pytest.approx([3.0, 0.0])
    assert built.categories["horror"] == pytest.approx([0.0, 4.0])
    assert built.categories["comedy"] == pytest.approx([2.0, 1.0])
    assert built.tags["classic"] == pytest.approx([2.0, 2.0])
    # One item carries "rare": below min_tag_items, so ignored.
    assert "rare" not in built.tags
    assert vectors(min_tag_items=1).tags["rare"] == pytest.approx([2.0, 0.0])


def test_new_item_gets_the_weighted_mean_primary_category_counting_double():
    built = vectors()
    # (2 * drama + 1 * horror + 0.5 * classic) / 3.5 = ([6, 0] + [0, 4] + [1, 1]) / 3.5
    placed = built.vector_for(ItemMetadata(("drama", "horror"), ("classic", "unknown-tag")))
    assert placed == pytest.approx([7.0 / 3.5, 5.0 / 3.5])
    # A single known category is that category's vector.
    assert built.vector_for(ItemMetadata(("unknown", "horror"), ())) == pytest.approx([0.0, 4.0])
    assert built.vector_for(ItemMetadata((), ("classic",))) == pytest.approx([2.0, 2.0])


def test_item_with_nothing_known_has_no_vector():
    built = vectors()
    assert built.vector_for(ItemMetadata(("unknown",), ("rare",))) is None
    assert built.vector_for(ItemMetadata()) is None


def test_mismatched_factors_are_refused():
    with pytest.raises(ValueError, match="item ids"):
        MetadataVectors.from_version(IDS, FACTORS[:3], METADATA)

"""Top-k retrieval on one loaded shard: request validation, over-fetch and exclusion."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np

MAX_K = 1000
MAX_EXCLUDED = 10_000
# The `source` of items placed by their metadata instead of model factors.
METADATA_SOURCE = "metadata"


class Searchable(Protocol):
    """An inner-product index over item ids: a loaded shard or the metadata items."""

    # Read-only members, so frozen dataclasses (MetadataIndex) qualify too.
    @property
    def item_ids(self) -> list[str]: ...
    @property
    def rows(self) -> dict[str, int]: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


class InvalidArgument(ValueError):
    """A request field is wrong; `field` names it, the message says why."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field


def check_k(k: int) -> int:
    if not 1 <= k <= MAX_K:
        raise InvalidArgument("k", f"must be between 1 and {MAX_K}, got {k}")
    return k


def check_excluded(exclude: Sequence[str]) -> set[str]:
    if len(exclude) > MAX_EXCLUDED:
        raise InvalidArgument("exclude_item_ids", f"at most {MAX_EXCLUDED} ids, got {len(exclude)}")
    return set(exclude)


def as_query(values: Sequence[float], dimension: int, version: str, field: str = "query_vector") -> np.ndarray:
    """The request's vector as a (1, d) float32 array, checked against the served dimension."""
    if len(values) != dimension:
        raise InvalidArgument(field, f"has {len(values)} values; model {version} has dimension {dimension}")
    query = np.asarray(values, dtype=np.float32).reshape(1, dimension)
    if not np.all(np.isfinite(query)):
        raise InvalidArgument(field, "contains NaN or infinite values")
    return query


def top_k(shard: Searchable, query: np.ndarray, k: int, exclude: Iterable[str] = ()) -> list[tuple[str, float]]:
    """The shard's best k items by inner product, none of them excluded.

    Asks the index for k more than the number of excluded ids that live in this shard,
    so that exclusions never shorten the answer.
    """
    excluded = {item for item in exclude if item in shard.rows}
    scores, rows = shard.search(query, k + len(excluded))
    found = []
    for score, row in zip(scores[0], rows[0], strict=True):
        if row < 0:
            continue
        item = shard.item_ids[row]
        if item in excluded:
            continue
        found.append((item, float(score)))
        if len(found) == k:
            break
    return found


def merged_top_k(
    shard: Searchable,
    metadata: Searchable | None,
    query: np.ndarray,
    k: int,
    exclude: set[str],
    source: str,
) -> list[tuple[str, float, str]]:
    """The best k of the shard and its metadata items together, by score, each with its
    source: `source` for the shard's items, METADATA_SOURCE for the others."""
    found = [(item, score, source) for item, score in top_k(shard, query, k, exclude)]
    if metadata is not None:
        found += [(item, score, METADATA_SOURCE) for item, score in top_k(metadata, query, k, exclude)]
        found.sort(key=lambda entry: -entry[1])
    return found[:k]

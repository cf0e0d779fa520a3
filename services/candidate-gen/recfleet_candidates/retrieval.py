"""Top-k retrieval on one loaded shard: request validation, over-fetch and exclusion.

Queries are answered in batches (`merged_top_k_many`): the queries of a batch that a
shard can answer from one FAISS call go to it as one matrix, and each row is then cut to
its own exclusions and k. A batch of one is the unary `Retrieve`, so every query gets
the answer it would get alone (see `top_k_many` for why that holds).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
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
    @property
    def same_candidates_up_to(self) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


class InvalidArgument(ValueError):
    """A request field is wrong; `field` names it, the message says why."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field


@dataclass(frozen=True)
class Query:
    """One checked retrieval request: a (1, d) float32 vector, k and the excluded ids."""

    vector: np.ndarray
    k: int
    exclude: set[str]


@dataclass(frozen=True)
class Found:
    """An answer as parallel columns, best first, so it can go into a packed response
    without a Python step per item."""

    item_ids: list[str]
    scores: np.ndarray  # float32
    sources: list[str]

    def entries(self) -> list[tuple[str, float, str]]:
        return list(zip(self.item_ids, self.scores.tolist(), self.sources, strict=True))


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


def _excluded_rows(index: Searchable, exclude: Iterable[str]) -> np.ndarray:
    """The sorted index rows of the excluded ids that live in this index."""
    rows = index.rows
    return np.sort(np.fromiter((rows[item] for item in exclude if item in rows), dtype=np.int64))


def _ambiguous(scores: np.ndarray, rows: np.ndarray, wanted: int) -> bool:
    """Whether the first `wanted` results of a longer search might differ from a search
    for `wanted` alone: only when two of the first `wanted` + 1 results score the same,
    since FAISS chooses and orders equal scores differently for different k."""
    head = scores[: wanted + 1][rows[: wanted + 1] >= 0]
    return bool(np.any(head[1:] == head[:-1]))


def _cut(index: Searchable, scores: np.ndarray, rows: np.ndarray, excluded: np.ndarray, k: int) -> Found:
    """The first k found rows that are not excluded (`excluded` sorted), as ids and scores."""
    keep = rows >= 0
    if excluded.size:
        # A binary search per found row: cheaper than np.isin's set machinery at these sizes.
        at = np.minimum(np.searchsorted(excluded, rows), excluded.size - 1)
        keep &= excluded[at] != rows
    kept = rows[keep][:k].tolist()
    # itemgetter looks the ids up in C; with one row it returns the id, not a tuple.
    item_ids = list(itemgetter(*kept)(index.item_ids)) if len(kept) > 1 else [index.item_ids[row] for row in kept]
    return Found(item_ids, scores[keep][:k], [])


def top_k_many(index: Searchable, queries: Sequence[Query]) -> list[Found]:
    """Each query's best k items by inner product, none of them excluded (no sources).

    Each query asks for k more than the number of its excluded ids that live in this
    index, so that exclusions never shorten the answer. Queries go to the index as one
    matrix per group with the largest count of the group, and each row is cut to its own
    exclusions and k. That is the unary answer because (1) FAISS answers each row of a
    matrix as it answers the row alone; (2) a search for more results looks at the same
    candidates while k stays within `same_candidates_up_to` (queries beyond it are grouped
    by their exact count); (3) the top n of a longer result are the top n of the same
    candidates unless scores tie, where FAISS picks and orders by k: such a row is
    searched again alone with its own count.
    """
    excluded = [_excluded_rows(index, query.exclude) for query in queries]
    wanted = [query.k + len(rows) for query, rows in zip(queries, excluded, strict=True)]
    limit = index.same_candidates_up_to
    groups: dict[int, list[int]] = {}
    for position, count in enumerate(wanted):
        groups.setdefault(0 if count <= limit else count, []).append(position)
    answers: dict[int, Found] = {}
    for members in groups.values():
        fetch = max(wanted[position] for position in members)
        matrix = np.concatenate([queries[position].vector for position in members])
        scores, rows = index.search(matrix, fetch)
        for line, position in enumerate(members):
            row_scores, row_rows = scores[line], rows[line]
            if wanted[position] < fetch and _ambiguous(row_scores, row_rows, wanted[position]):
                alone_scores, alone_rows = index.search(queries[position].vector, wanted[position])
                row_scores, row_rows = alone_scores[0], alone_rows[0]
            answers[position] = _cut(index, row_scores, row_rows, excluded[position], queries[position].k)
    return [answers[position] for position in range(len(queries))]


def merged_top_k_many(
    shard: Searchable, metadata: Searchable | None, queries: Sequence[Query], source: str
) -> list[Found]:
    """For each query, the best k of the shard and its metadata items together, by score,
    each with its source: `source` for the shard's items, METADATA_SOURCE for the others."""
    own = top_k_many(shard, queries)
    if metadata is None:
        return [Found(found.item_ids, found.scores, [source] * len(found.item_ids)) for found in own]
    merged = []
    for query, found, extra in zip(queries, own, top_k_many(metadata, queries), strict=True):
        scores = np.concatenate([found.scores, extra.scores])
        # Stable, so an equal score keeps the shard's item first.
        order = np.argsort(-scores, kind="stable")[: query.k]
        item_ids = found.item_ids + extra.item_ids
        sources = [source] * len(found.item_ids) + [METADATA_SOURCE] * len(extra.item_ids)
        picked = order.tolist()
        merged.append(Found([item_ids[i] for i in picked], scores[order], [sources[i] for i in picked]))
    return merged


def top_k(shard: Searchable, query: np.ndarray, k: int, exclude: Iterable[str] = ()) -> list[tuple[str, float]]:
    """The shard's best k items by inner product, none of them excluded."""
    found = top_k_many(shard, [Query(query, k, set(exclude))])[0]
    return list(zip(found.item_ids, found.scores.tolist(), strict=True))


def merged_top_k(
    shard: Searchable,
    metadata: Searchable | None,
    query: np.ndarray,
    k: int,
    exclude: set[str],
    source: str,
) -> list[tuple[str, float, str]]:
    """`merged_top_k_many` for one query, as (item, score, source) tuples."""
    return merged_top_k_many(shard, metadata, [Query(query, k, exclude)], source)[0].entries()

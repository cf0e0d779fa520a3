"""Top-k retrieval on one loaded shard: request validation, over-fetch and exclusion.

Queries are answered in batches (`retrieve_many`): the queries of a batch that a shard
can answer from one FAISS call go to it as one matrix, and each row is then cut to its
own exclusions and k. A batch of one is the unary `Retrieve`, so every query gets the
answer it would get alone (see `top_k_many` for why that holds; the EASE part of an
answer is computed per query).

A shard whose version has an EASE source (`LoadedShard.ease`) answers a query whose
history holds vocabulary items from two sources' proposals: FAISS's top k + excluded by
ALS score and the top k + excluded by EASE score (`recfleet_models.ease.history_scores`
over the shard's EASE columns). Each proposed item gets its exact ALS score and its EASE
score (0 outside the vocabulary), and the union is ranked by the fused score
(`recfleet_models.ease.fused`), each source standardised over the shard: ALS over the
query's scores of a fixed sample of the shard's rows, EASE over the scores of every item
of the shard; a version with a popularity penalty subtracts each item's share
(`ShardFusion.penalty`, a catalog-wide term, so shards still merge by score). A query
without such history gets the plain ALS answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Protocol

import numpy as np
from recfleet_models.ease import ALS_SOURCE, EASE_SOURCE, Moments, fused_with, history_scores
from recfleet_models.index import LoadedShard, ShardFusion

MAX_K = 1000
# A query's vector when it has none (`Query.personal` is False).
NO_VECTOR = np.zeros((1, 0), dtype=np.float32)
MAX_EXCLUDED = 10_000
# The `source` of items placed by their metadata instead of model factors.
METADATA_SOURCE = "metadata"
# The `source` of an item both ALS and EASE proposed.
BOTH_SOURCES = f"{ALS_SOURCE}+{EASE_SOURCE}"


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
    """One checked retrieval request: a (1, d) float32 vector, k, the excluded ids (the
    history's among them) and the user's history. An empty (1, 0) vector (`NO_VECTOR`):
    a user the version has no factors for, answered from the history by EASE alone."""

    vector: np.ndarray
    k: int
    exclude: set[str]
    history: Sequence[str] = ()

    @property
    def personal(self) -> bool:
        return self.vector.size > 0


@dataclass(frozen=True)
class Found:
    """An answer as parallel columns, best first, so it can go into a packed response
    without a Python step per item. `source_scores` holds each source's own score
    column ("als", "ease") when the answer fused sources, and is empty otherwise."""

    item_ids: list[str]
    scores: np.ndarray  # float32
    sources: list[str]
    source_scores: dict[str, np.ndarray] = field(default_factory=dict)

    def entries(self) -> list[tuple[str, float, str]]:
        return list(zip(self.item_ids, self.scores.tolist(), self.sources, strict=True))


def check_k(k: int) -> int:
    if not 1 <= k <= MAX_K:
        raise InvalidArgument("k", f"must be between 1 and {MAX_K}, got {k}")
    return k


def check_excluded(exclude: Sequence[str], field: str = "exclude_item_ids") -> set[str]:
    if len(exclude) > MAX_EXCLUDED:
        raise InvalidArgument(field, f"at most {MAX_EXCLUDED} ids, got {len(exclude)}")
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


@dataclass(frozen=True)
class _Searched:
    """One query's FAISS answer: its first k + excluded results (row -1: none found) and
    the sorted rows of its excluded ids."""

    scores: np.ndarray
    rows: np.ndarray
    excluded: np.ndarray


def _search_many(index: Searchable, queries: Sequence[Query]) -> list[_Searched]:
    """Each query's first k + excluded results, as a search for that count alone finds
    them (see `top_k_many`)."""
    excluded = [_excluded_rows(index, query.exclude) for query in queries]
    wanted = [query.k + len(rows) for query, rows in zip(queries, excluded, strict=True)]
    limit = index.same_candidates_up_to
    groups: dict[int, list[int]] = {}
    for position, count in enumerate(wanted):
        groups.setdefault(0 if count <= limit else count, []).append(position)
    answers: dict[int, _Searched] = {}
    for members in groups.values():
        fetch = max(wanted[position] for position in members)
        matrix = np.concatenate([queries[position].vector for position in members])
        scores, rows = index.search(matrix, fetch)
        for line, position in enumerate(members):
            count = wanted[position]
            row_scores, row_rows = scores[line], rows[line]
            if count < fetch and _ambiguous(row_scores, row_rows, count):
                alone_scores, alone_rows = index.search(queries[position].vector, count)
                row_scores, row_rows = alone_scores[0], alone_rows[0]
            answers[position] = _Searched(row_scores[:count], row_rows[:count], excluded[position])
    return [answers[position] for position in range(len(queries))]


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
    return [
        _cut(index, searched.scores, searched.rows, searched.excluded, query.k)
        for query, searched in zip(queries, _search_many(index, queries), strict=True)
    ]


def _with_source(found: Found, source: str) -> Found:
    return Found(found.item_ids, found.scores, [source] * len(found.item_ids))


def _merged(query: Query, found: Found, extra: Found, source: str) -> Found:
    """The best k of a shard's answer and its metadata items' by score."""
    scores = np.concatenate([found.scores, extra.scores])
    # Stable, so an equal score keeps the shard's item first.
    order = np.argsort(-scores, kind="stable")[: query.k]
    item_ids = found.item_ids + extra.item_ids
    sources = [source] * len(found.item_ids) + [METADATA_SOURCE] * len(extra.item_ids)
    picked = order.tolist()
    return Found([item_ids[i] for i in picked], scores[order], [sources[i] for i in picked])


def merged_top_k_many(
    shard: Searchable, metadata: Searchable | None, queries: Sequence[Query], source: str
) -> list[Found]:
    """For each query, the best k of the shard and its metadata items together, by score,
    each with its source: `source` for the shard's items, METADATA_SOURCE for the others."""
    own = top_k_many(shard, queries)
    if metadata is None:
        return [_with_source(found, source) for found in own]
    return [
        _merged(query, found, extra, source)
        for query, found, extra in zip(queries, own, top_k_many(metadata, queries), strict=True)
    ]


def _members(rows: np.ndarray, among: np.ndarray) -> np.ndarray:
    """Whether each of `rows` is in `among` (sorted): a binary search per row, cheaper
    than np.isin's set machinery at these sizes."""
    if not among.size:
        return np.zeros(len(rows), dtype=bool)
    at = np.minimum(np.searchsorted(among, rows), among.size - 1)
    return among[at] == rows


def _not_excluded(rows: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """`rows` without -1 and without the rows of `excluded` (sorted), in their order."""
    rows = rows[rows >= 0]
    return rows[~_members(rows, excluded)] if excluded.size else rows


_SOURCE_NAMES = np.array([ALS_SOURCE, EASE_SOURCE, BOTH_SOURCES], dtype=object)


@dataclass(frozen=True)
class _Proposals:
    """A query's candidate rows of the shard with both sources' scores, what proposed each
    (0: ALS, 1: EASE, 2: both, or neither alone), the moments each source is standardised
    with and what the fused score subtracts for each row (the popularity penalty)."""

    rows: np.ndarray
    als: np.ndarray
    ease: np.ndarray
    kind: np.ndarray
    als_moments: Moments
    ease_moments: Moments
    penalty: np.ndarray | None


def _kth_largest(values: np.ndarray, k: int) -> float:
    return float(np.partition(values, len(values) - k)[len(values) - k]) if 0 < k <= len(values) else -np.inf


def _kth_largest_among_zeros(values: np.ndarray, zeros: int, k: int) -> float:
    """The k-th largest of `values` and `zeros` more zeros (a shard's EASE columns among
    all its items), without building the padded array: numpy's partition slows down ten
    times or more when its pivot lands in a long run of equal values."""
    positive = int(np.count_nonzero(values > 0))
    if k <= positive:
        return _kth_largest(values, k)
    if k <= positive + zeros + int(np.count_nonzero(values == 0)):
        return 0.0
    return _kth_largest(values, k - zeros)


def _every_item(
    shard: LoadedShard, scorer: ShardFusion, query: Query, history_rows: np.ndarray, excluded: np.ndarray
) -> _Proposals:
    """A flat shard: every item scored by both sources (one matrix-vector product, as the
    flat search itself is), the best k by fused score; the populations are every item of
    the shard. Each source proposes its best k + excluded, as an index search over-fetches
    (so the labels mean what they mean for an approximate index)."""
    ease = scorer.ease
    count = shard.item_count
    als = shard.vectors @ query.vector[0]
    columns = history_scores(ease.weights, history_rows)
    ease_scores = np.zeros(count, dtype=np.float32)
    ease_scores[ease.shard_rows] = columns
    als_moments, ease_moments = Moments.of(als), Moments.of(columns, count)
    score = fused_with(als, ease_scores, ease.als_weight, als_moments, ease_moments, scorer.penalty)
    k = min(query.k, count - excluded.size)
    if k <= 0:
        empty = np.zeros(0, dtype=np.int64)
        return _Proposals(
            empty, als[empty], ease_scores[empty], empty, als_moments, ease_moments, _penalty(scorer, empty)
        )
    if excluded.size:
        score[excluded] = -np.inf
    rows = np.argpartition(-score, k - 1)[:k] if k < count else np.arange(count)
    wanted = k + excluded.size
    by_als = als[rows] >= _kth_largest(als, wanted)
    by_ease = ease_scores[rows] >= _kth_largest_among_zeros(columns, count - len(columns), wanted)
    # An item neither source has among its own best got there by both together.
    kind = np.where(by_als == by_ease, 2, np.where(by_als, 0, 1))
    return _Proposals(rows, als[rows], ease_scores[rows], kind, als_moments, ease_moments, _penalty(scorer, rows))


def _penalty(scorer: ShardFusion, rows: np.ndarray) -> np.ndarray | None:
    """What the fused score subtracts for each of `rows`; None without a penalty."""
    return scorer.penalty[rows] if scorer.penalty is not None else None


def _union(
    shard: LoadedShard, scorer: ShardFusion, query: Query, history_rows: np.ndarray, searched: _Searched
) -> _Proposals:
    """An approximate index: the union of FAISS's ALS proposals and the best k + excluded
    by EASE score, each item scored exactly by both sources; ALS standardised over a fixed
    sample of the shard's rows, EASE over every item of the shard."""
    ease = scorer.ease
    vector = query.vector[0]
    columns = history_scores(ease.weights, history_rows)
    # As many EASE proposals as ALS's: k more than the excluded items of the shard.
    wanted = query.k + searched.excluded.size
    top = np.argpartition(-columns, wanted - 1)[:wanted] if wanted < len(columns) else np.arange(len(columns))
    als_rows = _not_excluded(searched.rows, searched.excluded)
    ease_rows = _not_excluded(ease.shard_rows[top], searched.excluded)
    rows = np.concatenate([als_rows, ease_rows[~_members(ease_rows, np.sort(als_rows))]])
    kind = np.zeros(len(rows), dtype=np.int64)
    kind[len(als_rows) :] = 1
    kind[: len(als_rows)][_members(als_rows, np.sort(ease_rows))] = 2
    column = scorer.column_of_row[rows]
    inside = column >= 0
    ease_part = np.zeros(len(rows), dtype=np.float32)
    ease_part[inside] = columns[column[inside]]
    als_moments = Moments.of(scorer.sample @ vector)
    return _Proposals(
        rows,
        shard.vectors[rows] @ vector,
        ease_part,
        kind,
        als_moments,
        scorer.ease_moments(columns),
        _penalty(scorer, rows),
    )


def _fused_answer(shard: LoadedShard, weight: float, query: Query, found: _Proposals, extra: Found | None) -> Found:
    """The best k of both sources' proposals (and the metadata items) by fused score,
    with each source's own score."""
    als, ease_part = found.als, found.ease
    score = fused_with(als, ease_part, weight, found.als_moments, found.ease_moments, found.penalty)
    if extra is not None and extra.item_ids:
        # Metadata items have no EASE score (0, as for an item outside the vocabulary)
        # and no popularity yet (no penalty: the catalog's mean).
        extra_ease = np.zeros(len(extra.item_ids), dtype=np.float32)
        extra_score = fused_with(extra.scores, extra_ease, weight, found.als_moments, found.ease_moments)
        score = np.concatenate([score, extra_score])
        als = np.concatenate([als, extra.scores])
        ease_part = np.concatenate([ease_part, extra_ease])
    # Stable: an equal fused score keeps the shard's order, then the metadata items'.
    order = np.argsort(-score, kind="stable")[: query.k]
    # Ids and sources for the k picked only; positions past the shard's rows are metadata items.
    count, row_of, names = len(found.rows), found.rows.tolist(), _SOURCE_NAMES[found.kind].tolist()
    extra_ids = extra.item_ids if extra is not None else []
    picked = order.tolist()
    if order.size > 1 and int(order.max()) < count:
        # Shard items only (the usual case): itemgetter looks the ids up in C.
        item_ids = list(itemgetter(*found.rows[order].tolist())(shard.item_ids))
    else:
        item_ids = [shard.item_ids[row_of[i]] if i < count else extra_ids[i - count] for i in picked]
    sources = [names[i] if i < count else METADATA_SOURCE for i in picked]
    return Found(
        item_ids,
        score[order],
        sources,
        {ALS_SOURCE: als[order].astype(np.float32, copy=False), EASE_SOURCE: ease_part[order]},
    )


def _history_only(shard: LoadedShard, query: Query) -> Found:
    """A query without a vector: the shard's items by EASE score alone (those the history
    predicts at all), standardised over the shard as in a fused answer, source "ease".
    Empty without EASE or without history in the vocabulary."""
    scorer = shard.fusion
    history_rows = scorer.history_rows(query.history) if scorer is not None else None
    if scorer is None or history_rows is None or not history_rows.size:
        return Found([], np.zeros(0, dtype=np.float32), [])
    ease = scorer.ease
    columns = history_scores(ease.weights, history_rows)
    open_columns = np.flatnonzero((columns > 0) & ~_members(ease.shard_rows, _excluded_rows(shard, query.exclude)))
    k = min(query.k, open_columns.size)
    if k < open_columns.size:
        open_columns = open_columns[np.argpartition(-columns[open_columns], k - 1)[:k]]
    top = open_columns[np.argsort(-columns[open_columns], kind="stable")]
    raw = columns[top]
    item_ids = [shard.item_ids[row] for row in ease.shard_rows[top].tolist()]
    return Found(item_ids, scorer.ease_moments(columns).standardise(raw), [EASE_SOURCE] * len(top), {EASE_SOURCE: raw})


def retrieve_many(shard: LoadedShard, metadata: Searchable | None, queries: Sequence[Query]) -> list[Found]:
    """Each query's answer from the shard and its metadata items: by fused ALS and EASE
    score when the shard has EASE and the query's history holds vocabulary items, else
    `merged_top_k_many`'s by ALS score (source "als"); a query without a vector by EASE
    alone (`_history_only`)."""
    if not all(query.personal for query in queries):
        personal = [query for query in queries if query.personal]
        answered = iter(retrieve_many(shard, metadata, personal) if personal else [])
        return [next(answered) if query.personal else _history_only(shard, query) for query in queries]
    scorer = shard.fusion
    histories = [
        scorer.history_rows(query.history) if scorer is not None and query.history else None for query in queries
    ]
    if scorer is None or not any(_has(rows) for rows in histories):
        return merged_top_k_many(shard, metadata, queries, ALS_SOURCE)
    # A flat shard scores every item for a fused query, so such a query needs no search.
    flat = shard.manifest.index_type == "flat"
    searching = [query for query, rows in zip(queries, histories, strict=True) if not (flat and _has(rows))]
    searched = iter(_search_many(shard, searching))
    extras: Sequence[Found | None] = top_k_many(metadata, queries) if metadata is not None else [None] * len(queries)
    answers = []
    for query, rows, extra in zip(queries, histories, extras, strict=True):
        if rows is not None and _has(rows):
            found = (
                _every_item(shard, scorer, query, rows, _excluded_rows(shard, query.exclude))
                if flat
                else _union(shard, scorer, query, rows, next(searched))
            )
            answers.append(_fused_answer(shard, scorer.ease.als_weight, query, found, extra))
            continue
        alone = next(searched)
        plain = _with_source(_cut(shard, alone.scores, alone.rows, alone.excluded, query.k), ALS_SOURCE)
        answers.append(plain if extra is None else _merged(query, plain, extra, ALS_SOURCE))
    return answers


def _has(rows: np.ndarray | None) -> bool:
    return rows is not None and rows.size > 0


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

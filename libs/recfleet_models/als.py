"""Implicit-feedback ALS: interaction weighting, training and top-k queries.

Confidence for a (user, item) pair is the sum of its events' confidences, and one event's
confidence is its type's weight times a function of its `value`:

    confidence = event_weights[type] * f(value),  f = value_transforms.get(type, "none")

- `none`: f = 1, the value is not read;
- `log1p`: f = 1 + log1p(max(value, 0)), 1 for an event without a value, so a play
  count or watch time raises confidence slowly (2 plays 2.1, 100 plays 5.6, an hour of
  watch seconds 9.2) and one huge count cannot drown a user's other items;
- `rating`: f = max(0, value - rating_offset) + 1, 0 (the event is ignored) without a
  value. Every rating counts at least 1 (on MovieLens a rated movie was watched, and the
  published ML-100k protocol counts every test rating as relevant) and liked movies
  count more (a 5-star rating weighs 3.5 with the default offset 2.5).

By default ratings use `rating`, `view` and `watch` use `log1p` (a play count, watch
seconds) and every other type `none`. A weight of 0 drops the type (a dislike is not a
weak like). The summed matrix is then optionally re-weighted (`weighting`): BM25 or
TF-IDF (implicit's `bm25_weight` / `tfidf_weight`, which damp very popular items) or
log1p of each pair's summed confidence; implicit multiplies the result by `alpha`.

Training wraps implicit's CPU `AlternatingLeastSquares` in float32 with BLAS limited to
one thread (implicit parallelises itself and asks for that).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 2.0,
    "add_to_cart": 3.0,
    "purchase": 5.0,
    "like": 4.0,
    "dislike": 0.0,
    "share": 3.0,
    "watch": 2.0,
    "rating": 1.0,
}
VALUE_TRANSFORMS = ("none", "log1p", "rating")
DEFAULT_VALUE_TRANSFORMS: dict[str, str] = {"rating": "rating", "view": "log1p", "watch": "log1p"}
WEIGHTINGS = ("none", "bm25", "tfidf", "log1p")


@dataclass(frozen=True)
class ALSParams:
    """Hyper-parameters of one ALS training run (constructor arguments, as in implicit)."""

    factors: int = 64
    iterations: int = 15
    # Chosen by `recfleet-jobs tune-als` (docs/evaluation.md): implicit does not scale the
    # penalty by a user's interaction count, so MovieLens needs a large one.
    regularization: float = 30.0
    alpha: float = 2.0
    random_state: int = 42
    event_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    value_transforms: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_VALUE_TRANSFORMS))
    rating_offset: float = 2.5
    weighting: str = "none"
    bm25_k1: float = 100.0
    bm25_b: float = 0.8

    def __post_init__(self) -> None:
        if self.factors < 1:
            raise ValueError(f"factors must be at least 1, got {self.factors}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {self.iterations}")
        if self.regularization < 0:
            raise ValueError(f"regularization must be >= 0, got {self.regularization}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        if any(w < 0 for w in self.event_weights.values()):
            raise ValueError("event weights must be >= 0 (0 excludes the event type)")
        unknown = sorted({f for f in self.value_transforms.values() if f not in VALUE_TRANSFORMS})
        if unknown:
            raise ValueError(f"value transforms must be {', '.join(VALUE_TRANSFORMS)}, got {', '.join(unknown)}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def value_factor(transform: str, values: np.ndarray, rating_offset: float) -> np.ndarray:
    """f(value) of the named transform for an array of values (NaN = no value)."""
    if transform == "none":
        return np.ones(len(values))
    known = np.isfinite(values)
    if transform == "log1p":
        return np.where(known, 1.0 + np.log1p(np.maximum(np.where(known, values, 0.0), 0.0)), 1.0)
    if transform == "rating":
        return np.where(known, np.maximum(0.0, np.where(known, values, 0.0) - rating_offset) + 1.0, 0.0)
    raise ValueError(f"unknown value transform {transform!r} (expected one of {', '.join(VALUE_TRANSFORMS)})")


def event_weight(event_type: str, value: float | None, params: ALSParams) -> float:
    """The confidence one event adds; 0 means the event is ignored."""
    return float(event_weights([event_type], [value], params)[0])


def event_weights(types: Sequence[str], values: Sequence[float | None] | np.ndarray, params: ALSParams) -> np.ndarray:
    """`event_weight` for arrays of events, vectorised per event type."""
    types_arr = np.asarray(types, dtype=object)
    values_arr = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    weights = np.zeros(len(types_arr), dtype=np.float64)
    for event_type in set(types_arr.tolist()):
        weight = params.event_weights.get(event_type, 0.0)
        if weight == 0:
            continue
        mask = types_arr == event_type
        transform = params.value_transforms.get(event_type, "none")
        weights[mask] = weight * value_factor(transform, values_arr[mask], params.rating_offset)
    return weights


def _index(ids: Iterable[Any]) -> tuple[np.ndarray, list[str]]:
    uniques, inverse = np.unique(np.asarray(ids, dtype=object).astype(str), return_inverse=True)
    return inverse, uniques.tolist()


def build_interaction_matrix(
    user_ids: Sequence[Any] | np.ndarray,
    item_ids: Sequence[Any] | np.ndarray,
    types: Sequence[str],
    values: Sequence[float | None] | np.ndarray,
    params: ALSParams,
) -> tuple[sp.csr_matrix, list[str], list[str]]:
    """Users x items confidence matrix (float32 CSR) and the ids of its rows and columns.

    Ids are compared as strings and sorted; events whose weight is 0 are dropped before the
    index is built, so users and items with no counted event get no row or column.
    """
    weights = event_weights(types, values, params)
    keep = weights > 0
    users = np.asarray(user_ids, dtype=object)[keep]
    items = np.asarray(item_ids, dtype=object)[keep]
    user_rows, user_index = _index(users)
    item_cols, item_index = _index(items)
    matrix = sp.csr_matrix(
        (weights[keep].astype(np.float32), (user_rows, item_cols)),
        shape=(len(user_index), len(item_index)),
        dtype=np.float32,
    )
    matrix.sum_duplicates()
    return matrix, user_index, item_index


def build_interaction_times(
    user_ids: Sequence[Any] | np.ndarray,
    item_ids: Sequence[Any] | np.ndarray,
    types: Sequence[str],
    values: Sequence[float | None] | np.ndarray,
    timestamps: Sequence[float] | np.ndarray,
    params: ALSParams,
) -> sp.csr_matrix:
    """When each stored entry of `build_interaction_matrix` (same arguments) was first
    counted: a CSR matrix with the same rows, columns and entries holding the time of the
    pair's earliest counted event."""
    weights = event_weights(types, values, params)
    keep = weights > 0
    user_rows, user_index = _index(np.asarray(user_ids, dtype=object)[keep])
    item_cols, item_index = _index(np.asarray(item_ids, dtype=object)[keep])
    times = np.asarray(timestamps, dtype=np.float64)[keep]
    order = np.lexsort((times, item_cols, user_rows))
    rows, cols, times = user_rows[order], item_cols[order], times[order]
    first = np.r_[True, (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])] if len(rows) else np.empty(0, dtype=bool)
    rows, cols, times = rows[first], cols[first], times[first]
    indptr = np.zeros(len(user_index) + 1, dtype=np.int64)
    np.add.at(indptr, rows + 1, 1)
    return sp.csr_matrix((times, cols.astype(np.int32), np.cumsum(indptr)), shape=(len(user_index), len(item_index)))


def confidence_matrix(matrix: sp.csr_matrix, params: ALSParams) -> sp.csr_matrix:
    """The matrix implicit is fitted on, after the optional re-weighting."""
    if params.weighting == "none":
        return matrix.astype(np.float32).tocsr()
    if params.weighting == "log1p":
        weighted = matrix.astype(np.float32).tocsr(copy=True)
        weighted.data = np.log1p(weighted.data)
        return weighted
    from implicit.nearest_neighbours import bm25_weight, tfidf_weight

    # implicit's weighting functions take items x users (idf over users' rows).
    item_users = matrix.T.tocoo()
    if params.weighting == "bm25":
        weighted = bm25_weight(item_users, K1=params.bm25_k1, B=params.bm25_b)
    else:
        weighted = tfidf_weight(item_users)
    return weighted.T.tocsr().astype(np.float32)


@dataclass
class AlsModel:
    """Trained factors plus the ids of their rows."""

    user_factors: np.ndarray  # float32 n_users x d
    item_factors: np.ndarray  # float32 n_items x d
    user_ids: list[str]
    item_ids: list[str]
    params: ALSParams
    train_seconds: float = 0.0

    def __post_init__(self) -> None:
        self._user_row = {u: i for i, u in enumerate(self.user_ids)}
        self._item_row = {item: i for i, item in enumerate(self.item_ids)}

    def user_row(self, user_id: str) -> int | None:
        return self._user_row.get(str(user_id))

    def item_row(self, item_id: str) -> int | None:
        return self._item_row.get(str(item_id))

    def recommend(self, user_row: int, k: int, exclude: Iterable[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item rows by inner product for one user, best first, and their scores."""
        scores = self.item_factors @ self.user_factors[user_row]
        return top_k(scores, k, exclude)

    def recommend_batch(self, user_rows: np.ndarray, k: int, exclude: sp.csr_matrix | None = None) -> np.ndarray:
        """Top-k item rows for many users at once (-1 pads when fewer remain).

        `exclude` is a users x items matrix aligned with `user_rows`; its non-zeros are
        never recommended (the items a user has already seen).
        """
        return top_k_batch(self.user_factors[np.asarray(user_rows)] @ self.item_factors.T, k, exclude)

    def similar_items(self, item_row: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k items closest by cosine similarity, the item itself excluded."""
        norms = np.linalg.norm(self.item_factors, axis=1)
        norms[norms == 0] = 1.0
        scores = (self.item_factors @ self.item_factors[item_row]) / (norms * norms[item_row])
        return top_k(scores, k, (item_row,))


def top_k(scores: np.ndarray, k: int, exclude: Iterable[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the k largest scores (best first) and the scores, ignoring `exclude`."""
    scores = np.asarray(scores, dtype=np.float64).copy()
    excluded = np.fromiter(exclude, dtype=np.int64)
    if excluded.size:
        scores[excluded] = -np.inf
    k = min(k, int(np.isfinite(scores).sum()))
    if k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0)
    part = np.argpartition(-scores, k - 1)[:k]
    order = part[np.argsort(-scores[part], kind="stable")]
    return order, scores[order]


def top_k_batch(scores: np.ndarray, k: int, exclude: sp.csr_matrix | None = None) -> np.ndarray:
    """Row-wise `top_k` over a dense users x items score block; -1 pads short rows."""
    scores = np.array(scores, dtype=np.float64)
    if exclude is not None and exclude.nnz:
        coo = exclude.tocoo()
        scores[coo.row, coo.col] = -np.inf
    n_items = scores.shape[1]
    k_eff = min(k, n_items)
    if k_eff == 0:
        return np.full((scores.shape[0], k), -1, dtype=np.int64)
    part = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    best = np.take_along_axis(part, order, axis=1)
    best_scores = np.take_along_axis(part_scores, order, axis=1)
    best[~np.isfinite(best_scores)] = -1
    if k_eff < k:
        best = np.hstack([best, np.full((best.shape[0], k - k_eff), -1, dtype=np.int64)])
    return best


def fit_als(
    matrix: sp.csr_matrix,
    params: ALSParams,
    user_ids: Sequence[str] | None = None,
    item_ids: Sequence[str] | None = None,
    show_progress: bool = False,
    callback: Callable[[int, float, float], None] | None = None,
) -> AlsModel:
    """Fit ALS on a users x items confidence matrix (from `build_interaction_matrix`)."""
    from implicit.cpu.als import AlternatingLeastSquares

    if matrix.shape[0] == 0 or matrix.shape[1] == 0 or matrix.nnz == 0:
        raise ValueError("cannot train ALS on an empty interaction matrix")
    confidence = confidence_matrix(matrix, params)
    # implicit checks the BLAS thread count when the model is built, so the limit covers
    # construction as well as fitting.
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=params.factors,
            regularization=params.regularization,
            alpha=params.alpha,
            iterations=params.iterations,
            dtype=np.float32,
            random_state=params.random_state,
            calculate_training_loss=callback is not None,
        )
        started = time.perf_counter()
        model.fit(confidence, show_progress=show_progress, callback=callback)
        elapsed = time.perf_counter() - started
    return AlsModel(
        np.ascontiguousarray(model.user_factors, dtype=np.float32),
        np.ascontiguousarray(model.item_factors, dtype=np.float32),
        [str(u) for u in (user_ids if user_ids is not None else range(matrix.shape[0]))],
        [str(i) for i in (item_ids if item_ids is not None else range(matrix.shape[1]))],
        params,
        elapsed,
    )

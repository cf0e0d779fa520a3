"""EASE, the item-to-item candidate source, and its fusion with ALS.

EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", 2019) learns one item x
item weight matrix B in closed form: with G = X^T X + l2 I over the binary users x items
matrix X and P = G^-1, B[j, i] = -P[j, i] / P[i, i] and B[i, i] = 0. A user's score for
item i is the sum of B[j, i] over the items j of the user's history, so it is an
item-to-item source: each interaction pulls in the items it predicts.

B is dense, so EASE covers a vocabulary: the items with at least `min_users` users, at
most `max_items` of them (the most interacted). Items outside it get no EASE score and are
reached through ALS alone.

Fusion (`fused`): each source's scores are standardised over the user's catalog (mean 0,
sd 1), then mixed as `als_weight * z(als) + (1 - als_weight) * z(ease)`, less
`popularity_penalty * popularity(i)`: the item's standardised log user count
(`popularity`), which keeps the mix from favouring the most popular items more than ALS
does (EASE alone leans to items that co-occur with everything). The mixing weight, l2
and the penalty are chosen on a validation split carved from the training data
(`recfleet_models.tuning.tune_ease`); a weight of 1 is plain ALS, without a penalty.

Shards serve it (`recfleet_candidates`): each shard holds the columns of B for the items
it owns (every vocabulary row), scores its own items and returns them by fused score, so
the gateway merges shards by score as before. The per-user statistics are then those of
the shard's own items, a uniform hash sample of the catalog's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack

# Sources a candidate can carry, as `ScoredItemList.sources` and explain output name them.
ALS_SOURCE = "als"
EASE_SOURCE = "ease"
# Standard deviations below this count as a constant source (no information).
_FLAT = 1e-12


@dataclass(frozen=True)
class EaseModel:
    """B over a vocabulary: `weights[j, i]` is how much having item j predicts item i."""

    item_ids: list[str]
    weights: np.ndarray  # float32 (n, n), zero diagonal
    l2: float

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """The vocabulary rows of the given items that are in the vocabulary."""
        index = {item: row for row, item in enumerate(self.item_ids)}
        return np.fromiter((index[item] for item in item_ids if item in index), dtype=np.int64)


def vocabulary(matrix: sp.csr_matrix, max_items: int, min_users: int = 2) -> np.ndarray:
    """The column numbers EASE covers, ascending: columns with at least `min_users` non-zero
    rows, the `max_items` most interacted of them (ties to the lower column)."""
    counts = np.diff(matrix.tocsc().indptr)
    eligible = np.flatnonzero(counts >= min_users)
    if eligible.size > max_items:
        order = np.lexsort((eligible, -counts[eligible]))
        eligible = np.sort(eligible[order[:max_items]])
    return eligible


def gram(matrix: sp.csr_matrix, columns: np.ndarray) -> np.ndarray:
    """X^T X (float64) over the given columns of the binarised matrix."""
    binary = matrix[:, columns].astype(bool).astype(np.float64)
    return np.asarray((binary.T @ binary).todense())


def solve(gram_matrix: np.ndarray, l2: float) -> np.ndarray:
    """B for one l2, as float32, from X^T X.

    G + l2 I is symmetric positive definite, so P is its Cholesky inverse, computed in
    float32 (half the time of a float64 LU inverse; B differs by about 1e-6 of its
    largest weight, below what float32 B keeps anyway), in float64 should the float32
    factorisation fail."""
    if l2 <= 0:
        raise ValueError(f"l2 must be positive, got {l2}")
    n = gram_matrix.shape[0]
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    p = _spd_inverse(gram_matrix, l2, np.float32)
    if p is None:
        p = _spd_inverse(gram_matrix, l2, np.float64)
    if p is None:
        raise ValueError("X^T X + l2 I is not positive definite (is the matrix finite?)")
    diagonal = np.diag(p).copy()
    p /= -diagonal
    np.fill_diagonal(p, 0.0)
    return p.astype(np.float32, copy=False)


def _spd_inverse(gram_matrix: np.ndarray, l2: float, dtype: type) -> np.ndarray | None:
    """(G + l2 I)^-1 in `dtype` by Cholesky (LAPACK potrf / potri), None if it fails."""
    potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), dtype=np.dtype(dtype))
    g: np.ndarray = np.array(gram_matrix, dtype=dtype, order="F")
    g[np.diag_indices_from(g)] += l2
    factor, info = potrf(g, lower=False, overwrite_a=True, clean=False)
    if info != 0:
        return None
    upper, info = potri(factor, lower=False, overwrite_c=True)
    if info != 0 or not np.isfinite(upper).all():
        return None
    # potri fills the upper triangle only.
    inverse: np.ndarray = np.triu(upper)
    inverse += np.triu(upper, 1).T
    return inverse


def fit_ease(
    matrix: sp.csr_matrix, item_ids: Sequence[str], l2: float, max_items: int, min_users: int = 2
) -> EaseModel:
    """EASE over `matrix` (users x items, any non-zero is an interaction)."""
    columns = vocabulary(matrix, max_items, min_users)
    return EaseModel([str(item_ids[c]) for c in columns], solve(gram(matrix, columns), l2), float(l2))


def popularity(matrix: sp.csr_matrix) -> np.ndarray:
    """Each column's log(1 + users with a non-zero entry), standardised over the columns
    that have users (float32, mean 0, sd 1; zeros when they all have as many): the
    per-item term the fusion's popularity penalty subtracts. A column without users
    (an item whose interactions were all held out) gets 0, neither pushed nor held back."""
    users = np.diff(matrix.tocsc().indptr)
    out = np.zeros(users.size, dtype=np.float32)
    seen = users > 0
    out[seen] = standardise(np.log1p(users[seen].astype(np.float64)))
    return out


def history_scores(weights: np.ndarray, history_rows: np.ndarray) -> np.ndarray:
    """A user's EASE score for every column of `weights` (the vocabulary, or a shard's
    part of it): the sum of the rows of the user's history items."""
    if history_rows.size == 0:
        return np.zeros(weights.shape[1], dtype=np.float32)
    scores: np.ndarray = weights[history_rows].sum(axis=0, dtype=np.float32)
    return scores


def standardise(scores: np.ndarray, population: np.ndarray | None = None) -> np.ndarray:
    """`scores` as standard deviations from the mean of `population` (default: `scores`);
    all zeros when the population is constant. Along the last axis: a 2-D array is one
    user per row, each standardised over its own row of the population."""
    return Moments.over(scores if population is None else population).standardise(scores)


def fused(
    als: np.ndarray,
    ease: np.ndarray,
    als_weight: float,
    als_population: np.ndarray | None = None,
    ease_population: np.ndarray | None = None,
    *,
    popularity_penalty: float = 0.0,
    item_popularity: np.ndarray | None = None,
) -> np.ndarray:
    """`als_weight * z(als) + (1 - als_weight) * z(ease) - popularity_penalty *
    item_popularity`, each source standardised over its population (the user's scores
    over the catalog, or a shard's part of it); 2-D arrays hold one user per row, and
    `item_popularity` (`popularity`) one value per column. A weight of 1 returns the ALS
    scores as they are."""
    if not 0.0 <= als_weight <= 1.0:
        raise ValueError(f"als_weight must be within [0, 1], got {als_weight}")
    if als_weight == 1.0:
        return als.astype(np.float32)
    penalty = penalty_term(popularity_penalty, item_popularity)
    return mix(standardise(als, als_population), standardise(ease, ease_population), als_weight, penalty)


def valid_penalty(popularity_penalty: float) -> bool:
    """Whether a popularity penalty is one the fusion takes: a finite number >= 0 (NaN and
    infinities are not)."""
    return 0 <= popularity_penalty < float("inf")


def penalty_term(popularity_penalty: float, item_popularity: np.ndarray | None) -> np.ndarray | None:
    """What the fused score subtracts for each item, `popularity_penalty * item_popularity`
    (float32); None without a penalty."""
    if not popularity_penalty:
        return None
    if item_popularity is None:
        raise ValueError("a popularity penalty needs the items' popularity")
    return (np.float32(popularity_penalty) * item_popularity).astype(np.float32, copy=False)


def mix(z_als: np.ndarray, z_ease: np.ndarray, als_weight: float, penalty: np.ndarray | None = None) -> np.ndarray:
    """The fusion of two standardised sources, `als_weight * z_als + (1 - als_weight) *
    z_ease - penalty` in float32 (`penalty`: `penalty_term`, one value per column)."""
    mixed = np.float32(als_weight) * z_als
    mixed += np.float32(1.0 - als_weight) * z_ease
    if penalty is not None:
        mixed -= penalty
    return mixed.astype(np.float32, copy=False)


@dataclass(frozen=True)
class Moments:
    """The mean and standard deviation of a population of scores: scalars, or one per row
    (shape (n, 1)) for a 2-D population of one user per row (`over`)."""

    mean: float | np.ndarray
    sd: float | np.ndarray

    @classmethod
    def of(cls, values: np.ndarray, count: int | None = None) -> Moments:
        """Of `values`, or of `count` values of which `values` are the non-zero part (the
        rest zeros: a shard's EASE columns among all its items). One pass over `values`."""
        n = values.size if count is None else count
        if n == 0:
            return cls(0.0, 0.0)
        mean = float(values.sum(dtype=np.float64)) / n
        return cls(mean, max(float(np.dot(values, values)) / n - mean * mean, 0.0) ** 0.5)

    @classmethod
    def over(cls, population: np.ndarray) -> Moments:
        """Of `population` along its last axis (per row of a 2-D one)."""
        if population.shape[-1] == 0:
            return cls(0.0, 0.0)
        return cls(
            population.mean(axis=-1, keepdims=True, dtype=np.float64),
            population.std(axis=-1, keepdims=True, dtype=np.float64),
        )

    def standardise(self, scores: np.ndarray) -> np.ndarray:
        """`scores` in standard deviations from the mean, in float32 (zeros where the
        population is constant). Arithmetic in the scores' own precision."""
        dtype = scores.dtype if np.issubdtype(scores.dtype, np.floating) else np.dtype(np.float64)
        if np.ndim(self.sd) == 0:
            if self.sd < _FLAT:
                return np.zeros(scores.shape, dtype=np.float32)
            z = (scores - dtype.type(self.mean)) / dtype.type(self.sd)
            return z.astype(np.float32, copy=False)
        flat = np.asarray(self.sd) < _FLAT
        z = (scores - np.asarray(self.mean).astype(dtype)) / np.where(flat, 1.0, self.sd).astype(dtype)
        return np.where(flat, 0.0, z).astype(np.float32)


def fused_with(
    als: np.ndarray,
    ease: np.ndarray,
    als_weight: float,
    als_moments: Moments,
    ease_moments: Moments,
    penalty: np.ndarray | None = None,
) -> np.ndarray:
    """`fused` with each population given by its moments (what a shard computes per query:
    one pass over each population instead of keeping it) and the penalty as its
    `penalty_term` for these items."""
    if als_weight == 1.0:
        return als.astype(np.float32)
    return mix(als_moments.standardise(als), ease_moments.standardise(ease), als_weight, penalty)

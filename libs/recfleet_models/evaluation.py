"""Ranking metrics and the baseline recommenders the offline harness evaluates.

Metrics follow microsoft/recommenders' `python_evaluation` with binary relevance:

- precision@k = hits / k, recall@k = hits / relevant, MAP@k = sum over hits of
  (hit number / rank) / relevant (divided by ALL relevant items, not min(relevant, k)),
  each averaged over the users that have both relevant items and recommendations;
- NDCG@k = DCG / IDCG with gain 1 per hit and discount 1 / log(1 + rank), IDCG over
  min(relevant, k) hits, averaged over every user with relevant items (a user with no
  recommendations scores 0 there, as in recommenders);
- catalog coverage = distinct recommended items / distinct items in the training data.

`FusedRecommender` is ALS with the EASE item-to-item source (`recfleet_models.ease`):
both fitted on the train ratings, each user's scores standardised over the whole
catalog and mixed by `ease.fused`.

`DiversifiedRecommender` wraps any of them to measure what serves: the ranking
service's diversity rule (`ranking.diversity.diversify`, the one implementation) applied to
the model's candidates before the top k is cut. The default figures leave it out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import scipy.sparse as sp

from .als import AlsModel, ALSParams, build_interaction_matrix, fit_als, top_k_batch
from .data import Movie, Ratings
from .ease import EaseModel, fit_ease, fused, popularity, valid_penalty
from .protocols import Split
from .ranking.diversity import DiversityPolicy, diversify

# Items the serving path ranks before a page is cut: the gateway asks ranking for a
# snapshot of 100 (its `snapshot_size`) and pages through it, so the diversity rule
# chooses among that many.
SERVED_SNAPSHOT = 100


@dataclass(frozen=True)
class RankingMetrics:
    k: int
    precision: float
    recall: float
    ndcg: float
    map: float
    coverage: float
    users_evaluated: int

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        k = out.pop("k")
        return {
            f"precision@{k}": out["precision"],
            f"recall@{k}": out["recall"],
            f"ndcg@{k}": out["ndcg"],
            f"map@{k}": out["map"],
            "catalog_coverage": out["coverage"],
            "users_evaluated": out["users_evaluated"],
            "k": k,
        }


User = TypeVar("User")


def user_ndcg(
    recommended: Mapping[User, Sequence[object]], relevant: Mapping[User, AbstractSet[object]], k: int
) -> dict[User, float]:
    """NDCG@k of every user with relevant items (0 for one without recommendations)."""
    discounts = 1.0 / np.log(np.arange(2, k + 2))
    out: dict[User, float] = {}
    for user, truth in relevant.items():
        if not truth:
            continue
        top = list(recommended.get(user, ()))[:k]
        dcg = sum(discounts[rank] for rank, item in enumerate(top) if item in truth)
        out[user] = float(dcg / discounts[: min(len(truth), k)].sum())
    return out


def ranking_metrics(
    recommended: Mapping[User, Sequence[object]],
    relevant: Mapping[User, AbstractSet[object]],
    k: int,
    catalog_size: int,
) -> RankingMetrics:
    """Metrics of top-k lists (`recommended`, best first) against sets of relevant items."""
    if k < 1:
        raise ValueError("k must be at least 1")
    common = [u for u in relevant if u in recommended and len(recommended[u]) > 0]
    precision = recall = average_precision = 0.0
    shown: set[object] = set()
    for user in common:
        truth = relevant[user]
        top = list(recommended[user])[:k]
        shown.update(top)
        hit_ranks = [rank for rank, item in enumerate(top, start=1) if item in truth]
        hits = len(hit_ranks)
        precision += hits / k
        recall += hits / len(truth)
        average_precision += sum((n / rank) for n, rank in enumerate(hit_ranks, start=1)) / len(truth)
    ndcg = user_ndcg(recommended, relevant, k)
    n_common = len(common)
    return RankingMetrics(
        k=k,
        precision=precision / n_common if n_common else 0.0,
        recall=recall / n_common if n_common else 0.0,
        ndcg=sum(ndcg.values()) / len(ndcg) if ndcg else 0.0,
        map=average_precision / n_common if n_common else 0.0,
        coverage=len(shown) / catalog_size if catalog_size else 0.0,
        users_evaluated=n_common,
    )


def relevant_items(test: Ratings) -> dict[int, set[int]]:
    """user -> set of test items (every test rating is relevant)."""
    truth: dict[int, set[int]] = {}
    for user, item in zip(test.user_ids.tolist(), test.movie_ids.tolist(), strict=False):
        truth.setdefault(user, set()).add(item)
    return truth


class Recommender(Protocol):
    """What the harness needs from a model: fit on train ratings, top-k per user."""

    name: str

    def fit(self, train: Ratings) -> None: ...

    def recommend(self, users: Sequence[int], k: int, seen: Ratings) -> dict[int, list[int]]: ...


def seen_matrix(
    seen: Ratings, user_rows: Mapping[int, int], item_cols: Mapping[int, int], shape: tuple[int, int]
) -> sp.csr_matrix:
    """The `seen` ratings as a 0/1 matrix of `shape`: row `user_rows[user]`, column
    `item_cols[item]`; users and items without a row or column are left out."""
    rows, cols = [], []
    for user, item in zip(seen.user_ids.tolist(), seen.movie_ids.tolist(), strict=False):
        r = user_rows.get(user)
        c = item_cols.get(item)
        if r is not None and c is not None:
            rows.append(r)
            cols.append(c)
    return sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=shape)


def _batched_top_k(
    scores_for: Callable[[list[int]], np.ndarray],
    users: Sequence[int],
    k: int,
    seen: Ratings,
    item_ids: np.ndarray,
    user_rows: Mapping[int, int],
) -> dict[int, list[int]]:
    item_cols = {int(item): col for col, item in enumerate(item_ids.tolist())}
    known = [u for u in users if u in user_rows]
    out: dict[int, list[int]] = {}
    for start in range(0, len(known), 2048):
        chunk = known[start : start + 2048]
        local = {u: i for i, u in enumerate(chunk)}
        exclude = seen_matrix(seen, local, item_cols, (len(chunk), len(item_ids)))
        best = top_k_batch(scores_for([user_rows[u] for u in chunk]), k, exclude)
        for user, row in zip(chunk, best, strict=False):
            out[user] = [int(item_ids[c]) for c in row if c >= 0]
    return out


class PopularRecommender:
    """Most-popular baseline: items ranked by their number of training ratings."""

    name = "popular"

    def fit(self, train: Ratings) -> None:
        self.item_ids, counts = np.unique(train.movie_ids, return_counts=True)
        self.scores = counts.astype(np.float64)
        self.user_rows = {int(u): 0 for u in np.unique(train.user_ids).tolist()}

    def recommend(self, users: Sequence[int], k: int, seen: Ratings) -> dict[int, list[int]]:
        return _batched_top_k(
            lambda rows: np.tile(self.scores, (len(rows), 1)), users, k, seen, self.item_ids, self.user_rows
        )


class AlsRecommender:
    """Plain ALS (retrieval only): trained on the train ratings, or a given model."""

    name = "als"

    def __init__(self, params: ALSParams | None = None, model: AlsModel | None = None):
        self.params = params or ALSParams()
        self.model = model

    def fit(self, train: Ratings) -> None:
        if self.model is not None:
            return
        matrix, user_index, item_index = build_interaction_matrix(
            train.user_ids, train.movie_ids, ["rating"] * len(train), train.ratings, self.params
        )
        self.model = fit_als(matrix, self.params, user_index, item_index)

    def recommend(self, users: Sequence[int], k: int, seen: Ratings) -> dict[int, list[int]]:
        model = self.model
        assert model is not None, "fit() comes before recommend()"
        item_ids = np.array([int(i) for i in model.item_ids], dtype=np.int64)
        user_rows = {int(u): row for row, u in enumerate(model.user_ids)}
        return _batched_top_k(
            lambda rows: model.user_factors[rows] @ model.item_factors.T, users, k, seen, item_ids, user_rows
        )


class FusedRecommender:
    """ALS and EASE fused: `ease.fused(als, ease, als_weight, popularity_penalty=...)`
    over the whole catalog.

    Both are fitted on the train ratings (ALS as `AlsRecommender` fits it, EASE on the
    same matrix binarised, over its vocabulary of at most `max_items` items with at least
    `min_users` users); a user's EASE score for an item outside the vocabulary is 0, and
    each source is standardised over the user's scores of every catalog item. The items'
    popularity (`ease.popularity`) comes from the same matrix.
    """

    name = "als+ease"

    def __init__(
        self,
        als: AlsRecommender,
        l2: float,
        als_weight: float,
        max_items: int = 8000,
        min_users: int = 2,
        popularity_penalty: float = 0.0,
    ) -> None:
        if not 0.0 <= als_weight <= 1.0:
            raise ValueError(f"als_weight must be within [0, 1], got {als_weight}")
        if not valid_penalty(popularity_penalty):
            raise ValueError(f"popularity_penalty must be a finite value >= 0, got {popularity_penalty}")
        self.als = als
        self.popularity_penalty = popularity_penalty
        self.l2 = l2
        self.als_weight = als_weight
        self.max_items = max_items
        self.min_users = min_users
        self.ease: EaseModel | None = None

    def fit(self, train: Ratings) -> None:
        self.als.fit(train)
        model = self.als.model
        assert model is not None
        matrix, user_index, item_index = build_interaction_matrix(
            train.user_ids, train.movie_ids, ["rating"] * len(train), train.ratings, model.params
        )
        if user_index != model.user_ids or item_index != model.item_ids:
            raise ValueError("the ALS model was not fitted on these train ratings")
        self.history = matrix.astype(bool).astype(np.float32).tocsr()
        self.ease = fit_ease(matrix, item_index, self.l2, self.max_items, self.min_users)
        self.item_popularity = popularity(matrix)
        self.columns = np.array([model.item_row(item) for item in self.ease.item_ids], dtype=np.int64)

    def scores(self, user_rows: Sequence[int]) -> np.ndarray:
        """Fused scores of the given ALS user rows over every catalog item."""
        model, ease = self.als.model, self.ease
        assert model is not None and ease is not None, "fit() comes before scores()"
        rows = np.asarray(user_rows, dtype=np.int64)
        als_scores = model.user_factors[rows] @ model.item_factors.T
        ease_scores = np.zeros_like(als_scores)
        ease_scores[:, self.columns] = np.asarray(self.history[rows][:, self.columns] @ ease.weights)
        return fused(
            als_scores,
            ease_scores,
            self.als_weight,
            popularity_penalty=self.popularity_penalty,
            item_popularity=self.item_popularity,
        )

    def recommend(self, users: Sequence[int], k: int, seen: Ratings) -> dict[int, list[int]]:
        model = self.als.model
        assert model is not None, "fit() comes before recommend()"
        item_ids = np.array([int(i) for i in model.item_ids], dtype=np.int64)
        user_rows = {int(u): row for row, u in enumerate(model.user_ids)}
        return _batched_top_k(self.scores, users, k, seen, item_ids, user_rows)


def primary_categories(movies: Sequence[Movie]) -> dict[int, str]:
    """Each movie's primary category as the catalog loader stores it: the first genre
    listed, "" for a movie without genres (no cap ever touches it)."""
    return {movie.movie_id: movie.genres[0] if movie.genres else "" for movie in movies}


class DiversifiedRecommender:
    """Another recommender's lists re-ranked by the ranking service's diversity rule.

    The wrapped model proposes `candidates` items per user (at least k), best first, and
    `diversify`, the function ranking applies to every list it serves, chooses the list
    from them under `policy` with each item's primary category; the top k of that list is
    what a user sees on the first page. Items carry no creator (MovieLens names none), so
    the creator share never applies.
    """

    def __init__(
        self,
        inner: Recommender,
        categories: Mapping[int, str],
        policy: DiversityPolicy,
        candidates: int = SERVED_SNAPSHOT,
    ):
        if candidates < 1:
            raise ValueError("candidates must be at least 1")
        self.inner = inner
        self.name = inner.name
        self.categories = categories
        self.policy = policy
        self.candidates = candidates

    def fit(self, train: Ratings) -> None:
        self.inner.fit(train)

    def recommend(self, users: Sequence[int], k: int, seen: Ratings) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for user, items in self.inner.recommend(users, max(k, self.candidates), seen).items():
            placements = diversify(
                [self.categories.get(item, "") for item in items], [""] * len(items), len(items), self.policy
            )
            out[user] = [items[p.index] for p in placements[:k]]
        return out


def evaluate(split: Split, recommender: Recommender, k: int | None = None) -> RankingMetrics:
    """Fit on the split's train part and score top-k lists against its test part."""
    k = k or split.k
    recommender.fit(split.train)
    truth = relevant_items(split.test)
    recommended = recommender.recommend(sorted(truth), k, split.seen())
    catalog = int(np.unique(split.train.movie_ids).size)
    return ranking_metrics(recommended, truth, k, catalog)


@dataclass(frozen=True)
class MatrixHoldout:
    """A users x items matrix with part of each user's items hidden: `train` keeps the
    rest, `truth` maps a user's row to the hidden columns."""

    train: sp.csr_matrix
    truth: dict[int, set[int]]


def holdout_split(
    matrix: sp.csr_matrix,
    fraction: float = 0.1,
    min_interactions: int = 5,
    seed: int = 42,
    times: sp.csr_matrix | None = None,
) -> MatrixHoldout:
    """Hide `fraction` of the items (at least one) of every user with `min_interactions`.

    Without `times` the hidden items are drawn at random (seeded); with `times` (a matrix
    of the same entries holding when each pair began, `als.build_interaction_times`) they
    are the items each user came to last, ties broken at random.
    """
    if not 0 < fraction < 1:
        raise ValueError("fraction must be between 0 and 1")
    matrix = matrix.tocsr()
    if times is not None:
        times = times.tocsr()
        if not (np.array_equal(times.indptr, matrix.indptr) and np.array_equal(times.indices, matrix.indices)):
            raise ValueError("times must have the same entries as the matrix")
    rng = np.random.default_rng(seed)
    hidden = np.zeros(matrix.nnz, dtype=bool)
    truth: dict[int, set[int]] = {}
    for row in range(matrix.shape[0]):
        start, end = matrix.indptr[row], matrix.indptr[row + 1]
        count = end - start
        if count < min_interactions:
            continue
        size = max(1, round(fraction * count))
        if times is None:
            chosen = start + rng.choice(count, size=size, replace=False)
        else:
            order = np.lexsort((rng.random(count), times.data[start:end]))
            chosen = start + order[count - size :]
        hidden[chosen] = True
        truth[row] = set(matrix.indices[chosen].tolist())
    if not truth:
        raise ValueError(f"no user has {min_interactions} interactions: nothing to hold out")
    train = matrix.copy()
    train.data = np.where(hidden, 0, train.data).astype(np.float32)
    train.eliminate_zeros()
    return MatrixHoldout(train, truth)


def holdout_lists(model: AlsModel, holdout: MatrixHoldout, k: int = 10) -> dict[int, list[int]]:
    """Top-k columns for every user with hidden items, from a model fitted on
    `holdout.train`; the user's training items are never recommended."""
    users = np.array(sorted(holdout.truth))
    best = model.recommend_batch(users, k, holdout.train[users])
    return {int(user): [int(c) for c in row if c >= 0] for user, row in zip(users, best, strict=False)}


def holdout_scores(model: AlsModel, holdout: MatrixHoldout, k: int = 10) -> RankingMetrics:
    """`holdout_lists` scored against the hidden items."""
    catalog = int(np.unique(holdout.train.indices).size)
    return ranking_metrics(holdout_lists(model, holdout, k), holdout.truth, k, catalog)


def holdout_metrics(
    matrix: sp.csr_matrix,
    params: ALSParams,
    k: int = 10,
    fraction: float = 0.1,
    min_interactions: int = 5,
    seed: int = 42,
) -> RankingMetrics:
    """Offline metrics of an ALS setting on a users x items confidence matrix.

    Every user with at least `min_interactions` items has `fraction` of them (at least one)
    hidden at random; ALS is fitted on the rest and its top-k lists, seen items excluded,
    are scored against the hidden items. `train-als` records these with each version.
    """
    holdout = holdout_split(matrix, fraction, min_interactions, seed)
    return holdout_scores(fit_als(holdout.train, params), holdout, k)


class SarRecommender:
    """SAR as microsoft/recommenders configures it in its ML-100k benchmark.

    Affinity = sum of ratings decayed with a 30-day half-life from the newest train
    rating; item similarity = Jaccard of co-occurrence counts; score = affinity x
    similarity. (Their `normalize=True` rescales each user's scores linearly, which does
    not change the ranking.) Kept as a reference point: its figure on
    `recommenders-ml100k` reproduces the published one, which checks split and metrics.
    """

    name = "sar"

    def __init__(self, half_life_days: float = 30.0):
        self.half_life_days = half_life_days

    def fit(self, train: Ratings) -> None:
        self.user_ids, users = np.unique(train.user_ids, return_inverse=True)
        self.item_ids, items = np.unique(train.movie_ids, return_inverse=True)
        newest = float(train.timestamps.max())
        decay = np.power(2.0, -(newest - train.timestamps) / (self.half_life_days * 86_400.0))
        shape = (len(self.user_ids), len(self.item_ids))
        self.affinity = sp.csr_matrix(((train.ratings * decay).astype(np.float64), (users, items)), shape=shape)
        hits = sp.csr_matrix((np.ones(len(users)), (users, items)), shape=shape)
        hits.data[:] = 1.0  # a repeated (user, item) pair co-occurs once
        cooccurrence = (hits.T @ hits).toarray()
        frequency = np.diag(cooccurrence)
        union = frequency[:, None] + frequency[None, :] - cooccurrence
        self.similarity = np.divide(cooccurrence, union, out=np.zeros_like(cooccurrence), where=union > 0)
        self.user_rows = {int(u): row for row, u in enumerate(self.user_ids.tolist())}

    def recommend(self, users: Sequence[int], k: int, seen: Ratings) -> dict[int, list[int]]:
        return _batched_top_k(
            lambda rows: np.asarray(self.affinity[rows] @ self.similarity),
            users,
            k,
            seen,
            self.item_ids,
            self.user_rows,
        )

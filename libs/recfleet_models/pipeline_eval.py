"""Offline evaluation of the full pipeline: ALS retrieval re-ranked by the learned ranker.

`RankerPipelineRecommender` plugs into `evaluation.evaluate` like the baselines. The
ranker is trained by the one ranker trainer, `recfleet_models.ranking.training` (the one
`recfleet-jobs train-ranker` runs), on the protocol's train part only, with the named
settings `PRESETS["random-split"]` by default: random label folds, because the
protocols split each user's ratings at random. See that module for how groups are
carved, candidates proposed and features computed; here MovieLens ratings become its
interaction log (every rating an event of type `rating`) and the movies its catalog
(genres as categories, Jan 1 of the title's year as publication time).

With `feature_set="extended"` a few offline-only columns are appended (see
EXTENDED_FEATURES); the service cannot serve a model trained with them yet.

At evaluation time the ALS fitted on the whole train part proposes candidates the same
way (`training.candidate_groups`), features are what the feature store would serve
after the whole train part (popularity and affinities from it, "now" its newest
rating), and the ranker orders them, but only if it passed the promotion gate
(`training.ranker_gate`) on the trainer's held-out users, as `train-ranker --promote`
requires: otherwise what the gate says would serve orders them, the candidate order
(the ALS scores) or the rule formula. `gate=False` lets the ranker order them whatever
the gate says. Business filters are left out (MovieLens carries no regions or age
ratings), and so is the diversity rule: the figure measures ranking quality;
`evaluation.DiversifiedRecommender` around this recommender measures what serves.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import scipy.sparse as sp

from .als import AlsModel, ALSParams, build_interaction_matrix, event_weights
from .data import Movie, Ratings
from .evaluation import AlsRecommender
from .popularity import normalise, window_scores
from .ranking.features import AFFINITY_PREFIX
from .ranking.rules import RuleWeights, rule_scores
from .ranking.training import (
    BLOCK,
    CANDIDATE_ORDER,
    DEFAULT_MIN_GAIN,
    DEFAULT_MIN_GAIN_SE,
    GAIN_SE_METRICS,
    PRESETS,
    RANKER,
    VALIDATION_METRICS,
    BlockScorer,
    CandidateGroup,
    CatalogItem,
    Fusion,
    InteractionLog,
    PopularityClock,
    RankerFit,
    RankerParams,
    RankerVerdict,
    ServedFeatures,
    UserId,
    candidate_groups,
    feature_names,
    fused_scorer,
    popular_columns,
    ranker_gate,
    train_ranker,
)

FEATURE_SETS = ("service", "extended")
# The trainer's settings for the evaluation protocols (they split at random).
EVALUATION_PRESET = "random-split"
# Offline-only columns appended after the service's FEATURE_NAMES when
# feature_set="extended": ALS score standardised over the user's candidates; cosine
# similarity (ALS item factors) of the candidate to the user's history, max and mean;
# the candidate's popularity among users whose top genre it shares, relative to the
# candidate set; the item's mean rating and the user's mean rating; an item-kNN score
# (sum of the co-occurrence cosine between the candidate and each history item, over
# the history length) and the same relative to the best candidate's; the candidate's
# score under a second ALS (SECOND_ALS) standardised over the user's candidates.
EXTENDED_FEATURES = (
    "candidate_score_z",
    "history_similarity_max",
    "history_similarity_mean",
    "genre_popularity_rel",
    "item_mean_rating",
    "user_mean_rating",
    "cooccurrence_score",
    "cooccurrence_rel",
    "second_als_score_z",
)
# The second retrieval model of the extended set: tune-als's choice on ml-100k.
SECOND_ALS = ALSParams(factors=128, regularization=60.0, alpha=4.0)


def interaction_log(ratings: Ratings) -> InteractionLog:
    """Ratings as the trainer's interaction log (user ids stay ints, item ids strings)."""
    n = len(ratings)
    return InteractionLog(
        ratings.user_ids,
        ratings.movie_ids.astype(str).astype(object),
        ratings.timestamps.astype(np.float64),
        np.full(n, "rating", dtype=object),
        ratings.ratings.astype(np.float64),
    )


def ratings_of(log: InteractionLog) -> Ratings:
    """The inverse of `interaction_log`."""
    return Ratings(
        np.asarray(log.user_ids, dtype=np.int64),
        np.array([int(i) for i in log.item_ids.tolist()], dtype=np.int64),
        log.values.astype(np.float32),
        log.timestamps.astype(np.int64),
    )


def catalog_of(movies: Sequence[Movie]) -> dict[str, CatalogItem]:
    """Movies as the trainer's catalog: genres as categories, Jan 1 of the year as publication."""
    return {
        str(m.movie_id): CatalogItem(
            m.genres, datetime(m.year, 1, 1, tzinfo=UTC).timestamp() if m.year and m.year > 1 else 0.0
        )
        for m in movies
    }


class OfflineFeatureStore:
    """What the feature store would serve, computed from one set of ratings.

    `popularity` is the popularity job's normalised all-time weighted count,
    `popularity_7d` its 7-day window (up to the newest rating), categories are genres,
    affinities the genre shares of the user's ratings.
    """

    def __init__(self, ratings: Ratings, movies: Sequence[Movie], als_params: ALSParams):
        weights = event_weights(["rating"] * len(ratings), ratings.ratings, als_params)
        windows = window_scores(ratings.movie_ids.astype(str).tolist(), weights, ratings.timestamps)
        self.popularity = {int(k): v for k, v in normalise(windows["all"]).items()}
        self.popularity_7d = {int(k): v for k, v in windows["7d"].items()}
        self.now = float(ratings.timestamps.max())
        self.genres = {m.movie_id: m.genres for m in movies}
        self.published = {
            m.movie_id: datetime(m.year, 1, 1, tzinfo=UTC).timestamp() for m in movies if m.year and m.year > 1
        }
        self.history: dict[int, list[int]] = {}
        self.user_ratings: dict[int, list[float]] = {}
        for user, item, stars in zip(
            ratings.user_ids.tolist(), ratings.movie_ids.tolist(), ratings.ratings.tolist(), strict=False
        ):
            self.history.setdefault(user, []).append(item)
            self.user_ratings.setdefault(user, []).append(stars)
        items, inverse = np.unique(ratings.movie_ids, return_inverse=True)
        sums = np.bincount(inverse, weights=ratings.ratings.astype(np.float64))
        counts = np.bincount(inverse)
        self.item_mean = dict(zip(items.tolist(), (sums / counts).tolist(), strict=False))
        self.global_mean = float(ratings.ratings.mean())
        # Popularity among users whose most frequent genre is g: counts per (genre, item).
        self.top_genre: dict[int, str] = {}
        for user, history in self.history.items():
            counts_g = Counter(g for item in history for g in self.genres.get(item, ()))
            if counts_g:
                self.top_genre[user] = counts_g.most_common(1)[0][0]
        genre_pop: dict[str, Counter[int]] = {}
        for user, history in self.history.items():
            genre = self.top_genre.get(user)
            if genre is not None:
                genre_pop.setdefault(genre, Counter()).update(history)
        self.genre_popularity = genre_pop

    def user_features(self, user: int) -> dict[str, float]:
        history = self.history.get(user, [])
        counts = Counter(g for item in history for g in self.genres.get(item, ()))
        total = max(1, len(history))
        features = {AFFINITY_PREFIX + genre: n / total for genre, n in counts.items()}
        features["interaction_count"] = float(len(history))
        return features


def _unit_rows(factors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(factors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    unit: np.ndarray = factors / norms
    return unit


def _second_scores(model: AlsModel, user: UserId, ids: np.ndarray) -> np.ndarray:
    row = model.user_row(str(user))
    cols = [model.item_row(str(i)) for i in ids.tolist()]
    if row is None:
        return np.zeros(len(ids))
    vector = model.user_factors[row]
    return np.array([float(model.item_factors[c] @ vector) if c is not None else 0.0 for c in cols])


def _z(values: np.ndarray) -> np.ndarray:
    std = float(values.std())
    return (values - values.mean()) / std if std > 0 else np.zeros_like(values)


def _extended(
    user: int,
    cols: list[int],
    scores: np.ndarray,
    ids: np.ndarray,
    unit: np.ndarray,
    item_col: dict[int, int],
    store: OfflineFeatureStore,
    knn: np.ndarray,
    alt: np.ndarray,
) -> np.ndarray:
    x = np.empty((len(cols), len(EXTENDED_FEATURES)), dtype=np.float64)
    x[:, 0] = _z(scores)
    history_cols = [item_col[i] for i in store.history.get(user, ()) if i in item_col]
    if history_cols:
        sims = unit[cols] @ unit[history_cols].T
        x[:, 1] = sims.max(axis=1)
        x[:, 2] = sims.mean(axis=1)
    else:
        x[:, 1:3] = 0.0
    genre = store.top_genre.get(user)
    counts = store.genre_popularity.get(genre, Counter()) if genre is not None else Counter()
    pop = np.array([counts.get(i, 0) for i in ids.tolist()], dtype=np.float64)
    x[:, 3] = pop / pop.max() if pop.max() > 0 else 0.0
    x[:, 4] = [store.item_mean.get(i, store.global_mean) for i in ids.tolist()]
    ratings = store.user_ratings.get(user)
    x[:, 5] = float(np.mean(ratings)) if ratings else store.global_mean
    x[:, 6] = knn / max(1, len(history_cols))
    top = float(knn.max()) if knn.size else 0.0
    x[:, 7] = knn / top if top > 0 else 0.0
    x[:, 8] = _z(alt)
    return x


@dataclass
class ExtendedColumns:
    """EXTENDED_FEATURES for the trainer (`training.ExtraColumns`) and for scoring: computed
    from one set of ratings (a fold's history, or the whole train part), the retrieval
    model fitted on them and a SECOND_ALS fitted on them too."""

    movies: Sequence[Movie]
    als_params: ALSParams
    # A ready second model instead of fitting SECOND_ALS (tests).
    second: AlsModel | None = None
    names: tuple[str, ...] = EXTENDED_FEATURES

    def for_fold(
        self, history: InteractionLog, model: AlsModel
    ) -> Callable[[UserId, np.ndarray, np.ndarray], np.ndarray]:
        ratings = ratings_of(history)
        store = OfflineFeatureStore(ratings, self.movies, self.als_params)
        second = self.second or _fitted(SECOND_ALS, ratings)
        item_col = {int(item): col for col, item in enumerate(model.item_ids)}
        unit = _unit_rows(model.item_factors)
        # Binary users x items history; item cosine S = Xn^T Xn with columns scaled by
        # 1/sqrt(count), so a user's item-kNN scores X_u S = (X_u Xn^T) Xn stay small.
        h_rows: list[int] = []
        h_cols: list[int] = []
        h_index: dict[int, int] = {}
        for user, items in store.history.items():
            r = h_index.setdefault(user, len(h_index))
            cols_u = {item_col[i] for i in items if i in item_col}
            h_rows += [r] * len(cols_u)
            h_cols += sorted(cols_u)
        binary = sp.csr_matrix((np.ones(len(h_rows)), (h_rows, h_cols)), shape=(len(h_index), len(item_col)))
        counts = np.asarray(binary.sum(axis=0)).ravel()
        scaled = (binary @ sp.diags(1.0 / np.sqrt(np.maximum(counts, 1.0)))).tocsr()

        blocks: dict[int, np.ndarray] = {}

        def knn_row(h: int) -> np.ndarray:
            # Dense item-kNN scores, computed for BLOCK users at a time (users x items).
            block = h // BLOCK
            if block not in blocks:
                rows = binary[block * BLOCK : (block + 1) * BLOCK]
                blocks[block] = np.asarray(((rows @ scaled.T) @ scaled).todense())
            row: np.ndarray = blocks[block][h - block * BLOCK]
            return row

        def columns(user: UserId, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
            movie_ids = np.array([int(i) for i in ids.tolist()], dtype=np.int64)
            cols = [item_col[i] for i in movie_ids.tolist()]
            h = h_index.get(int(user))
            knn = np.zeros(len(cols)) if h is None else knn_row(h)[cols]
            alt = _second_scores(second, user, movie_ids)
            return _extended(int(user), cols, scores, movie_ids, unit, item_col, store, knn, alt)

        return columns


def _fitted(params: ALSParams, ratings: Ratings) -> AlsModel:
    recommender = AlsRecommender(params)
    recommender.fit(ratings)
    if recommender.model is None:
        raise RuntimeError("ALS fit left no model")
    return recommender.model


class RankerPipelineRecommender:
    """ALS retrieval (fitted on the whole train part) re-ranked by a learned ranker, when
    the ranker passes the promotion gate (`min_gain`, `min_gain_se`; always with
    `gate=False`), else by what the gate says serves instead."""

    name = "als+ranker"

    def __init__(
        self,
        movies: Sequence[Movie],
        als_params: ALSParams | None = None,
        params: RankerParams | None = None,
        feature_set: str = "service",
        min_gain: float = DEFAULT_MIN_GAIN,
        gate: bool = True,
        min_gain_se: float = DEFAULT_MIN_GAIN_SE,
        fusion: Fusion | None = None,
    ):
        if feature_set not in FEATURE_SETS:
            raise ValueError(f"feature_set must be one of {', '.join(FEATURE_SETS)}, got {feature_set!r}")
        if min_gain < 0 or min_gain_se < 0:
            raise ValueError("min_gain and min_gain_se must not be negative")
        self.movies = list(movies)
        self.catalog = catalog_of(self.movies)
        self.als_params = als_params or ALSParams()
        self.params = params or PRESETS[EVALUATION_PRESET]
        self.feature_set = feature_set
        self.min_gain = min_gain
        self.min_gain_se = min_gain_se
        self.gate = gate
        # With the EASE source fused in, candidates are proposed and scored as a version
        # with EASE serves them, in training and in evaluation.
        self.fusion = fusion
        self.scorer: BlockScorer | None = None
        if fusion is not None:
            self.name = "als+ease+ranker"
        self.extra = ExtendedColumns(self.movies, self.als_params) if feature_set == "extended" else None
        self.retrieval = AlsRecommender(self.als_params)
        self.fit_result: RankerFit | None = None
        self.verdict: RankerVerdict | None = None

    @property
    def serves(self) -> str:
        """What orders the candidates: the ranker, the candidate order or the rule formula."""
        if self.verdict is None:
            raise RuntimeError("fit() first")
        return RANKER if not self.gate else self.verdict.serves

    def fit(self, train: Ratings) -> None:
        log = interaction_log(train)
        self.fit_result = train_ranker(log, self.catalog, self.als_params, self.params, self.extra, self.fusion)
        self.verdict = ranker_gate(self.fit_result.metrics, self.min_gain, self.min_gain_se)
        self.retrieval.fit(train)
        model = self.retrieval.model
        if model is None:
            raise RuntimeError("ALS fit left no model")
        self.model = model
        if self.fusion is not None:
            # The matrix the retrieval ALS was fitted on (same rows and columns as its model).
            matrix, _, _ = build_interaction_matrix(
                train.user_ids, train.movie_ids, ["rating"] * len(train), train.ratings, self.als_params
            )
            self.scorer = fused_scorer(model, matrix, self.fusion)
        self.store = OfflineFeatureStore(train, self.movies, self.als_params)
        weights = event_weights(log.types.tolist(), log.values.tolist(), self.als_params)
        # What the feature store would serve after the whole train part.
        self.served = ServedFeatures(
            PopularityClock.build(log.item_ids, log.timestamps, weights),
            self.catalog,
            float(log.timestamps.max()),
            np.inf,
        )
        self.histories: dict[UserId, list[str]] = {
            user: [str(i) for i in items] for user, items in self.store.history.items()
        }
        self.popular = popular_columns(model, log.item_ids, weights)
        self.scoring_extra = self.extra.for_fold(log, model) if self.extra is not None else None

    def candidate_groups(
        self,
        users: Sequence[int],
        seen: dict[UserId, set[str]],
        k: int = 0,
        extra: Callable[[UserId, np.ndarray, np.ndarray], np.ndarray] | None = None,
    ) -> list[CandidateGroup]:
        """Each user's candidates and feature rows as the ranker scores them; `extra`
        replaces the extended columns' function."""
        params = replace(self.params, als_candidates=max(self.params.als_candidates, k))
        return list(
            candidate_groups(
                self.model,
                users,
                seen,
                self.histories,
                self.popular,
                lambda _: self.served,
                params,
                extra or self.scoring_extra,
                scorer=self.scorer,
            )
        )

    def candidate_features(
        self,
        users: Sequence[int],
        seen: dict[UserId, set[str]],
        k: int = 0,
        extra: Callable[[UserId, np.ndarray, np.ndarray], np.ndarray] | None = None,
    ) -> tuple[list[UserId], list[np.ndarray], list[np.ndarray]]:
        """(users, candidate movie ids, feature rows) as the ranker scores them."""
        groups = self.candidate_groups(users, seen, k, extra)
        return (
            [g.user_id for g in groups],
            [np.array([int(i) for i in g.item_ids.tolist()], dtype=np.int64) for g in groups],
            [g.features for g in groups],
        )

    def recommend(self, users: Sequence[int], k: int, seen: Ratings) -> dict[int, list[int]]:
        if self.fit_result is None:
            raise RuntimeError("fit() first")
        seen_sets: dict[UserId, set[str]] = {}
        for user, item in zip(seen.user_ids.tolist(), seen.movie_ids.tolist(), strict=True):
            seen_sets.setdefault(user, set()).add(str(item))
        groups = self.candidate_groups(users, seen_sets, k)
        if not groups:
            return {}
        serves = self.serves
        if serves == RANKER:
            scores = self.fit_result.predict(np.vstack([g.features for g in groups]), self.params.num_threads)
            bounds = np.cumsum([0] + [len(g.item_ids) for g in groups])
            per_group = [scores[a:b] for a, b in itertools.pairwise(bounds.tolist())]
        elif serves == CANDIDATE_ORDER:
            per_group = [np.fromiter((c.score for c in g.candidates), np.float64, len(g.candidates)) for g in groups]
        else:
            rules = RuleWeights(half_life_days=self.params.freshness_half_life_days)
            per_group = [rule_scores(g.candidates, g.now, rules)[0] for g in groups]
        out: dict[int, list[int]] = {}
        for group, s in zip(groups, per_group, strict=True):
            order = np.argsort(-s, kind="stable")[:k]
            out[int(group.user_id)] = [int(i) for i in group.item_ids[order].tolist()]
        return out

    def details(self) -> dict[str, Any]:
        """The training summary `evaluate` prints under "ranker": training statistics, the
        held-out figures, the gate's verdict and what ordered the evaluated lists."""
        fit = self.fit_result
        validation = (
            {
                **{name: fit.metrics[name] for name in VALIDATION_METRICS.values()},
                **{name: fit.metrics[name] for name in GAIN_SE_METRICS.values()},
                "validation_users": fit.metrics["validation_users"],
            }
            if fit
            else {}
        )
        return {
            "ranker": {
                **(fit.stats if fit else {}),
                **validation,
                **({"gate": self.verdict.as_dict(), "ordered_by": self.serves} if self.verdict else {}),
                "feature_set": self.feature_set,
                "feature_names": list(fit.feature_names) if fit else list(feature_names(self.extra)),
                "params": self.params.as_dict(),
                "candidates": "als+ease" if self.fusion else "als",
                **({"fusion": asdict(self.fusion)} if self.fusion else {}),
            }
        }

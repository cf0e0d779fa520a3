"""Offline evaluation of the full pipeline: ALS retrieval re-ranked by a learned ranker.

`RankerPipelineRecommender` plugs into `evaluation.evaluate` like the baselines. Only the
protocol's train part is ever looked at while fitting:

1. Label carving: each user's train ratings are split again into a history part and a
   label part (`label_share` of them, at random by default since both protocols split at
   random; `carve="recent"` takes the newest ones instead). Users with fewer than
   `min_history` history ratings give no training group.
2. A second ALS (same hyper-parameters as the evaluated one) is fitted on the history
   parts only, so the candidate score never "knows" the labels. Candidates per user =
   its top `als_candidates` items plus the `popular_candidates` most popular ones,
   history excluded; label 1 when the user rated the candidate in the label part.
3. Features are the ranking service's own (`recfleet_ranking.learned.feature_matrix`,
   fed `Candidate`/`UserContext` built the way the feature store would serve them:
   normalised weighted popularity, the 7-day window, genres as categories, Jan 1 of the
   title's year as publication time, genre shares of the user's history as affinities,
   the user's interaction count), computed on the history part. With
   `feature_set="extended"` a few offline-only columns are appended (see
   EXTENDED_FEATURES); the service cannot serve a model trained with them yet.
4. LightGBM lambdarank (native `lgb.train`, binary label gain) with early stopping on a
   held-out set of users' groups.

At evaluation time the ALS fitted on the whole train part proposes candidates the same
way, features are computed from the whole train part, and the ranker orders them.
Diversity and business filters are left out: MovieLens carries no creators, regions or
age ratings, and the figure measures ranking quality.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

import lightgbm as lgb
import numpy as np
import scipy.sparse as sp

# The ranking service's own feature code: what is evaluated here is what it serves.
from recfleet_ranking.features import AFFINITY_PREFIX, Candidate, UserContext, assign_ranks
from recfleet_ranking.learned import FEATURE_NAMES, feature_matrix

from .als import AlsModel, ALSParams, event_weights, top_k_batch
from .data import Movie, Ratings
from .evaluation import AlsRecommender
from .popularity import normalise, window_scores

FEATURE_SETS = ("service", "extended")
CARVES = ("random", "recent")
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


@dataclass(frozen=True)
class PipelineParams:
    """Candidate generation, label carving and booster settings of `als+ranker`."""

    als_candidates: int = 100
    popular_candidates: int = 20
    label_share: float = 0.25
    carve: str = "random"
    min_history: int = 5
    # Label folds: disjoint random carves, each with its own history-only ALS; more
    # training groups for the same train data.
    folds: int = 4
    # Service features the model does not use (the service serves any subset).
    drop_features: tuple[str, ...] = ()
    validation_share: float = 0.2
    feature_set: str = "service"
    freshness_half_life_days: float = 365.0
    # Small, regularised trees: on ml-100k's folds bigger ones (31 leaves, 50 rows a
    # leaf, rate 0.05) stop early on validation and score 0.001-0.005 lower on test.
    learning_rate: float = 0.02
    num_leaves: int = 15
    min_data_in_leaf: int = 200
    max_rounds: int = 600
    early_stopping_rounds: int = 40
    num_threads: int = 2
    seed: int = 42

    def __post_init__(self):
        if self.als_candidates < 1:
            raise ValueError("als_candidates must be at least 1")
        if self.popular_candidates < 0:
            raise ValueError("popular_candidates must be >= 0")
        if not 0 < self.label_share < 1:
            raise ValueError("label_share must be in (0, 1)")
        if not 0 < self.validation_share < 1:
            raise ValueError("validation_share must be in (0, 1)")
        if self.folds < 1 or (self.folds > 1 and self.carve != "random"):
            raise ValueError("folds must be >= 1, and 1 unless carve is random")
        if self.folds * self.label_share > 1 + 1e-9:
            raise ValueError("folds * label_share must not exceed 1")
        if self.carve not in CARVES:
            raise ValueError(f"carve must be one of {', '.join(CARVES)}, got {self.carve!r}")
        if self.feature_set not in FEATURE_SETS:
            raise ValueError(f"feature_set must be one of {', '.join(FEATURE_SETS)}, got {self.feature_set!r}")


def feature_names(feature_set: str) -> tuple[str, ...]:
    """Every column `candidate_groups` computes for a feature set, in order."""
    return FEATURE_NAMES + (EXTENDED_FEATURES if feature_set == "extended" else ())


def carve_labels(train: Ratings, share: float, carve: str, min_history: int, seed: int, fold: int = 0) -> np.ndarray:
    """Boolean mask over `train`: True = label row, False = history row.

    Per user, round(share * n) ratings (at least 1) become labels, chosen at random
    (`carve="random"`) or the newest ones (`"recent"`); a user left with fewer than
    `min_history` history ratings keeps everything as history. With a random carve,
    `fold` f takes the f-th disjoint slice of the same per-user shuffle, so folds
    0..1/share-1 use every rating as a label once.
    """
    rng = np.random.default_rng(seed)
    noise = rng.random(len(train))
    key = train.timestamps.astype(np.float64) + noise * 1e-3 if carve == "recent" else noise
    order = np.lexsort((key, train.user_ids))
    users = train.user_ids[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    labels = np.zeros(len(train), dtype=bool)
    for start, end in zip(starts.tolist(), ends.tolist()):
        n = end - start
        n_labels = max(1, round(share * n))
        if n - n_labels < min_history:
            continue
        stop = end - fold * n_labels
        if stop - n_labels < start:
            continue
        labels[order[stop - n_labels : stop]] = True
    return labels


class OfflineFeatureStore:
    """What the feature store would serve, computed from one set of ratings.

    `popularity` is the popularity job's normalised all-time weighted count,
    `popularity_7d` its 7-day window (up to the newest rating), categories are genres,
    affinities the genre shares of the user's ratings.
    """

    def __init__(self, ratings: Ratings, movies: Sequence[Movie], als_params: ALSParams):
        weights = event_weights(["rating"] * len(ratings), ratings.ratings, als_params)
        windows = window_scores(ratings.movie_ids.astype(str), weights, ratings.timestamps)
        self.popularity = {int(k): v for k, v in normalise(windows["all"]).items()}
        self.popularity_7d = {int(k): v for k, v in windows["7d"].items()}
        self.now = float(ratings.timestamps.max())
        self.genres = {m.movie_id: m.genres for m in movies}
        self.published = {
            m.movie_id: datetime(m.year, 1, 1, tzinfo=UTC).timestamp() for m in movies if m.year and m.year > 1
        }
        self.history: dict[int, list[int]] = {}
        self.user_ratings: dict[int, list[float]] = {}
        for user, item, stars in zip(ratings.user_ids.tolist(), ratings.movie_ids.tolist(), ratings.ratings.tolist()):
            self.history.setdefault(user, []).append(item)
            self.user_ratings.setdefault(user, []).append(stars)
        items, inverse = np.unique(ratings.movie_ids, return_inverse=True)
        sums = np.bincount(inverse, weights=ratings.ratings.astype(np.float64))
        counts = np.bincount(inverse)
        self.item_mean = dict(zip(items.tolist(), (sums / counts).tolist()))
        self.global_mean = float(ratings.ratings.mean())
        # Popularity among users whose most frequent genre is g: counts per (genre, item).
        self.top_genre: dict[int, str] = {}
        for user, history in self.history.items():
            counts_g = Counter(g for item in history for g in self.genres.get(item, ()))
            if counts_g:
                self.top_genre[user] = counts_g.most_common(1)[0][0]
        genre_pop: dict[str, Counter] = {}
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
    return factors / norms


def candidate_groups(
    model: AlsModel,
    store: OfflineFeatureStore,
    users: Sequence[int],
    seen: Mapping[int, set[int]],
    params: PipelineParams,
    second: AlsModel | None = None,
) -> tuple[list[int], list[np.ndarray], list[np.ndarray]]:
    """Per user with a factor row: (users, candidate item ids, feature matrix).

    Candidates: ALS top `als_candidates` plus `popular_candidates` most popular items,
    `seen` excluded; features as `feature_names(params.feature_set)` lists them
    (`second`, the SECOND_ALS model fitted on the same ratings, is needed for "extended").
    """
    item_ids = np.array([int(i) for i in model.item_ids], dtype=np.int64)
    item_col = {int(item): col for col, item in enumerate(item_ids.tolist())}
    popular_cols = np.array(
        [item_col[i] for i, _ in sorted(store.popularity.items(), key=lambda kv: -kv[1]) if i in item_col],
        dtype=np.int64,
    )
    extended = params.feature_set == "extended"
    unit = _unit_rows(model.item_factors) if extended else None
    if extended:
        # Binary users x items history; item cosine S = Xn^T Xn with columns scaled by
        # 1/sqrt(count), so a user's item-kNN scores X_u S = (X_u Xn^T) Xn stay small.
        h_rows, h_cols, h_index = [], [], {}
        for user, history in store.history.items():
            r = h_index.setdefault(user, len(h_index))
            cols_u = {item_col[i] for i in history if i in item_col}
            h_rows += [r] * len(cols_u)
            h_cols += sorted(cols_u)
        binary = sp.csr_matrix((np.ones(len(h_rows)), (h_rows, h_cols)), shape=(len(h_index), len(item_ids)))
        counts = np.asarray(binary.sum(axis=0)).ravel()
        scaled = (binary @ sp.diags(1.0 / np.sqrt(np.maximum(counts, 1.0)))).tocsr()
    known = [u for u in users if model.user_row(str(u)) is not None]
    out_users, out_items, out_x = [], [], []
    for start in range(0, len(known), 1024):
        chunk = known[start : start + 1024]
        rows = np.array([model.user_row(str(u)) for u in chunk])
        scores = model.user_factors[rows] @ model.item_factors.T
        ex_r, ex_c = [], []
        for r, user in enumerate(chunk):
            cols = [item_col[i] for i in seen.get(user, ()) if i in item_col]
            ex_r += [r] * len(cols)
            ex_c += cols
        exclude = sp.csr_matrix((np.ones(len(ex_r)), (ex_r, ex_c)), shape=scores.shape)
        best = top_k_batch(scores, params.als_candidates, exclude)
        if extended:
            present = [h_index.get(u) for u in chunk]
            picked = sp.csr_matrix(
                (
                    np.ones(sum(p is not None for p in present)),
                    ([r for r, p in enumerate(present) if p is not None], [p for p in present if p is not None]),
                ),
                shape=(len(chunk), binary.shape[0]),
            )
            knn = np.asarray(((picked @ binary) @ scaled.T @ scaled).todense())
        for r, user in enumerate(chunk):
            chosen = [int(c) for c in best[r] if c >= 0]
            if not chosen:
                continue
            taken = set(chosen)
            user_seen = seen.get(user, set())
            extra = []
            for c in popular_cols[: params.popular_candidates + len(taken) + len(user_seen)].tolist():
                if len(extra) >= params.popular_candidates:
                    break
                if c not in taken and int(item_ids[c]) not in user_seen:
                    extra.append(c)
            cols = np.array(chosen + extra, dtype=np.int64)
            ids = item_ids[cols]
            candidate_scores = scores[r, cols]
            candidates = [
                Candidate(
                    item_id=str(item),
                    score=float(s),
                    source="als" if n < len(chosen) else "popular",
                    categories=store.genres.get(item, ()),
                    published_at=store.published.get(item, 0.0),
                    age_rating=0,
                    popularity=store.popularity.get(item, 0.0),
                    popularity_7d=store.popularity_7d.get(item, 0.0),
                )
                for n, (item, s) in enumerate(zip(ids.tolist(), candidate_scores.tolist()))
            ]
            assign_ranks(candidates)
            context = UserContext(str(user), features=store.user_features(user))
            x = feature_matrix(candidates, context, store.now, params.freshness_half_life_days)
            if extended:
                alt = _second_scores(second, user, ids)
                x = np.hstack(
                    [x, _extended(user, cols, candidate_scores, ids, unit, item_col, store, knn[r, cols], alt)]
                )
            out_users.append(user)
            out_items.append(ids)
            out_x.append(x)
    return out_users, out_items, out_x


def _second_scores(model: AlsModel | None, user: int, ids: np.ndarray) -> np.ndarray:
    if model is None:
        raise ValueError("the extended feature set needs the second ALS model")
    row = model.user_row(str(user))
    cols = [model.item_row(str(i)) for i in ids.tolist()]
    if row is None:
        return np.zeros(len(ids))
    vector = model.user_factors[row]
    return np.array([float(model.item_factors[c] @ vector) if c is not None else 0.0 for c in cols])


def _z(values: np.ndarray) -> np.ndarray:
    std = float(values.std())
    return (values - values.mean()) / std if std > 0 else np.zeros_like(values)


def _extended(user, cols, scores, ids, unit, item_col, store: OfflineFeatureStore, knn, alt) -> np.ndarray:
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


def _fit_second(ratings: Ratings, params: PipelineParams) -> AlsModel | None:
    if params.feature_set != "extended":
        return None
    model = AlsRecommender(SECOND_ALS)
    model.fit(ratings)
    return model.model


def group_ndcg(groups: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> float:
    """Mean NDCG@k over (scores, binary labels) groups, as LightGBM's `ndcg` metric computes it.

    The ideal order is over the group's own positives; ties are broken by row order.
    """
    if not groups:
        return 0.0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    total = 0.0
    for scores, labels in groups:
        top = labels[np.argsort(-scores, kind="stable")[:k]]
        ideal = discounts[: min(k, int(labels.sum()))].sum()
        total += float((top * discounts[: len(top)]).sum() / ideal) if ideal > 0 else 1.0
    return total / len(groups)


def _in_validation(user: int, share: float, seed: int) -> bool:
    digest = hashlib.blake2b(f"{seed}:{user}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


@dataclass
class RankerFit:
    booster: lgb.Booster
    feature_names: tuple[str, ...]
    columns: np.ndarray  # of feature_names(feature_set), the ones the booster takes
    stats: dict


def train_ranker(train: Ratings, movies: Sequence[Movie], als_params: ALSParams, params: PipelineParams) -> RankerFit:
    """Carve labels from `train`, build candidate groups on the history, fit the booster."""
    all_names = feature_names(params.feature_set)
    unknown = set(params.drop_features) - set(all_names)
    if unknown:
        raise ValueError(f"drop_features names unknown features: {sorted(unknown)}")
    columns = np.array([i for i, name in enumerate(all_names) if name not in params.drop_features])
    names = tuple(all_names[i] for i in columns)
    parts = {True: ([], [], []), False: ([], [], [])}
    rank_column = all_names.index("candidate_rank")
    validation_als_order: list[tuple[np.ndarray, np.ndarray]] = []
    label_ratings = 0
    for fold in range(params.folds):
        label_mask = carve_labels(train, params.label_share, params.carve, params.min_history, params.seed, fold)
        if not label_mask.any():
            continue
        label_ratings += int(label_mask.sum())
        history, labels = train.subset(~label_mask), train.subset(label_mask)
        inner = AlsRecommender(als_params)
        inner.fit(history)
        store = OfflineFeatureStore(history, movies, als_params)
        truth: dict[int, set[int]] = {}
        for user, item in zip(labels.user_ids.tolist(), labels.movie_ids.tolist()):
            truth.setdefault(user, set()).add(item)
        seen = {user: set(items) for user, items in store.history.items()}
        second = _fit_second(history, params)
        users, items, xs = candidate_groups(inner.model, store, sorted(truth), seen, params, second)
        for user, ids, x in zip(users, items, xs):
            y = np.fromiter((1.0 if i in truth[user] else 0.0 for i in ids.tolist()), np.float64, len(ids))
            if y.sum() == 0:
                continue  # a group without a positive teaches lambdarank nothing
            in_validation = _in_validation(user, params.validation_share, params.seed)
            rows, ys, sizes = parts[in_validation]
            rows.append(x[:, columns])
            if in_validation:
                validation_als_order.append((-x[:, rank_column], y))
            ys.append(y)
            sizes.append(len(y))
    (t_rows, t_y, t_sizes), (v_rows, v_y, v_sizes) = parts[False], parts[True]
    if not t_sizes or not v_sizes:
        raise ValueError("too few users with labels among their candidates to train and validate a ranker")
    dtrain = lgb.Dataset(np.vstack(t_rows), np.concatenate(t_y), group=t_sizes, feature_name=list(names))
    dvalid = lgb.Dataset(np.vstack(v_rows), np.concatenate(v_y), group=v_sizes, reference=dtrain)
    booster = lgb.train(
        {
            "objective": "lambdarank",
            "metric": "ndcg",
            "eval_at": [10],
            "label_gain": [0.0, 1.0],
            "learning_rate": params.learning_rate,
            "num_leaves": params.num_leaves,
            "min_data_in_leaf": params.min_data_in_leaf,
            "feature_fraction": 0.9,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "num_threads": params.num_threads,
            "seed": params.seed,
            "deterministic": True,
            "verbosity": -1,
        },
        dtrain,
        num_boost_round=params.max_rounds,
        valid_sets=[dvalid],
        callbacks=[lgb.early_stopping(params.early_stopping_rounds, verbose=False)],
    )
    stats = {
        "training_groups": len(t_sizes),
        "validation_groups": len(v_sizes),
        "best_iteration": booster.best_iteration,
        # The same validation groups ordered by the ALS score alone: what the ranker adds.
        "validation_ndcg@10_als_order": round(group_ndcg(validation_als_order, 10), 4),
        "validation_ndcg@10": round(float(booster.best_score["valid_0"]["ndcg@10"]), 4),
        "label_ratings": label_ratings,
    }
    return RankerFit(booster, names, columns, stats)


class RankerPipelineRecommender:
    """ALS retrieval (fitted on the whole train part) re-ranked by a learned ranker."""

    name = "als+ranker"

    def __init__(
        self, movies: Sequence[Movie], als_params: ALSParams | None = None, params: PipelineParams | None = None
    ):
        self.movies = list(movies)
        self.als_params = als_params or ALSParams()
        self.params = params or PipelineParams()
        self.retrieval = AlsRecommender(self.als_params)
        self.fit_result: RankerFit | None = None

    def fit(self, train: Ratings) -> None:
        self.fit_result = train_ranker(train, self.movies, self.als_params, self.params)
        self.retrieval.fit(train)
        self.second = _fit_second(train, self.params)
        self.store = OfflineFeatureStore(train, self.movies, self.als_params)

    def recommend(self, users: Sequence[int], k: int, seen: Ratings) -> dict[int, list[int]]:
        if self.fit_result is None:
            raise RuntimeError("fit() first")
        seen_sets: dict[int, set[int]] = {}
        for user, item in zip(seen.user_ids.tolist(), seen.movie_ids.tolist()):
            seen_sets.setdefault(user, set()).add(item)
        params = replace(self.params, als_candidates=max(self.params.als_candidates, k))
        out_users, items, xs = candidate_groups(self.retrieval.model, self.store, users, seen_sets, params, self.second)
        if not out_users:
            return {}
        booster = self.fit_result.booster
        x = np.vstack(xs)[:, self.fit_result.columns]
        scores = booster.predict(x, num_iteration=booster.best_iteration, num_threads=self.params.num_threads)
        out: dict[int, list[int]] = {}
        start = 0
        for user, ids in zip(out_users, items):
            s = scores[start : start + len(ids)]
            start += len(ids)
            order = np.argsort(-s, kind="stable")[:k]
            out[user] = [int(i) for i in ids[order]]
        return out

    def details(self) -> dict:
        """The training summary `evaluate` prints under "ranker"."""
        fit = self.fit_result
        return {
            "ranker": {
                **(fit.stats if fit else {}),
                "feature_names": list(fit.feature_names) if fit else [],
                "params": asdict(self.params),
            }
        }

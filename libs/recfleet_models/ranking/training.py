"""The one ranker trainer: LightGBM lambdarank over the ranking service's features.

`recfleet-jobs train-ranker` runs it on the event log in Postgres; offline evaluation
(`recfleet-jobs evaluate --model als+ranker`, `recfleet_models.pipeline_eval`) runs it on
a protocol's train part. Both hand over an `InteractionLog` and a catalog; every setting
is a field of `RankerParams`, whose defaults are production's, and `PRESETS` names the
other settings in use.

One training group per user (and label fold):

1. Label carving. `carve="recent"` (production: an event log is ordered in time): the
   user's last `label_share` of interactions (1 to `max_labels`) are the labels, dated
   at the first label's time `t`; the history is what the user did strictly before `t`,
   so nothing of the label period leaks into it. `carve="random"` (for protocols that
   split at random, where time order means little): `folds` disjoint random shares of
   each user's interactions are the labels in turn, the rest the history, and `t` is the
   newest history interaction. A user left with fewer than `min_history` history
   interactions gives no group (and keeps every interaction as history).
2. An ALS with the given hyper-parameters is fitted on the history only: factors fitted
   on the labels too would hand the ranker the answers through the candidate score.
3. Candidates: its top `als_candidates` plus the `popular_candidates` most popular
   history items, the user's history excluded; label 1 when the user interacted with the
   candidate in the label part. Groups without a positive are dropped. Production's
   mix is what the gateway sends the ranking service for a user with history: the top
   `candidates_per_shard` of every shard (100 x 2 = 200; by the fused ALS + EASE score
   for a version with EASE, `Fusion`) and nothing else.
4. Features: `learned.feature_matrix` (what the ranking service computes) over
   candidates and a user as the feature store would have served them at `t`: popularity
   sums the interactions before `t` (every user's; with a random carve, the history's),
   weighted as the popularity job weighs them (the ALS event weights), over the most
   popular item's sum; 7-day popularity over the week before `t`; the user's interaction
   count and category affinities from the history; freshness and item age at `t`. A
   hashed `affinity_dropout` share of users get no affinities, so the model learns a path
   for requests that carry none (LightGBM's missing-value branch).
5. A hashed `validation_share` of users is held out. Without early stopping all of them
   validate; with `early_stopping_rounds` a hashed half of them picks the round the
   booster stops at and the other half validates, so the users the ranker is judged on
   took no part in any training decision. Their NDCG@10 under the ranker, under the
   candidate order (the candidate scores the ranker would re-rank: what serves without
   a ranker when the rule formula is reduced to its candidate term) and under the rule
   formula, over the same candidates, is recorded (`validation_ndcg@10`,
   `validation_ndcg@10_candidate_order`, `validation_ndcg@10_rules`).
6. The gate (`ranker_gate`): a ranker earns its place only when it beats the better of
   the candidate order and the rule formula by a margin; otherwise that better order is
   what should serve, and the verdict says why.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import lightgbm as lgb
import numpy as np
import scipy.sparse as sp

from ..als import AlsModel, ALSParams, build_interaction_matrix, event_weights, fit_als, top_k_batch
from ..ease import ALS_SOURCE, EASE_SOURCE, fit_ease, fused, popularity
from .features import AFFINITY_PREFIX, SECONDS_PER_DAY, Candidate, UserContext, assign_ranks
from .learned import FEATURE_NAMES, feature_matrix
from .rules import RuleWeights, rule_scores

# A user id: the job's are strings, MovieLens's ints; `str()` of one is its ALS row id.
UserId = int | str
WEEK = 7 * SECONDS_PER_DAY
CARVES = ("recent", "random")
# Users scored per block when proposing candidates (a block's scores are users x items).
BLOCK = 1024

# What orders the candidates: the learned ranker, the candidate scores as retrieval gave
# them, or the rule formula.
RANKER = "ranker"
CANDIDATE_ORDER = "candidate-order"
RULES = "rules"
# The validation metrics `train_ranker` records, by what ordered the candidates.
VALIDATION_METRICS = {
    RANKER: "validation_ndcg@10",
    CANDIDATE_ORDER: "validation_ndcg@10_candidate_order",
    RULES: "validation_ndcg@10_rules",
}
# The standard error of the ranker's per-user NDCG@10 gain over each order.
GAIN_SE_METRICS = {
    CANDIDATE_ORDER: "validation_gain_se_candidate_order",
    RULES: "validation_gain_se_rules",
}
_ORDER_NAMES = {CANDIDATE_ORDER: "the candidate order", RULES: "the rule formula"}
# How much a ranker must beat the better of the candidate order and the rule formula by,
# unless told otherwise: in held-out NDCG@10 (absolute), and in standard errors of that
# gain (per user, paired), as train-als's tuning asks of a setting.
DEFAULT_MIN_GAIN = 0.002
DEFAULT_MIN_GAIN_SE = 2.0


@dataclass(frozen=True)
class RankerParams:
    """Label carving, candidates, features and booster of one training run.

    The defaults are production's (`train-ranker`): a time-ordered carve; the candidate
    mix the gateway sends (the top 100 of each of 2 shards, no other source; the job
    derives `als_candidates` from its shard settings); and small, shallow trees (at
    most `max_rounds` of `num_leaves` leaves and depth `max_depth`), which predict 500
    candidates in well under a millisecond single-threaded and keep TreeSHAP
    explanations (cost grows with leaves times depth squared) cheap.
    """

    carve: str = "recent"
    label_share: float = 0.2
    # Most labels per user and fold; None: no limit.
    max_labels: int | None = 10
    min_history: int = 4
    # Disjoint random carves, each with its own history-only ALS (random carve only).
    folds: int = 1
    als_candidates: int = 200
    popular_candidates: int = 0
    freshness_half_life_days: float = 365.0
    affinity_dropout: float = 0.2
    # Computed features the model does not use (the service serves any subset).
    drop_features: tuple[str, ...] = ()
    validation_share: float = 0.2
    learning_rate: float = 0.05
    num_leaves: int = 15
    # -1: no limit.
    max_depth: int = 5
    min_data_in_leaf: int = 80
    feature_fraction: float = 1.0
    bagging_fraction: float = 1.0
    max_rounds: int = 80
    # 0: train all `max_rounds` rounds; otherwise stop when the validation NDCG@10 has not
    # improved for this many.
    early_stopping_rounds: int = 0
    num_threads: int = 1
    seed: int = 42

    def __post_init__(self) -> None:
        if self.carve not in CARVES:
            raise ValueError(f"carve must be one of {', '.join(CARVES)}, got {self.carve!r}")
        if not 0 < self.label_share < 1:
            raise ValueError("label_share must be in (0, 1)")
        if self.max_labels is not None and self.max_labels < 1:
            raise ValueError("max_labels must be at least 1 (or None)")
        if self.folds < 1 or (self.folds > 1 and self.carve != "random"):
            raise ValueError("folds must be >= 1, and 1 unless carve is random")
        if self.folds * self.label_share > 1 + 1e-9:
            raise ValueError("folds * label_share must not exceed 1")
        if self.als_candidates < 1:
            raise ValueError("als_candidates must be at least 1")
        if self.popular_candidates < 0:
            raise ValueError("popular_candidates must be >= 0")
        if not 0 <= self.affinity_dropout < 1:
            raise ValueError("affinity_dropout must be in [0, 1)")
        if not 0 < self.validation_share < 1:
            raise ValueError("validation_share must be in (0, 1)")
        if self.max_rounds < 1 or self.early_stopping_rounds < 0:
            raise ValueError("max_rounds must be at least 1 and early_stopping_rounds >= 0")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Named settings of the same trainer. "random-split" is what offline evaluation uses on
# protocols that split each user's ratings at random (recommenders-ml100k, recbole): random
# label folds (a newest-first carve trains for the wrong task there), more candidates, a
# slower learning rate, more rows a leaf, no depth limit, bagging and early stopping,
# chosen on ml-100k; production's settings lose 0.0046 NDCG@10 on ml-latest-small even
# with random folds (docs/evaluation.md, "One trainer, two presets").
PRESETS: dict[str, RankerParams] = {
    "production": RankerParams(),
    "random-split": RankerParams(
        carve="random",
        label_share=0.25,
        max_labels=None,
        min_history=5,
        folds=4,
        als_candidates=100,
        popular_candidates=20,
        affinity_dropout=0.0,
        learning_rate=0.02,
        max_depth=-1,
        min_data_in_leaf=200,
        feature_fraction=0.9,
        bagging_fraction=0.8,
        max_rounds=600,
        early_stopping_rounds=40,
        num_threads=2,
    ),
}


@dataclass
class InteractionLog:
    """Interactions as parallel arrays.

    User ids may be of any sortable type (`str()` of one is its id for ALS); item ids are
    strings; times are epoch seconds; values are NaN where an event has none.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray
    types: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.user_ids)

    def subset(self, mask_or_index: np.ndarray) -> InteractionLog:
        return InteractionLog(
            self.user_ids[mask_or_index],
            self.item_ids[mask_or_index],
            self.timestamps[mask_or_index],
            self.types[mask_or_index],
            self.values[mask_or_index],
        )


@dataclass(frozen=True)
class CatalogItem:
    categories: tuple[str, ...] = ()
    published_at: float = 0.0


@dataclass
class PopularityClock:
    """Point-in-time item popularity: weighted interactions strictly before a time.

    Weighted as the popularity job weighs them (the ALS event weights), so training sees
    the scale the online `popularity` feature has.
    """

    times_by_item: dict[str, np.ndarray]
    cumulative_by_item: dict[str, np.ndarray]
    event_times: np.ndarray
    running_max: np.ndarray

    @classmethod
    def build(cls, item_ids: np.ndarray, timestamps: np.ndarray, weights: np.ndarray | None = None) -> PopularityClock:
        order = np.argsort(timestamps, kind="stable")
        times = np.asarray(timestamps, dtype=np.float64)[order]
        items = np.asarray(item_ids, dtype=object)[order]
        weights = np.ones(len(items)) if weights is None else np.asarray(weights, dtype=np.float64)[order]
        grouped_times: dict[str, list[float]] = defaultdict(list)
        grouped_sums: dict[str, list[float]] = defaultdict(lambda: [0.0])
        running = np.empty(len(items) + 1)
        running[0] = top = 0.0
        for i, (item, t, w) in enumerate(zip(items.tolist(), times.tolist(), weights.tolist(), strict=True)):
            sums = grouped_sums[item]
            grouped_times[item].append(t)
            sums.append(sums[-1] + w)
            top = max(top, sums[-1])
            running[i + 1] = top
        return cls(
            {k: np.asarray(v) for k, v in grouped_times.items()},
            {k: np.asarray(v) for k, v in grouped_sums.items()},
            times,
            running,
        )

    def count(self, item: str, start: float, end: float) -> float:
        """Weighted interactions with the item in `[start, end)`."""
        times = self.times_by_item.get(item)
        if times is None:
            return 0.0
        sums = self.cumulative_by_item[item]
        return float(sums[np.searchsorted(times, end, "left")] - sums[np.searchsorted(times, start, "left")])

    def popularity(self, item: str, t: float) -> float:
        """All-time popularity at `t`: over the most popular item's at `t`, in [0, 1]."""
        top = self.running_max[np.searchsorted(self.event_times, t, "left")]
        return self.count(item, -np.inf, t) / top if top > 0 else 0.0

    def recent(self, item: str, now: float, end: float) -> float:
        """Weighted interactions under 7 days older than `now` (the popularity job's `7d`
        window) and before `end`."""
        times = self.times_by_item.get(item)
        if times is None:
            return 0.0
        sums = self.cumulative_by_item[item]
        start = np.searchsorted(times, now - WEEK, "right")
        stop = np.searchsorted(times, end, "left")
        return float(sums[stop] - sums[start]) if stop > start else 0.0


@dataclass
class ServedFeatures:
    """What the feature store would serve about items and users at a moment.

    Item popularity counts the clock's interactions before `horizon` (the moment itself
    when the clock covers the future too, +inf when it holds only the past); freshness,
    item age and the 7-day window are as of `now`.
    """

    clock: PopularityClock
    catalog: Mapping[str, CatalogItem]
    now: float
    horizon: float
    _popularity: dict[str, tuple[float, float]] = field(default_factory=dict, repr=False)

    def candidate(self, item_id: str, score: float, source: str) -> Candidate:
        info = self.catalog.get(item_id, CatalogItem())
        known = self._popularity.get(item_id)
        if known is None:
            known = self._popularity[item_id] = (
                self.clock.popularity(item_id, self.horizon),
                self.clock.recent(item_id, self.now, self.horizon),
            )
        return Candidate(
            item_id,
            score,
            source,
            categories=info.categories,
            published_at=info.published_at,
            age_rating=0,
            popularity=known[0],
            popularity_7d=known[1],
        )

    def user(self, user_id: UserId, history: Sequence[str], with_affinity: bool = True) -> UserContext:
        """Interaction count and category affinities (shares of the history) of a user."""
        features: dict[str, float] = {}
        if with_affinity:
            counts: Counter[str] = Counter()
            for item in history:
                counts.update(self.catalog.get(item, CatalogItem()).categories)
            total = max(1, len(history))
            features = {AFFINITY_PREFIX + category: n / total for category, n in counts.items()}
        features["interaction_count"] = float(len(history))
        return UserContext(str(user_id), features=features)


class ExtraColumns(Protocol):
    """Offline-only feature columns appended after FEATURE_NAMES (offline evaluation's
    extended set): `for_fold` sees the fold's history and ALS, and returns a function of
    (user, candidate item ids, candidate scores) giving the columns."""

    names: tuple[str, ...]

    def for_fold(
        self, history: InteractionLog, model: AlsModel
    ) -> Callable[[UserId, np.ndarray, np.ndarray], np.ndarray]: ...


@dataclass
class CandidateGroup:
    user_id: UserId
    item_ids: np.ndarray  # str
    candidates: list[Candidate]
    features: np.ndarray  # candidates x (FEATURE_NAMES + extra names)
    now: float


@dataclass(frozen=True)
class Fusion:
    """EASE fused with ALS, as an ALS version that has the EASE source serves it
    (`recfleet_models.ease`): candidates are proposed and scored by the fused score."""

    l2: float
    als_weight: float
    max_items: int
    min_users: int = 2
    popularity_penalty: float = 0.0

    @classmethod
    def of(cls, ease: Mapping[str, Any] | None) -> Fusion | None:
        """From a version's `params.ease` block (None, or a weight of 1: no fusion)."""
        if not ease or float(ease.get("als_weight", 1.0)) >= 1.0:
            return None
        return cls(
            float(ease["l2"]),
            float(ease["als_weight"]),
            int(ease["max_items"]),
            int(ease.get("min_users", 2)),
            float(ease.get("popularity_penalty", 0.0)),
        )


# Users' rows -> (their candidate scores over the model's items, each source's own scores
# by source name when the scores fuse several; empty for ALS alone).
BlockScorer = Callable[[np.ndarray], tuple[np.ndarray, dict[str, np.ndarray]]]


def als_scorer(model: AlsModel) -> BlockScorer:
    """Users' rows -> their ALS scores over the model's items."""
    return lambda rows: (model.user_factors[rows] @ model.item_factors.T, {})


def fused_scorer(model: AlsModel, matrix: sp.csr_matrix, fusion: Fusion) -> BlockScorer:
    """Users' rows -> their fused ALS + EASE scores over the model's items, EASE fitted on
    `matrix` (the users x items matrix the model was fitted on, rows and columns aligned)."""
    ease = fit_ease(matrix, model.item_ids, fusion.l2, fusion.max_items, fusion.min_users)
    columns = np.fromiter((model.item_row(item) for item in ease.item_ids), np.int64, len(ease.item_ids))
    history = matrix[:, columns].astype(bool).astype(np.float32).tocsr()
    item_popularity = popularity(matrix)

    def score(rows: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        als = model.user_factors[rows] @ model.item_factors.T
        ease_scores = np.zeros_like(als)
        ease_scores[:, columns] = history[rows] @ ease.weights
        mixed = fused(  # one user per row
            als,
            ease_scores,
            fusion.als_weight,
            popularity_penalty=fusion.popularity_penalty,
            item_popularity=item_popularity,
        )
        return mixed, {ALS_SOURCE: als, EASE_SOURCE: ease_scores}

    return score


def popular_columns(model: AlsModel, item_ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The model's item columns, most popular first by summed weight (ties by column)."""
    index = {item: col for col, item in enumerate(model.item_ids)}
    cols = np.fromiter((index.get(i, -1) for i in item_ids.tolist()), np.int64, len(item_ids))
    known = cols >= 0
    totals = np.bincount(
        cols[known], weights=np.asarray(weights, dtype=np.float64)[known], minlength=len(model.item_ids)
    )
    return np.argsort(-totals, kind="stable")


def candidate_groups(
    model: AlsModel,
    users: Sequence[UserId],
    seen: Mapping[UserId, set[str]],
    histories: Mapping[UserId, Sequence[str]],
    popular: np.ndarray,
    served: Callable[[UserId], ServedFeatures],
    params: RankerParams,
    extra: Callable[[UserId, np.ndarray, np.ndarray], np.ndarray] | None = None,
    affinity_dropout: float = 0.0,
    scorer: BlockScorer | None = None,
) -> Iterator[CandidateGroup]:
    """Candidates and their feature rows for each user with a factor row.

    Candidates: the top `als_candidates` by `scorer` (ALS's scores by default, the fused
    ALS + EASE scores for a version with EASE) plus the `popular_candidates` first of
    `popular` (item columns), `seen` excluded. `served(user)` gives the features as the
    feature store would serve them to that user; `histories` are what user features are
    computed from; a hashed `affinity_dropout` share of users get no affinities. Training
    and offline scoring both propose candidates through here.
    """
    item_ids = np.asarray(model.item_ids, dtype=object)
    item_col = {item: col for col, item in enumerate(model.item_ids)}
    known = [u for u in users if model.user_row(str(u)) is not None]
    for start in range(0, len(known), BLOCK):
        chunk = known[start : start + BLOCK]
        rows = np.array([model.user_row(str(u)) for u in chunk])
        scores, components = (scorer or als_scorer(model))(rows)
        ex_r, ex_c = [], []
        for r, user in enumerate(chunk):
            cols = [item_col[i] for i in seen.get(user, ()) if i in item_col]
            ex_r += [r] * len(cols)
            ex_c += cols
        exclude = sp.csr_matrix((np.ones(len(ex_r)), (ex_r, ex_c)), shape=scores.shape)
        best = top_k_batch(scores, params.als_candidates, exclude)
        for r, user in enumerate(chunk):
            chosen = [int(c) for c in best[r] if c >= 0]
            if not chosen:
                continue
            taken = set(chosen)
            user_seen = seen.get(user, set())
            extra_cols: list[int] = []
            for c in popular[: params.popular_candidates + len(taken) + len(user_seen)].tolist():
                if len(extra_cols) >= params.popular_candidates:
                    break
                if c not in taken and item_ids[c] not in user_seen:
                    extra_cols.append(c)
            picked = np.array(chosen + extra_cols, dtype=np.int64)
            ids = item_ids[picked]
            candidate_scores = scores[r, picked]
            source = served(user)
            candidates = [
                source.candidate(item, float(s), "als" if n < len(chosen) else "popular")
                for n, (item, s) in enumerate(zip(ids.tolist(), candidate_scores.tolist(), strict=True))
            ]
            assign_ranks(candidates)
            with_affinity = not _hash_below(f"{user}:affinity", affinity_dropout)
            context = source.user(user, histories.get(user, ()), with_affinity)
            # What the shards send with a fused list: each source's own score per candidate.
            source_scores = {name: values[r, picked] for name, values in components.items()} or None
            x = feature_matrix(candidates, context, source.now, params.freshness_half_life_days, source_scores)
            if extra is not None:
                x = np.hstack([x, extra(user, ids, candidate_scores)])
            yield CandidateGroup(user, ids, candidates, x, source.now)


def _hash_below(key: str, share: float) -> bool:
    """True for `share` of keys, the same ones across runs."""
    if share <= 0:
        return False
    digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
    return digest / 2**64 < share


def in_validation(user: UserId, share: float, seed: int) -> bool:
    """Whether the user's groups are held out (a hash of seed and id)."""
    digest = hashlib.blake2b(f"{seed}:{user}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def stops_early(user: UserId, seed: int) -> bool:
    """Whether a held-out user picks the early-stopping round (a hashed half of them)
    rather than validating the trained ranker."""
    return _hash_below(f"{seed}:{user}:stopping", 0.5)


@dataclass
class Carve:
    """One label fold: the history rows, and per labelled user the label items and the
    time features are served as of."""

    history: np.ndarray  # bool over the log
    labels: dict[UserId, set[str]]
    as_of: dict[UserId, float]
    # True: the clock covers the whole log and is read before each user's time.
    point_in_time: bool


def carve_labels(log: InteractionLog, params: RankerParams, fold: int = 0) -> Carve:
    """The label fold `fold` of the log under `params.carve` (see the module doc)."""
    if params.carve == "recent":
        return _carve_recent(log, params)
    return _carve_random(log, params, fold)


def _n_labels(n: int, params: RankerParams) -> int:
    n_labels = max(1, round(params.label_share * n))
    return n_labels if params.max_labels is None else min(params.max_labels, n_labels)


def _carve_recent(log: InteractionLog, params: RankerParams) -> Carve:
    users, items, times = log.user_ids, log.item_ids, log.timestamps
    order = np.lexsort((times, users))
    history = np.ones(len(log), dtype=bool)
    labels: dict[UserId, set[str]] = {}
    as_of: dict[UserId, float] = {}
    sorted_users, sorted_times = users[order], times[order]
    boundaries = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1], True])
    for start, end in itertools.pairwise(boundaries.tolist()):
        n = end - start
        n_labels = _n_labels(n, params)
        if n - n_labels < params.min_history:
            continue
        cut = end - n_labels
        t = float(sorted_times[cut])
        # Interactions at the first label's second belong to the labels' side.
        earlier = start + int(np.searchsorted(sorted_times[start:cut], t, "left"))
        if earlier - start < params.min_history:
            continue
        history[order[earlier:end]] = False
        before = set(items[order[start:earlier]].tolist())
        user_labels = set(items[order[cut:end]].tolist()) - before
        if user_labels:
            user = sorted_users[start : start + 1].tolist()[0]
            labels[user] = user_labels
            as_of[user] = t
    return Carve(history, labels, as_of, point_in_time=True)


def _carve_random(log: InteractionLog, params: RankerParams, fold: int) -> Carve:
    rng = np.random.default_rng(params.seed)
    noise = rng.random(len(log))
    order = np.lexsort((noise, log.user_ids))
    users = log.user_ids[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    is_label = np.zeros(len(log), dtype=bool)
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        n = end - start
        n_labels = _n_labels(n, params)
        if n - n_labels < params.min_history:
            continue
        stop = end - fold * n_labels
        if stop - n_labels < start:
            continue
        is_label[order[stop - n_labels : stop]] = True
    history = ~is_label
    labels: dict[UserId, set[str]] = {}
    for user, item in zip(log.user_ids[is_label].tolist(), log.item_ids[is_label].tolist(), strict=True):
        labels.setdefault(user, set()).add(item)
    newest = float(log.timestamps[history].max()) if history.any() else 0.0
    return Carve(history, labels, dict.fromkeys(labels, newest), point_in_time=False)


@dataclass
class _Moments:
    """What is served to each user of one fold: one ServedFeatures per as-of time."""

    clock: PopularityClock
    catalog: Mapping[str, CatalogItem]
    carve: Carve
    known: dict[float, ServedFeatures] = field(default_factory=dict)

    def __call__(self, user: UserId) -> ServedFeatures:
        t = self.carve.as_of[user]
        served = self.known.get(t)
        if served is None:
            horizon = t if self.carve.point_in_time else np.inf
            served = self.known[t] = ServedFeatures(self.clock, self.catalog, t, horizon)
        return served


@dataclass
class Groups:
    """Training or validation groups: stacked feature rows, labels and group sizes; for
    validation also each group's candidate scores and rule-formula scores."""

    features: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    users: list[UserId] = field(default_factory=list)
    rule_scores: list[np.ndarray] = field(default_factory=list)
    candidate_scores: list[np.ndarray] = field(default_factory=list)

    @property
    def sizes(self) -> list[int]:
        return [len(y) for y in self.labels]

    def add(self, group: CandidateGroup, labels: np.ndarray, rules: RuleWeights | None = None) -> None:
        """One user's group; with `rules`, its candidate and rule-formula scores too."""
        self.features.append(group.features)
        self.labels.append(labels)
        self.users.append(group.user_id)
        if rules is not None:
            self.candidate_scores.append(np.fromiter((c.score for c in group.candidates), np.float64, len(labels)))
            self.rule_scores.append(rule_scores(group.candidates, group.now, rules)[0])


def group_ndcgs(groups: Sequence[tuple[np.ndarray, np.ndarray]], k: int = 10) -> np.ndarray:
    """NDCG@k of each (scores, binary labels) group, as LightGBM's `ndcg` metric computes it.

    The ideal order is over the group's own positives; ties are broken by row order.
    """
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    out = np.empty(len(groups))
    for n, (scores, labels) in enumerate(groups):
        top = labels[np.argsort(-scores, kind="stable")[:k]]
        ideal = discounts[: min(k, int(labels.sum()))].sum()
        out[n] = float((top * discounts[: len(top)]).sum() / ideal) if ideal > 0 else 1.0
    return out


def group_ndcg(groups: Sequence[tuple[np.ndarray, np.ndarray]], k: int = 10) -> float:
    """Mean NDCG@k over (scores, binary labels) groups (`group_ndcgs`)."""
    return float(group_ndcgs(groups, k).mean()) if groups else 0.0


def paired_gain(users: Sequence[UserId], better: np.ndarray, worse: np.ndarray) -> tuple[float, float]:
    """(mean gain, its standard error) of one order's per-group NDCG over another's, the
    gain taken per user (a user's groups of several folds averaged first, since they are
    not independent); the standard error is inf with fewer than two users."""
    by_user: dict[UserId, list[float]] = defaultdict(list)
    for user, gain in zip(users, (better - worse).tolist(), strict=True):
        by_user[user].append(gain)
    gains = np.array([np.mean(values) for values in by_user.values()])
    if len(gains) < 2:
        return (float(gains.mean()) if len(gains) else 0.0), float("inf")
    return float(gains.mean()), float(gains.std(ddof=1) / np.sqrt(len(gains)))


def feature_names(extra: ExtraColumns | None = None) -> tuple[str, ...]:
    """Every column the trainer computes, in order: the service's, then `extra`'s."""
    return FEATURE_NAMES + (extra.names if extra is not None else ())


@dataclass
class GroupSplit:
    """A log's groups by what they are for: training the booster, picking its stopping
    round (empty without early stopping), and validating the trained ranker."""

    train: Groups
    stopping: Groups
    validation: Groups
    stats: dict[str, Any]


def build_groups(
    log: InteractionLog,
    catalog: Mapping[str, CatalogItem],
    als_params: ALSParams,
    params: RankerParams = PRESETS["production"],
    extra: ExtraColumns | None = None,
    fusion: Fusion | None = None,
) -> GroupSplit:
    """The training, stopping and validation groups of an interaction log, with statistics.
    With `fusion`, each fold's candidates come from ALS + EASE fitted on its history."""
    weights = event_weights(log.types.tolist(), log.values.tolist(), als_params)
    positive = weights > 0
    log, weights = log.subset(positive), weights[positive]
    rules = RuleWeights(half_life_days=params.freshness_half_life_days)
    train, stopping, valid = Groups(), Groups(), Groups()
    stats: dict[str, Any] = {
        "interactions": len(log),
        "users_with_labels": 0,
        "label_interactions": 0,
        "als_seconds": 0.0,
    }
    for fold in range(params.folds):
        carve = carve_labels(log, params, fold)
        if not carve.labels:
            continue
        stats["users_with_labels"] = max(stats["users_with_labels"], len(carve.labels))
        stats["label_interactions"] += sum(len(v) for v in carve.labels.values())
        history = log.subset(carve.history)
        matrix, user_index, item_index = build_interaction_matrix(
            history.user_ids, history.item_ids, history.types.tolist(), history.values.tolist(), als_params
        )
        model = fit_als(matrix, als_params, user_index, item_index)
        stats["als_seconds"] += model.train_seconds
        if carve.point_in_time:
            clock = PopularityClock.build(log.item_ids, log.timestamps, weights)
        else:
            clock = PopularityClock.build(history.item_ids, history.timestamps, weights[carve.history])
        histories: dict[UserId, list[str]] = {}
        for user, item in zip(history.user_ids.tolist(), history.item_ids.tolist(), strict=True):
            histories.setdefault(user, []).append(item)
        seen = {user: set(items) for user, items in histories.items()}

        served = _Moments(clock, catalog, carve)
        popular = popular_columns(model, history.item_ids, weights[carve.history])
        fold_extra = extra.for_fold(history, model) if extra is not None else None
        users = sorted(carve.labels)
        scorer = fused_scorer(model, matrix, fusion) if fusion is not None else None
        groups = candidate_groups(
            model, users, seen, histories, popular, served, params, fold_extra, params.affinity_dropout, scorer
        )
        for group in groups:
            truth = carve.labels[group.user_id]
            y = np.fromiter(
                (1.0 if i in truth else 0.0 for i in group.item_ids.tolist()), np.float64, len(group.item_ids)
            )
            if y.sum() == 0:
                continue  # a group without a positive teaches lambdarank nothing
            if not in_validation(group.user_id, params.validation_share, params.seed):
                train.add(group, y)
            elif params.early_stopping_rounds and stops_early(group.user_id, params.seed):
                stopping.add(group, y)
            else:
                valid.add(group, y, rules)
    stats.update(
        training_groups=len(train.labels),
        stopping_groups=len(stopping.labels),
        validation_groups=len(valid.labels),
        als_seconds=round(stats["als_seconds"], 3),
    )
    return GroupSplit(train, stopping, valid, stats)


@dataclass
class RankerFit:
    """A trained ranker: the booster, the features it takes (names, and their columns
    among `feature_names(extra)`), held-out metrics and training statistics."""

    booster: lgb.Booster
    feature_names: tuple[str, ...]
    columns: np.ndarray
    metrics: dict[str, Any]
    stats: dict[str, Any]
    params: RankerParams

    def predict(self, x: np.ndarray, num_threads: int = 1) -> np.ndarray:
        """Scores for rows of `feature_names(extra)` columns."""
        return np.asarray(
            self.booster.predict(
                x[:, self.columns], num_iteration=self.booster.best_iteration or None, num_threads=num_threads
            )
        )


def fit_booster(
    train: Groups, valid: Groups, names: tuple[str, ...], columns: np.ndarray, params: RankerParams
) -> lgb.Booster:
    """LightGBM lambdarank on the training groups; with `early_stopping_rounds`, stopped
    when the NDCG@10 of the `valid` groups stops improving."""
    if not train.labels or not valid.labels:
        raise ValueError("too few users with labels among their candidates to train and validate a ranker")
    dtrain = lgb.Dataset(
        np.vstack(train.features)[:, columns], np.concatenate(train.labels), group=train.sizes, feature_name=list(names)
    )
    dvalid = lgb.Dataset(
        np.vstack(valid.features)[:, columns], np.concatenate(valid.labels), group=valid.sizes, reference=dtrain
    )
    callbacks: list[Callable[..., Any]] = []
    if params.early_stopping_rounds:
        callbacks.append(lgb.early_stopping(params.early_stopping_rounds, verbose=False))
    return lgb.train(
        {
            "objective": "lambdarank",
            "metric": "ndcg",
            "eval_at": [10],
            "label_gain": [0.0, 1.0],
            "learning_rate": params.learning_rate,
            "num_leaves": params.num_leaves,
            "max_depth": params.max_depth,
            "min_data_in_leaf": params.min_data_in_leaf,
            "feature_fraction": params.feature_fraction,
            "bagging_fraction": params.bagging_fraction,
            "bagging_freq": 1 if params.bagging_fraction < 1 else 0,
            "num_threads": params.num_threads,
            "seed": params.seed,
            "deterministic": True,
            "verbosity": -1,
        },
        dtrain,
        num_boost_round=params.max_rounds,
        valid_sets=[dvalid],
        callbacks=callbacks,
    )


def train_ranker(
    log: InteractionLog,
    catalog: Mapping[str, CatalogItem],
    als_params: ALSParams,
    params: RankerParams = PRESETS["production"],
    extra: ExtraColumns | None = None,
    fusion: Fusion | None = None,
) -> RankerFit:
    """Build the groups from the log (see the module doc), fit the booster and validate it
    on the held-out users against the candidate order and the rule formula. `fusion`: the
    serving ALS version's EASE source, so the ranker learns on the candidates it serves."""
    all_names = feature_names(extra)
    unknown = set(params.drop_features) - set(all_names)
    if unknown:
        raise ValueError(f"drop_features names unknown features: {sorted(unknown)}")
    columns = np.array([i for i, name in enumerate(all_names) if name not in params.drop_features])
    names = tuple(all_names[i] for i in columns)
    split = build_groups(log, catalog, als_params, params, extra, fusion)
    valid = split.validation
    if params.early_stopping_rounds and not split.stopping.labels:
        raise ValueError("too few users with labels among their candidates to stop early and validate a ranker")
    booster = fit_booster(
        split.train, split.stopping if params.early_stopping_rounds else valid, names, columns, params
    )
    fit = RankerFit(booster, names, columns, {}, split.stats, params)
    predicted = fit.predict(np.vstack(valid.features), params.num_threads)
    ranker_groups, start = [], 0
    for y in valid.labels:
        ranker_groups.append((predicted[start : start + len(y)], y))
        start += len(y)
    per_group = {
        RANKER: group_ndcgs(ranker_groups),
        CANDIDATE_ORDER: group_ndcgs(list(zip(valid.candidate_scores, valid.labels, strict=True))),
        RULES: group_ndcgs(list(zip(valid.rule_scores, valid.labels, strict=True))),
    }
    fit.metrics = {VALIDATION_METRICS[name]: round(float(ndcgs.mean()), 4) for name, ndcgs in per_group.items()}
    for name in (CANDIDATE_ORDER, RULES):
        se = paired_gain(valid.users, per_group[RANKER], per_group[name])[1]
        fit.metrics[GAIN_SE_METRICS[name]] = round(se, 4) if np.isfinite(se) else None
    fit.metrics["validation_users"] = len(set(valid.users))
    fit.stats = {**split.stats, "best_iteration": booster.best_iteration or booster.current_iteration()}
    return fit


@dataclass(frozen=True)
class RankerVerdict:
    """The gate's verdict on a trained ranker: `passed`, what should order the candidates
    (`serves`: the ranker when it passed, else the better of the candidate order and the
    rule formula), the figures it compared and, in `reason`, why, in one line."""

    passed: bool
    serves: str
    ndcg: float
    baseline: str
    baseline_ndcg: float
    gain_se: float | None
    min_gain: float
    min_gain_se: float
    reason: str

    @property
    def gain(self) -> float:
        return round(self.ndcg - self.baseline_ndcg, 4)

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "serves": self.serves,
            "baseline": self.baseline,
            "gain": self.gain,
            "gain_se": self.gain_se,
            "min_gain": self.min_gain,
            "min_gain_se": self.min_gain_se,
            "reason": self.reason,
        }


def ranker_gate(
    metrics: Mapping[str, Any], min_gain: float = DEFAULT_MIN_GAIN, min_gain_se: float = DEFAULT_MIN_GAIN_SE
) -> RankerVerdict:
    """Whether a ranker earns its place, from the held-out figures `train_ranker` recorded.

    It passes when its NDCG@10 beats the better of the candidate order and the rule
    formula, over the same held-out candidates, by at least `min_gain` (absolute) and by
    more than `min_gain_se` standard errors of that gain (per user, paired; unknown with
    fewer than two users, which fails unless `min_gain_se` is 0): a ranker that merely
    ties them, or beats them by what a different draw of held-out users could take
    away, costs a model call on every request and adds nothing. Between the candidate
    order and the rule formula a tie goes to the candidate order, the simpler of the two.
    """
    if min_gain < 0 or min_gain_se < 0:
        raise ValueError("min_gain and min_gain_se must not be negative")
    try:
        ndcg, order, rules = (float(metrics[VALIDATION_METRICS[name]]) for name in (RANKER, CANDIDATE_ORDER, RULES))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"the metrics lack the held-out figures the gate compares: {error}") from None
    baseline, baseline_ndcg = (CANDIDATE_ORDER, order) if order >= rules else (RULES, rules)
    recorded = metrics.get(GAIN_SE_METRICS[baseline])
    se = float(recorded) if isinstance(recorded, int | float) and not isinstance(recorded, bool) else None
    gain = ndcg - baseline_ndcg
    # A gain of exactly the margin passes, whatever the floating-point rounding.
    large_enough = gain >= min_gain - 1e-9
    significant = min_gain_se == 0 or (se is not None and gain > min_gain_se * se)
    passed = large_enough and significant
    se_text = f"{se:.4f}" if se is not None else "unknown"
    compared = (
        f"held-out NDCG@10 {ndcg:.4f} against {baseline_ndcg:.4f} for {_ORDER_NAMES[baseline]}"
        f" over the same candidates ({gain:+.4f}, standard error {se_text}"
    )
    required = f"at least {min_gain:g} and more than {min_gain_se:g} standard errors"
    if passed:
        reason = f"{compared}; {required} required)"
    else:
        reason = f"the ranker does not beat {_ORDER_NAMES[baseline]} by {required}: {compared})"
    return RankerVerdict(
        passed,
        RANKER if passed else baseline,
        ndcg,
        baseline,
        baseline_ndcg,
        se,
        min_gain,
        min_gain_se,
        reason,
    )

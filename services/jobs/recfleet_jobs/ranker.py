"""`recfleet-jobs train-ranker`: the LightGBM lambdarank ranker, trained from interactions.

Training groups, one per user (leave-last-out in time):

- each user's last interactions (20%, 1 to 10) are the labels; the earlier ones are the
  user's history, and every feature is computed as of the first label's time `t`:
  item popularity all-time and over the 7 days before `t` (every user's interactions
  before `t`), the user's interaction count and category affinities from the history,
  freshness and item age at `t`;
- candidates are the ALS top-N for the user plus the popular items, minus the history.
  The ALS model is fitted here on the history periods only, with the serving ALS
  version's hyper-parameters: the serving factors were fitted on the label interactions
  too, which would hand the ranker the answers through the candidate score;
- label 1 when the user interacted with the candidate in the label period.

Features come from `recfleet_ranking.learned.feature_matrix`, the function the ranking
service calls on online features, so training and serving compute the same columns.
Users are split into training and held-out sets by a hash of their id; the held-out
NDCG@10 of the ranker, of the rule formula and of the ALS order are recorded with the
version.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime

import lightgbm as lgb
import numpy as np
import psycopg
import typer
from recfleet_models.als import ALSParams, build_interaction_matrix, event_weights, fit_als
from recfleet_ranking.adapters.models import write_ranker
from recfleet_ranking.features import AFFINITY_PREFIX, SECONDS_PER_DAY, Candidate, UserContext, assign_ranks
from recfleet_ranking.learned import FEATURE_NAMES, feature_matrix, model_meta
from recfleet_ranking.rules import RuleWeights, rule_scores
from recfleet_store import registry
from recfleet_store.artifacts import ArtifactStore, open_artifact_store

from .settings import JobSettings

WEEK = 7 * SECONDS_PER_DAY


@dataclass(frozen=True)
class RankerTrainingParams:
    """How training groups are built and the booster is trained."""

    label_share: float = 0.2
    max_labels: int = 10
    min_history: int = 4
    als_candidates: int = 50
    popular_candidates: int = 20
    holdout_share: float = 0.2
    # Small, shallow trees: on ml-latest-small they rank as well as bigger ones, predict
    # 500 rows in well under a millisecond single-threaded, and keep TreeSHAP explanations
    # (cost grows with leaves times depth squared) cheap.
    num_boost_round: int = 80
    learning_rate: float = 0.05
    num_leaves: int = 15
    max_depth: int = 5
    min_data_in_leaf: int = 80
    freshness_half_life_days: float = 365.0
    # Share of users trained without category affinities, so the model has a learned path
    # for requests that carry none (cold users, a caller that does not send them).
    affinity_dropout: float = 0.2
    seed: int = 42

    def __post_init__(self):
        if not 0 < self.label_share < 1:
            raise ValueError("label_share must be in (0, 1)")
        if not 0 < self.holdout_share < 1:
            raise ValueError("holdout_share must be in (0, 1)")
        if self.als_candidates < 1:
            raise ValueError("als_candidates must be at least 1")


@dataclass
class EventLog:
    """Interactions as parallel arrays (ids as strings, time in epoch seconds)."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray
    types: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.user_ids)


@dataclass
class CatalogItem:
    categories: tuple[str, ...] = ()
    published_at: float = 0.0


@dataclass
class TrainingGroups:
    features: np.ndarray
    labels: np.ndarray
    sizes: list[int]
    user_ids: list[str]
    # Rule-formula and ALS scores of every row, for the baselines.
    rule_scores: np.ndarray
    als_scores: np.ndarray


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


def _hash_below(key: str, share: float) -> bool:
    """True for `share` of keys, the same ones across runs."""
    digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
    return digest / 2**64 < share


def build_groups(
    events: EventLog,
    catalog: dict[str, CatalogItem],
    als_params: ALSParams,
    params: RankerTrainingParams = RankerTrainingParams(),
) -> tuple[TrainingGroups, TrainingGroups, dict]:
    """(training groups, held-out groups, statistics) from an event log."""
    weights = event_weights(events.types.tolist(), events.values.tolist(), als_params)
    positive = weights > 0
    users, items, times = events.user_ids[positive], events.item_ids[positive], events.timestamps[positive]
    kinds, values, weights = events.types[positive], events.values[positive], weights[positive]

    order = np.lexsort((times, users))
    users, items, times, kinds, values, weights = (
        users[order], items[order], times[order], kinds[order], values[order], weights[order]
    )
    boundaries = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True])
    history_mask = np.zeros(len(users), dtype=bool)
    splits: dict[str, tuple[float, set[str], list[str]]] = {}
    for start, end in itertools.pairwise(boundaries):
        n = end - start
        n_labels = int(min(params.max_labels, max(1, round(params.label_share * n))))
        if n - n_labels < params.min_history:
            continue
        cut = end - n_labels
        t = float(times[cut])
        earlier = start + int(np.searchsorted(times[start:cut], t, "left"))
        if earlier - start < params.min_history:
            continue
        history_mask[start:earlier] = True
        history = items[start:earlier].tolist()
        labels = set(items[cut:end].tolist()) - set(history)
        if labels:
            splits[str(users[start])] = (t, labels, history)

    # Popularity at a user's `t` counts every interaction before it, other users' included.
    clock = PopularityClock.build(items, times, weights)
    matrix, user_index, item_index = build_interaction_matrix(
        users[history_mask], items[history_mask], kinds[history_mask].tolist(), values[history_mask].tolist(),
        als_params,
    )
    als = fit_als(matrix, als_params, user_index, item_index)
    item_pos = {item: i for i, item in enumerate(als.item_ids)}
    user_pos = {user: i for i, user in enumerate(als.user_ids)}
    popular_rows = np.argsort(-np.asarray(matrix.sum(axis=0)).ravel(), kind="stable")

    train, held = _GroupBuilder(), _GroupBuilder()
    weights_rules = RuleWeights(half_life_days=params.freshness_half_life_days)
    for user_id, (t, labels, history) in splits.items():
        row = user_pos.get(user_id)
        if row is None:
            continue
        seen = {item_pos[i] for i in history if i in item_pos}
        scores = als.item_factors @ als.user_factors[row]
        ranked = np.argsort(-scores)
        chosen = [i for i in ranked[: params.als_candidates + len(seen)] if i not in seen][: params.als_candidates]
        taken = seen | set(chosen)
        extra = [i for i in popular_rows[: params.popular_candidates + len(taken)] if i not in taken]
        extra = extra[: params.popular_candidates]
        rows = chosen + extra
        label_vector = np.array([1 if als.item_ids[i] in labels else 0 for i in rows])
        if label_vector.sum() == 0:
            continue
        candidates = []
        for i in rows:
            item_id = als.item_ids[i]
            info = catalog.get(item_id, CatalogItem())
            candidates.append(
                Candidate(
                    item_id, float(scores[i]), "popular" if i in extra else "als",
                    categories=info.categories, published_at=info.published_at, age_rating=0,
                    popularity=clock.popularity(item_id, t),
                    popularity_7d=float(clock.count(item_id, t - WEEK, t)),
                )
            )
        assign_ranks(candidates)
        with_affinity = not _hash_below(user_id + ":affinity", params.affinity_dropout)
        user = UserContext(user_id, features=_user_features(history, catalog, with_affinity))
        x = feature_matrix(candidates, user, t, params.freshness_half_life_days)
        rule, _ = rule_scores(candidates, t, weights_rules)
        target = held if _hash_below(user_id, params.holdout_share) else train
        target.add(user_id, x, label_vector, rule, scores[rows])
    stats = {
        "events": len(events),
        "users_with_labels": len(splits),
        "training_groups": len(train.sizes),
        "holdout_groups": len(held.sizes),
        "als_seconds": round(als.train_seconds, 3),
    }
    return train.build(), held.build(), stats


def _user_features(history: list[str], catalog: dict[str, CatalogItem], with_affinity: bool) -> dict[str, float]:
    features = {}
    if with_affinity:
        counts: Counter = Counter()
        for item in history:
            counts.update(catalog.get(item, CatalogItem()).categories)
        total = max(1, len(history))
        features = {AFFINITY_PREFIX + category: n / total for category, n in counts.items()}
    features["interaction_count"] = float(len(history))
    return features


@dataclass
class _GroupBuilder:
    rows: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    rules: list = field(default_factory=list)
    als: list = field(default_factory=list)
    sizes: list = field(default_factory=list)
    users: list = field(default_factory=list)

    def add(self, user_id, x, labels, rules, als):
        self.rows.append(x)
        self.labels.append(labels)
        self.rules.append(rules)
        self.als.append(als)
        self.sizes.append(len(labels))
        self.users.append(user_id)

    def build(self) -> TrainingGroups:
        if not self.rows:
            empty = np.empty(0)
            return TrainingGroups(np.empty((0, len(FEATURE_NAMES))), empty, [], [], empty, empty)
        return TrainingGroups(
            np.vstack(self.rows), np.concatenate(self.labels), self.sizes, self.users,
            np.concatenate(self.rules), np.concatenate(self.als),
        )


def ndcg_at(scores: np.ndarray, labels: np.ndarray, sizes: list[int], k: int = 10) -> float:
    """Mean NDCG@k over groups (binary relevance; ties broken by row order)."""
    if not sizes:
        return 0.0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    total, start = 0.0, 0
    for size in sizes:
        s, y = scores[start : start + size], labels[start : start + size]
        start += size
        top = y[np.argsort(-s, kind="stable")[:k]]
        ideal = np.sort(y)[::-1][:k]
        idcg = float((ideal * discounts[: len(ideal)]).sum())
        total += float((top * discounts[: len(top)]).sum()) / idcg if idcg > 0 else 0.0
    return total / len(sizes)


def train_booster(train: TrainingGroups, params: RankerTrainingParams) -> lgb.Booster:
    if not train.sizes:
        raise ValueError("no training groups: too few users with enough interactions")
    dataset = lgb.Dataset(train.features, train.labels, group=train.sizes, feature_name=list(FEATURE_NAMES))
    return lgb.train(
        {
            "objective": "lambdarank",
            "metric": "ndcg",
            "eval_at": [10],
            "learning_rate": params.learning_rate,
            "num_leaves": params.num_leaves,
            "max_depth": params.max_depth,
            "min_data_in_leaf": params.min_data_in_leaf,
            "num_threads": 1,
            "seed": params.seed,
            "deterministic": True,
            "verbosity": -1,
        },
        dataset,
        num_boost_round=params.num_boost_round,
    )


def evaluate(booster: lgb.Booster, held: TrainingGroups) -> dict[str, float]:
    """Held-out NDCG@10 of the ranker and the two baselines over the same candidates."""
    ranker = booster.predict(held.features, num_threads=1) if held.sizes else np.empty(0)
    return {
        "ndcg@10": round(ndcg_at(ranker, held.labels, held.sizes), 4),
        "ndcg@10_rules": round(ndcg_at(held.rule_scores, held.labels, held.sizes), 4),
        "ndcg@10_als": round(ndcg_at(held.als_scores, held.labels, held.sizes), 4),
        "holdout_users": len(held.sizes),
    }


def als_params_of(store: ArtifactStore, conn: psycopg.Connection) -> tuple[ALSParams, str]:
    """The serving ALS version's hyper-parameters (defaults before the first ALS version)."""
    version = registry.serving_version(conn, "als") or registry.latest_version(conn, "als")
    if not version:
        return ALSParams(), ""
    row = registry.get_version(conn, version)
    try:
        meta = json.loads(store.get_bytes(f"{row['artifact_uri'].rstrip('/')}/meta.json"))
    except (OSError, ValueError):
        return ALSParams(), version
    known = {f.name for f in fields(ALSParams)}
    given = {**meta.get("params", {}), **{k: v for k, v in meta.items() if k in known}}
    try:
        return ALSParams(**{k: v for k, v in given.items() if k in known}), version
    except (TypeError, ValueError):
        return ALSParams(), version


def read_events(conn: psycopg.Connection) -> EventLog:
    rows = conn.execute("SELECT user_id, item_id, extract(epoch FROM ts)::float8, type, value FROM events").fetchall()
    if not rows:
        return EventLog(*(np.empty(0, dtype=object) for _ in range(5)))
    users, items, times, types, values = zip(*rows)
    return EventLog(
        np.asarray(users, dtype=object), np.asarray(items, dtype=object), np.asarray(times, dtype=np.float64),
        np.asarray(types, dtype=object), np.asarray([np.nan if v is None else v for v in values], dtype=np.float64),
    )


def read_catalog(conn: psycopg.Connection) -> dict[str, CatalogItem]:
    rows = conn.execute(
        "SELECT item_id, categories, coalesce(extract(epoch FROM published_at)::float8, 0) FROM items"
    ).fetchall()
    return {item_id: CatalogItem(tuple(categories), float(published)) for item_id, categories, published in rows}


def train_ranker(
    postgres_dsn: str, store: ArtifactStore, params: RankerTrainingParams = RankerTrainingParams(),
    promote: bool = False,
) -> dict:
    """Train, evaluate, write and register one ranker version; returns its summary."""
    started = time.perf_counter()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        events = read_events(conn)
        catalog = read_catalog(conn)
        als_params, als_version = als_params_of(store, conn)
    if len(events) == 0:
        raise ValueError("no events in Postgres: load interactions first")
    train, held, stats = build_groups(events, catalog, als_params, params)
    booster = train_booster(train, params)
    metrics = {**evaluate(booster, held), **stats}
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        version = registry.new_version_name("ranker")
        meta = model_meta(
            version, FEATURE_NAMES, metrics=metrics, params=_params_dict(params), als_params_from=als_version,
            freshness_half_life_days=params.freshness_half_life_days, trained_at=datetime.now(UTC).isoformat(),
        )
        prefix = write_ranker(store, version, booster.model_to_string(), meta)
        registry.register_version(conn, version, "ranker", prefix, metrics, _params_dict(params))
        previous = registry.promote(conn, "ranker", version) if promote else None
    return {
        "version": version,
        "artifact_uri": prefix,
        "promoted": promote,
        "replaced": previous,
        "metrics": metrics,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _params_dict(params: RankerTrainingParams) -> dict:
    return {f.name: getattr(params, f.name) for f in fields(params)}


def train_ranker_command(
    promote: bool = typer.Option(False, "--promote", help="make the new version the serving ranker"),
    rounds: int = typer.Option(RankerTrainingParams.num_boost_round, min=1, help="boosting rounds"),
    als_candidates: int = typer.Option(RankerTrainingParams.als_candidates, min=1, help="ALS candidates per user"),
) -> None:
    """Train a LightGBM lambdarank ranker from the events in Postgres and register it."""
    settings = JobSettings()
    params = RankerTrainingParams(num_boost_round=rounds, als_candidates=als_candidates)
    try:
        summary = train_ranker(settings.postgres_dsn, open_artifact_store(settings.artifact_url), params, promote)
    except ValueError as error:
        typer.echo(f"train-ranker: {error}", err=True)
        raise typer.Exit(1) from error
    typer.echo(json.dumps(summary))


def register(app: typer.Typer) -> None:
    app.command("train-ranker")(train_ranker_command)

"""`recfleet-jobs train-als`: train ALS on the event log and publish a model version.

Unless `--tune-seconds 0`, the run first searches the hyper-parameters on a validation
split carved from the event log (each user's most recent items; recfleet_models.tuning)
within the time budget, with a progress bar on stderr; options given on the command line
are not searched. One run then writes, in this order: the version's files into the
artifact store (`models/als/<version>/`, docs/CONTRACTS.md; `checksums.json` last, so a
reader that finds it finds every file), the user vectors into Postgres `user_vectors`
and Redis `rf:uv:{<user>}` (field = version), then the registry row (`candidate`, with
the chosen parameters and, under `metrics.tuning`, the validation NDCG of every point
tried), and with `--promote` the promotion. The last stdout line is `version=<version>`.

After ALS, the EASE item-to-item source (recfleet_models.ease) is tuned the same way
(`tune_ease`, RECFLEET_JOBS_EASE_*; `--no-ease` skips it) and, when it beats ALS alone
on the validation split, fitted on the whole matrix and published in the version:
`ease/items.json` (the vocabulary, B's row and column order), `ease/weights.npy` (B,
float32 n x n), `ease/meta.json` (l2, als_weight, popularity_penalty, max_items,
min_users, vocabulary_size) and, with a popularity penalty, `ease/popularity.npy` (every
ALS item's standardised log user count, float32 in item_ids.json's order), all in
`checksums.json`. The version's meta.json and registry params
carry that dict under `ease` (null without EASE), its metrics the search under
`ease_tuning`; build-index splits B over the shards.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg
import redis
import typer
from recfleet_models.als import (
    DEFAULT_EVENT_WEIGHTS,
    DEFAULT_VALUE_TRANSFORMS,
    WEIGHTINGS,
    AlsModel,
    ALSParams,
    build_interaction_matrix,
    build_interaction_times,
    fit_als,
)
from recfleet_models.ease import EaseModel, fit_ease, popularity
from recfleet_models.evaluation import holdout_metrics
from recfleet_models.index import POPULARITY_FILE
from recfleet_models.tuning import (
    HOLDOUTS,
    EaseTrial,
    EaseTuningResult,
    SearchSpace,
    Trial,
    TuningResult,
    ease_trial_count,
    tune_als,
    tune_ease,
)
from recfleet_store import keys, registry, suppression
from recfleet_store.artifacts import ArtifactStore, open_artifact_store, sha256
from tqdm import tqdm

from .settings import JobSettings

_REDIS_CHUNK = 1000
_PG_CHUNK = 5000


@dataclass(frozen=True)
class EventLog:
    """Every event train-als reads, as parallel lists (times in epoch seconds)."""

    users: list[str]
    items: list[str]
    types: list[str]
    values: list[float | None]
    times: list[float]


def read_interactions(conn: psycopg.Connection, erasure_hash_key: str, available_items_only: bool = False) -> EventLog:
    """Every event (only those on available items, with `available_items_only`), erased
    users left out (their events are deleted at erasure; this covers an erasure racing
    the run)."""
    users: list[str] = []
    items: list[str] = []
    types: list[str] = []
    values: list[float | None] = []
    times: list[float] = []
    with conn.transaction():
        erased = suppression.load(conn, erasure_hash_key)
        with conn.cursor(name="als_events") as cursor:
            cursor.itersize = 50_000
            available = " JOIN items i ON i.item_id = e.item_id AND i.available" if available_items_only else ""
            cursor.execute(
                "SELECT e.user_id, e.item_id, e.type, e.value, extract(epoch FROM e.ts)::float8 FROM events e"
                + available
            )
            for user, item, event_type, value, ts in cursor:
                users.append(user)
                items.append(item)
                types.append(event_type)
                values.append(value)
                times.append(ts)
    gone = erased.among(users)
    if gone:
        kept = [i for i, user in enumerate(users) if user not in gone]
        users, items = [users[i] for i in kept], [items[i] for i in kept]
        types, values = [types[i] for i in kept], [values[i] for i in kept]
        times = [times[i] for i in kept]
    return EventLog(users, items, types, values, times)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype="<f4"), allow_pickle=False)
    return buffer.getvalue()


def artifact_prefix(version: str) -> str:
    return f"models/als/{version}"


@dataclass(frozen=True)
class PublishedEase:
    """What a version publishes of its EASE source: the model, its `ease_meta` and, with
    a popularity penalty, every ALS item's popularity (`ease.popularity`, item order)."""

    model: EaseModel
    meta: dict[str, Any]
    item_popularity: np.ndarray | None = None


def ease_meta(
    model: EaseModel, als_weight: float, popularity_penalty: float, max_items: int, min_users: int
) -> dict[str, Any]:
    """What a version records of its EASE source (`ease/meta.json`, meta.json's `ease`)."""
    return {
        "l2": model.l2,
        "als_weight": als_weight,
        "popularity_penalty": popularity_penalty,
        "max_items": max_items,
        "min_users": min_users,
        "vocabulary_size": len(model.item_ids),
    }


def publish_artifacts(
    store: ArtifactStore,
    version: str,
    model: AlsModel,
    meta: dict[str, Any],
    ease: PublishedEase | None = None,
) -> dict[str, str]:
    """Write the version's files (with `ease`, the EASE model, its `ease_meta` and the
    items' popularity when it has a penalty); returns their checksums (also written, last)."""
    files = {
        "item_ids.json": json.dumps(model.item_ids).encode(),
        "item_factors.npy": _npy(model.item_factors),
        "user_ids.json": json.dumps(model.user_ids).encode(),
        "user_factors.npy": _npy(model.user_factors),
        "meta.json": json.dumps(meta, indent=2, sort_keys=True).encode(),
    }
    if ease is not None:
        files["ease/items.json"] = json.dumps(ease.model.item_ids).encode()
        files["ease/weights.npy"] = _npy(ease.model.weights)
        files["ease/meta.json"] = json.dumps(ease.meta, indent=2, sort_keys=True).encode()
        if ease.item_popularity is not None:
            files[POPULARITY_FILE] = _npy(ease.item_popularity)
    prefix = artifact_prefix(version)
    checksums = {}
    for name, data in files.items():
        store.put_bytes(f"{prefix}/{name}", data)
        checksums[name] = sha256(data)
    store.put_bytes(f"{prefix}/checksums.json", json.dumps(checksums, indent=2, sort_keys=True).encode())
    return checksums


def load_model(store: ArtifactStore, version: str) -> AlsModel:
    """Read an ALS version back from the artifact store, verifying its checksums."""
    prefix = artifact_prefix(version)
    if not store.exists(f"{prefix}/checksums.json"):
        raise FileNotFoundError(f"ALS version {version!r} is not in the artifact store (no checksums.json)")
    checksums = json.loads(store.get_bytes(f"{prefix}/checksums.json"))
    blobs = {}
    for name in ("item_ids.json", "item_factors.npy", "user_ids.json", "user_factors.npy", "meta.json"):
        data = store.get_bytes(f"{prefix}/{name}")
        if checksums.get(name) != sha256(data):
            raise ValueError(f"ALS version {version!r}: {name} does not match its checksum")
        blobs[name] = data
    meta = json.loads(blobs["meta.json"])
    known = {f.name for f in fields(ALSParams)}
    given = {key: value for key, value in meta.items() if key in known}
    # Versions from before ratings had a weight and other values a transform: ratings
    # counted by their stars, every other value was ignored.
    given["event_weights"] = {**DEFAULT_EVENT_WEIGHTS, **meta.get("event_weights", {})}
    given.setdefault("value_transforms", {"rating": "rating"})
    params = ALSParams(**given)
    return AlsModel(
        np.load(io.BytesIO(blobs["user_factors.npy"])).astype(np.float32),
        np.load(io.BytesIO(blobs["item_factors.npy"])).astype(np.float32),
        [str(u) for u in json.loads(blobs["user_ids.json"])],
        [str(i) for i in json.loads(blobs["item_ids.json"])],
        params,
    )


def write_user_vectors_postgres(conn: psycopg.Connection, version: str, model: AlsModel) -> None:
    with (
        conn.transaction(),
        conn.cursor().copy("COPY user_vectors (user_id, model_version, vector) FROM STDIN") as copy,
    ):
        for start in range(0, len(model.user_ids), _PG_CHUNK):
            block = model.user_factors[start : start + _PG_CHUNK]
            lines = []
            for user, row in zip(model.user_ids[start : start + _PG_CHUNK], block, strict=False):
                vector = ",".join(np.char.mod("%.9g", row))
                lines.append(f"{_copy_text(user)}\t{_copy_text(version)}\t{{{vector}}}\n")
            copy.write("".join(lines))


def _copy_text(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def write_user_vectors_redis(client: redis.Redis, version: str, model: AlsModel) -> None:
    vectors = np.ascontiguousarray(model.user_factors, dtype="<f4")
    for start in range(0, len(model.user_ids), _REDIS_CHUNK):
        pipe = client.pipeline(transaction=False)
        for offset, user in enumerate(model.user_ids[start : start + _REDIS_CHUNK]):
            pipe.hset(keys.user_vectors(user), version, vectors[start + offset].tobytes())
        pipe.execute()


def settings_params(settings: JobSettings, **given: Any) -> ALSParams:
    """ALS hyper-parameters: command-line values over JobSettings defaults."""
    chosen = {key: value for key, value in given.items() if value is not None}
    base = {
        "factors": settings.als_factors,
        "iterations": settings.als_iterations,
        "regularization": settings.als_regularization,
        "alpha": settings.als_alpha,
        "rating_offset": settings.als_rating_offset,
        "weighting": settings.als_weighting,
        "value_transforms": {**DEFAULT_VALUE_TRANSFORMS, **settings.als_value_transforms},
    }
    return ALSParams(**{**base, **chosen})


@dataclass(frozen=True)
class TuningPlan:
    """How a run searches ALS hyper-parameters (`recfleet_models.tuning.tune_als`)."""

    seconds: float
    max_trials: int
    holdout: str
    min_gain_se: float
    space: SearchSpace

    def __post_init__(self) -> None:
        if self.seconds < 0 or self.max_trials < 0:
            raise ValueError("the tuning budget (seconds, points) must be >= 0")
        if self.holdout not in HOLDOUTS:
            raise ValueError(f"the tuning holdout must be one of {', '.join(HOLDOUTS)}, got {self.holdout!r}")

    @property
    def off(self) -> bool:
        return self.seconds == 0 or self.max_trials == 0

    def options(self) -> dict[str, Any]:
        """Keyword arguments of `tune_als` (with `budget_seconds`)."""
        return {"max_trials": self.max_trials, "min_gain_se": self.min_gain_se, "space": self.space}


def tuning_plan(
    settings: JobSettings,
    seconds: float | None = None,
    max_trials: int | None = None,
    holdout: str | None = None,
    **pinned: Any,
) -> TuningPlan:
    """Command-line values over the RECFLEET_JOBS_ALS_TUNE_* settings; `pinned` axes
    (factors, regularization, alpha, weighting given on the command line) are not searched."""
    return TuningPlan(
        settings.als_tune_seconds if seconds is None else seconds,
        settings.als_tune_max_trials if max_trials is None else max_trials,
        holdout or settings.als_tune_holdout,
        settings.als_tune_min_gain_se,
        SearchSpace().pinned(**pinned),
    )


@contextmanager
def _search_progress(
    total: int, description: str, enabled: bool, last: Callable[[Any], str]
) -> Iterator[Callable[[Any, int], None]]:
    """A tqdm bar on stderr for a hyper-parameter search (points tried out of `total`,
    ETA, best validation NDCG so far, `last(trial)`) and the callback that moves it."""
    best = 0.0
    with tqdm(
        total=total,
        desc=description,
        unit="point",
        # None: only on a terminal (CronJob logs get the summary line, not a bar).
        disable=None if enabled else True,
        leave=False,
    ) as bar:

        def on_trial(trial: Any, number: int) -> None:
            nonlocal best
            best = max(best, trial.ndcg)
            bar.update(number - bar.n)
            bar.set_postfix_str(f"best ndcg@10 {best:.4f}, last {last(trial)}")

        yield on_trial


@contextmanager
def tuning_progress(plan: TuningPlan, enabled: bool = True) -> Iterator[Callable[[Trial, int], None]]:
    """The ALS search's progress bar and the callback that moves it."""
    description = f"tuning ALS (budget {plan.seconds:g}s)"
    with _search_progress(plan.max_trials, description, enabled, lambda t: f"{t.phase} {t.ndcg:.4f}") as on_trial:
        yield on_trial


def tuning_summary(result: TuningResult) -> str:
    """One line for humans: how the search went and what it chose."""
    if result.stopped == "off":
        return "tuning: off (no budget: --tune-seconds 0 or --tune-trials 0); using the given parameters"
    if not result.trials:
        return f"tuning: skipped ({result.stopped}: {result.validation}); using the given parameters"
    chosen = result.trial_of(result.chosen)
    given = result.trial_of(result.given)
    axes = ", ".join(f"{key}={value}" for key, value in result.as_dict()["chosen"].items())
    verdict = "kept the given parameters" if result.as_dict()["kept_given"] else "changed the parameters"
    return (
        f"tuning: {len(result.trials)} points in {result.seconds:.1f}s ({result.stopped}) on {result.validation}; "
        f"{verdict}: {axes}; validation ndcg@{result.k} {chosen.ndcg if chosen else float('nan'):.4f} "
        f"(given {given.ndcg if given else float('nan'):.4f})"
    )


@contextmanager
def ease_progress(seconds: float, enabled: bool = True) -> Iterator[Callable[[EaseTrial, int], None]]:
    """The EASE search's progress bar: points (l2, ALS weight) out of the grid."""
    description = f"tuning EASE (budget {seconds:g}s)"
    with _search_progress(
        ease_trial_count(),
        description,
        enabled,
        lambda t: f"l2 {t.l2} weight {t.als_weight} penalty {t.popularity_penalty}",
    ) as on_trial:
        yield on_trial


def ease_summary(result: EaseTuningResult) -> str:
    """One line for humans: how the EASE search went and whether EASE is on."""
    setting = f"on, l2={result.l2:g} als_weight={result.als_weight:g} popularity_penalty={result.popularity_penalty:g}"
    if result.reason == "off":
        state = setting if result.adopted else "off"
        return f"ease: no search (no budget); {state} as configured"
    if not result.trials:
        return f"ease: off ({result.reason}: {result.validation})"
    gain, se = result.gain()
    alone = result.als_alone
    best = result.best
    figures = (
        f"validation ndcg@{result.k} {(best.ndcg if best else float('nan')):.4f}"
        f" vs ALS alone {(alone.ndcg if alone else float('nan')):.4f}, gain {gain:+.4f} ({gain / se:.1f} se)"
        if se > 0 and np.isfinite(se)
        else f"gain {gain:+.4f}"
    )
    if best is not None and alone is not None:
        figures += f"; coverage {best.coverage:.3f} vs ALS alone {alone.coverage:.3f}"
    verdict = setting if result.adopted else f"off (gain not above {result.min_gain_se:g} se)"
    return (
        f"ease: {len(result.trials)} points in {result.seconds:.1f}s ({result.stopped}) on {result.validation},"
        f" vocabulary {result.vocabulary_size} items; {figures}; {verdict}"
    )


def train_and_publish(
    settings: JobSettings,
    params: ALSParams,
    promote: bool = False,
    show_progress: bool = True,
    holdout: bool = True,
    tuning: TuningPlan | None = None,
    ease: bool = True,
) -> tuple[str, dict[str, Any]]:
    """The whole job; returns the new version and its metrics. With a `tuning` plan the
    parameters are searched first and `params` is where the search starts; with `ease`
    (and RECFLEET_JOBS_EASE_ENABLED) the EASE source is tuned and, when adopted, published."""
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        log = read_interactions(conn, settings.erasure_hash_key.get_secret_value())
        events = (log.users, log.items, log.types, log.values)
        matrix, user_index, item_index = build_interaction_matrix(*events, params)
        if matrix.nnz == 0:
            raise ValueError("no interactions to train on (load events first, e.g. load-movielens)")
        tuned: dict[str, Any] = {}
        searching = tuning is not None and not tuning.off
        recent = tuning is not None and tuning.holdout == "recent" and searching
        times = build_interaction_times(*events, log.times, params) if recent else None
        if tuning is not None:
            with tuning_progress(tuning, show_progress) as on_trial:
                result = tune_als(matrix, params, tuning.seconds, times=times, on_trial=on_trial, **tuning.options())
            typer.echo(tuning_summary(result), err=True)
            params = result.chosen
            tuned = {"tuning": result.as_dict()}
        ease_model: PublishedEase | None = None
        if ease and settings.ease_enabled:
            budget = settings.ease_tune_seconds if searching else 0.0
            with ease_progress(budget, show_progress and budget > 0) as on_ease_trial:
                chosen = tune_ease(
                    matrix,
                    params,
                    budget,
                    times=times,
                    l2=settings.ease_l2,
                    als_weight=settings.ease_als_weight,
                    popularity_penalty=settings.ease_popularity_penalty,
                    max_items=settings.ease_max_items,
                    min_users=settings.ease_min_users,
                    min_gain_se=settings.als_tune_min_gain_se,
                    min_coverage_ratio=settings.ease_min_coverage_ratio,
                    on_trial=on_ease_trial,
                )
            typer.echo(ease_summary(chosen), err=True)
            tuned["ease_tuning"] = chosen.as_dict()
            if chosen.adopted:
                fitted = fit_ease(matrix, item_index, chosen.l2, settings.ease_max_items, settings.ease_min_users)
                if fitted.item_ids:
                    penalty = chosen.popularity_penalty
                    meta_ease = ease_meta(
                        fitted, chosen.als_weight, penalty, settings.ease_max_items, settings.ease_min_users
                    )
                    ease_model = PublishedEase(fitted, meta_ease, popularity(matrix) if penalty else None)

        version = registry.new_version_name("als")
        offline: dict[str, Any] = {}
        if holdout:
            try:
                scored = holdout_metrics(matrix, params)
            except ValueError:
                scored = None  # too few interactions per user to hold any out
            if scored is not None:
                offline = {f"holdout_{name}": value for name, value in scored.as_dict().items() if name != "k"}
        model = fit_als(matrix, params, user_index, item_index, show_progress=show_progress)
        metrics = {
            **offline,
            "train_seconds": round(model.train_seconds, 3),
            "seconds_per_iteration": round(model.train_seconds / params.iterations, 4),
            "events": len(log.users),
            "interactions": int(matrix.nnz),
            "n_users": len(user_index),
            "n_items": len(item_index),
            **tuned,
        }
        ease_dict = ease_model.meta if ease_model is not None else None
        meta = {
            "version": version,
            **dict(params.as_dict().items()),
            "n_users": len(user_index),
            "n_items": len(item_index),
            "trained_at": datetime.now(UTC).isoformat(),
            "metrics": metrics,
            "ease": ease_dict,
        }
        store = open_artifact_store(settings.artifact_url)
        publish_artifacts(store, version, model, meta, ease_model)
        write_user_vectors_postgres(conn, version, model)
        client = redis.Redis.from_url(settings.redis_url)
        try:
            write_user_vectors_redis(client, version, model)
            registry.register_version(
                conn,
                version,
                kind="als",
                artifact_uri=artifact_prefix(version),
                metrics=metrics,
                params={**params.as_dict(), "ease": ease_dict},
            )
            if promote:
                registry.promote(conn, "als", version, client)
        finally:
            client.close()
    return version, metrics


def train_als_command(
    factors: int | None = typer.Option(
        None, min=1, help="latent factors (not searched); default RECFLEET_JOBS_ALS_FACTORS"
    ),
    iterations: int | None = typer.Option(None, min=1, help="ALS sweeps; default RECFLEET_JOBS_ALS_ITERATIONS"),
    regularization: float | None = typer.Option(None, min=0.0, help="L2 penalty (not searched)"),
    alpha: float | None = typer.Option(None, help="confidence scale, > 0 (not searched)"),
    rating_offset: float | None = typer.Option(None, help="rating weight = max(0, stars - offset) + 1"),
    weighting: str | None = typer.Option(None, help=f"one of {', '.join(WEIGHTINGS)} (not searched)"),
    tune_seconds: float | None = typer.Option(
        None,
        min=0.0,
        help="search the other parameters this long first, 0 = off; default RECFLEET_JOBS_ALS_TUNE_SECONDS",
    ),
    tune_trials: int | None = typer.Option(
        None, min=0, help="at most this many points; default RECFLEET_JOBS_ALS_TUNE_MAX_TRIALS"
    ),
    tune_holdout: str | None = typer.Option(
        None, help=f"validation items: {' or '.join(HOLDOUTS)}; default RECFLEET_JOBS_ALS_TUNE_HOLDOUT"
    ),
    promote: bool = typer.Option(False, "--promote", help="make the new version the serving one"),
    holdout: bool = typer.Option(True, help="also fit on 90% of each user's items and record holdout metrics"),
    ease: bool = typer.Option(
        True, help="tune EASE after ALS and publish it when it helps (RECFLEET_JOBS_EASE_*); --no-ease: ALS alone"
    ),
) -> None:
    """Train ALS on the events in Postgres and publish a new model version."""
    settings = JobSettings()
    try:
        params = settings_params(
            settings,
            factors=factors,
            iterations=iterations,
            regularization=regularization,
            alpha=alpha,
            rating_offset=rating_offset,
            weighting=weighting,
        )
        plan = tuning_plan(
            settings,
            tune_seconds,
            tune_trials,
            tune_holdout,
            factors=factors,
            regularization=regularization,
            alpha=alpha,
            weighting=weighting,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    started = time.perf_counter()
    try:
        version, metrics = train_and_publish(settings, params, promote=promote, holdout=holdout, tuning=plan, ease=ease)
    except ValueError as error:
        typer.echo(f"train-als: {error}", err=True)
        raise typer.Exit(1) from error
    typer.echo(json.dumps({**metrics, "seconds": round(time.perf_counter() - started, 2), "promoted": promote}))
    typer.echo(f"version={version}")


def register(app: typer.Typer) -> None:
    app.command("train-als")(train_als_command)

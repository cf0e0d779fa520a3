"""`recfleet-jobs train-ranker`: the LightGBM lambdarank ranker, trained from the events in
Postgres, validated against what would serve without it, and registered; promoted with
`--promote` only when it earns its place.

The job reads the event log and the catalog, takes the serving ALS version's
hyper-parameters, and hands them to the one ranker trainer,
`recfleet_models.ranking.training` (the one offline evaluation runs too) with its
production settings (`RankerParams()`): each user's last interactions are the labels,
every feature is computed as of the first label's time, candidates come from an ALS
fitted on the history periods only, as many as the gateway sends ranking (the ALS top
RECFLEET_JOBS_RANKER_CANDIDATES_PER_SHARD of each of RECFLEET_JOBS_SHARD_COUNT shards);
see that module. The held-out NDCG@10 of the ranker, of the candidate order and of the
rule formula over the same candidates are recorded with the version, with the gate's
verdict (`training.ranker_gate`, margins RECFLEET_JOBS_RANKER_MIN_GAIN and
RECFLEET_JOBS_RANKER_MIN_GAIN_SE) under
`validation_gate`, where the registry's promotion gates read it: a version that does not
beat the better of the two is refused promotion, with the reason, unless forced. The
version is written in the ranker artifact format (`recfleet_models.ranking.artifacts`)
and registered as a candidate; `--promote` promotes it through the registry's gates and
publishes the serving version to Redis.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime

import numpy as np
import psycopg
import redis
import typer
from recfleet_models.als import ALSParams
from recfleet_models.ranking.artifacts import write_ranker
from recfleet_models.ranking.learned import model_meta
from recfleet_models.ranking.training import (
    DEFAULT_MIN_GAIN,
    DEFAULT_MIN_GAIN_SE,
    CatalogItem,
    Fusion,
    InteractionLog,
    RankerParams,
    ranker_gate,
    train_ranker,
)
from recfleet_store import registry
from recfleet_store.artifacts import ArtifactStore, open_artifact_store

from .settings import JobSettings


@dataclass(frozen=True)
class ServingRetrieval:
    """What proposes the candidates a ranker trained now will see: the serving ALS
    version's hyper-parameters and, when the version has one, its EASE fusion."""

    als_params: ALSParams
    version: str = ""
    fusion: Fusion | None = None


def serving_retrieval(store: ArtifactStore, conn: psycopg.Connection) -> ServingRetrieval:
    """The serving ALS version's retrieval (defaults before the first ALS version)."""
    version = registry.serving_version(conn, "als") or registry.latest_version(conn, "als")
    if not version:
        return ServingRetrieval(ALSParams())
    row = registry.get_version(conn, version)
    if row is None:
        return ServingRetrieval(ALSParams(), version)
    try:
        meta = json.loads(store.get_bytes(f"{row['artifact_uri'].rstrip('/')}/meta.json"))
    except (OSError, ValueError):
        return ServingRetrieval(ALSParams(), version)
    known = {f.name for f in fields(ALSParams)}
    given = {**meta.get("params", {}), **{k: v for k, v in meta.items() if k in known}}
    try:
        fusion = Fusion.of(meta.get("ease") or meta.get("params", {}).get("ease"))
    except (KeyError, TypeError, ValueError):
        fusion = None
    try:
        return ServingRetrieval(ALSParams(**{k: v for k, v in given.items() if k in known}), version, fusion)
    except (TypeError, ValueError):
        return ServingRetrieval(ALSParams(), version, fusion)


def read_events(conn: psycopg.Connection) -> InteractionLog:
    rows = conn.execute("SELECT user_id, item_id, extract(epoch FROM ts)::float8, type, value FROM events").fetchall()
    if not rows:
        return InteractionLog(*(np.empty(0, dtype=object) for _ in range(5)))
    users, items, times, types, values = zip(*rows, strict=False)
    return InteractionLog(
        np.asarray(users, dtype=object),
        np.asarray(items, dtype=object),
        np.asarray(times, dtype=np.float64),
        np.asarray(types, dtype=object),
        np.asarray([np.nan if v is None else v for v in values], dtype=np.float64),
    )


def read_catalog(conn: psycopg.Connection) -> dict[str, CatalogItem]:
    rows = conn.execute(
        "SELECT item_id, categories, coalesce(extract(epoch FROM published_at)::float8, 0) FROM items"
    ).fetchall()
    return {item_id: CatalogItem(tuple(categories), float(published)) for item_id, categories, published in rows}


# The key of the gate's verdict in a version's metrics (read by `registry.refusals`).
GATE_METRIC = "validation_gate"


def train_and_publish(
    postgres_dsn: str,
    store: ArtifactStore,
    params: RankerParams | None = None,
    promote: bool = False,
    *,
    force: bool = False,
    min_gain: float = DEFAULT_MIN_GAIN,
    min_gain_se: float = DEFAULT_MIN_GAIN_SE,
    gates: registry.PromotionGates | None = None,
    redis_client: redis.Redis | None = None,
) -> dict:
    """Train, validate, write and register one ranker version, and with `promote` promote
    it through the registry's gates (publishing the serving version to `redis_client`);
    returns its summary, whose `refusals` says why the gates refused the promotion (or,
    without `promote`, would refuse it). A refused promotion is not an error: the
    version stays a candidate. `force` promotes past the gates and lists, in
    `overridden`, what it went past."""
    params = params or RankerParams()
    started = time.perf_counter()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        events = read_events(conn)
        catalog = read_catalog(conn)
        retrieval = serving_retrieval(store, conn)
    if len(events) == 0:
        raise ValueError("no events in Postgres: load interactions first")
    fit = train_ranker(events, catalog, retrieval.als_params, params, fusion=retrieval.fusion)
    verdict = ranker_gate(fit.metrics, min_gain, min_gain_se)
    metrics = {**fit.metrics, **fit.stats, GATE_METRIC: verdict.as_dict()}
    previous = None
    gates = gates or registry.PromotionGates(shard_count=1)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        version = registry.new_version_name("ranker")
        meta = model_meta(
            version,
            fit.feature_names,
            metrics=metrics,
            params=params.as_dict(),
            als_params_from=retrieval.version,
            candidates_fused_with_ease=retrieval.fusion is not None,
            freshness_half_life_days=params.freshness_half_life_days,
            trained_at=datetime.now(UTC).isoformat(),
        )
        prefix = write_ranker(store, version, fit.booster.model_to_string(), meta)
        registry.register_version(conn, version, "ranker", prefix, metrics, params.as_dict())
        refused: list[str] = []
        overridden: list[str] = []
        if promote:
            try:
                done = registry.promote_gated(conn, "ranker", version, gates, redis_client, force=force)
                previous, overridden = done.previous, list(done.overridden)
            except registry.PromotionRefused as refusal:
                refused = refusal.reasons
        serving = registry.serving_version(conn, "ranker")
        if not promote:
            row = registry.get_version(conn, version)
            serving_row = registry.get_version(conn, serving) if serving else None
            refused = registry.refusals(row, serving_row, gates) if row else []
    return {
        "version": version,
        "artifact_uri": prefix,
        "promoted": promote and not refused,
        "replaced": previous,
        "refusals": refused,
        "overridden": overridden,
        "serving": serving,
        GATE_METRIC: verdict.as_dict(),
        "metrics": metrics,
        "seconds": round(time.perf_counter() - started, 2),
    }


def train_ranker_command(
    promote: bool = typer.Option(
        False, "--promote", help="serve the new version if it passes the promotion gates (it stays a candidate if not)"
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="with --promote: promote even when the gates refuse; `overridden` lists what it went past",
    ),
    rounds: int = typer.Option(RankerParams.max_rounds, min=1, help="boosting rounds (at most)"),
    als_candidates: int | None = typer.Option(
        None,
        min=1,
        help="ALS candidates per user; default what the gateway sends: RECFLEET_JOBS_RANKER_CANDIDATES_PER_SHARD"
        " x RECFLEET_JOBS_SHARD_COUNT",
    ),
) -> None:
    """Train a LightGBM lambdarank ranker from the events in Postgres, validate it against
    the candidate order and the rule formula, and register it."""
    settings = JobSettings()
    candidates = als_candidates or settings.ranker_candidates_per_shard * settings.shard_count
    params = replace(RankerParams(), max_rounds=rounds, als_candidates=candidates)
    gates = registry.PromotionGates(settings.shard_count, settings.promotion_max_regression)
    client = redis.Redis.from_url(settings.redis_url) if promote else None
    try:
        summary = train_and_publish(
            settings.postgres_dsn,
            open_artifact_store(settings.artifact_url),
            params,
            promote,
            force=force,
            min_gain=settings.ranker_min_gain,
            min_gain_se=settings.ranker_min_gain_se,
            gates=gates,
            redis_client=client,
        )
    except ValueError as error:
        typer.echo(f"train-ranker: {error}", err=True)
        raise typer.Exit(1) from error
    finally:
        if client is not None:
            client.close()
    typer.echo(json.dumps(summary))


def register(app: typer.Typer) -> None:
    app.command("train-ranker")(train_ranker_command)

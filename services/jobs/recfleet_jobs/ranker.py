"""`recfleet-jobs train-ranker`: the LightGBM lambdarank ranker, trained from the events in
Postgres and published as a candidate version.

The job reads the event log and the catalog, takes the serving ALS version's
hyper-parameters, and hands them to the one ranker trainer,
`recfleet_models.ranking.training` (the one offline evaluation runs too) with its
production settings (`RankerParams()`): each user's last interactions are the labels,
every feature is computed as of the first label's time, candidates come from an ALS
fitted on the history periods only; see that module. The held-out NDCG@10 of the ranker,
of the rule formula and of the ALS order are recorded with the version, which is
written in the ranker artifact format (`recfleet_models.ranking.artifacts`), registered
as a candidate and promoted with `--promote`.
"""

from __future__ import annotations

import json
import time
from dataclasses import fields, replace
from datetime import UTC, datetime

import numpy as np
import psycopg
import typer
from recfleet_models.als import ALSParams
from recfleet_models.ranking.artifacts import write_ranker
from recfleet_models.ranking.learned import model_meta
from recfleet_models.ranking.training import CatalogItem, InteractionLog, RankerParams, train_ranker
from recfleet_store import registry
from recfleet_store.artifacts import ArtifactStore, open_artifact_store

from .settings import JobSettings


def als_params_of(store: ArtifactStore, conn: psycopg.Connection) -> tuple[ALSParams, str]:
    """The serving ALS version's hyper-parameters (defaults before the first ALS version)."""
    version = registry.serving_version(conn, "als") or registry.latest_version(conn, "als")
    if not version:
        return ALSParams(), ""
    row = registry.get_version(conn, version)
    if row is None:
        return ALSParams(), version
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


def train_and_publish(
    postgres_dsn: str,
    store: ArtifactStore,
    params: RankerParams | None = None,
    promote: bool = False,
) -> dict:
    """Train, evaluate, write and register one ranker version; returns its summary."""
    params = params or RankerParams()
    started = time.perf_counter()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        events = read_events(conn)
        catalog = read_catalog(conn)
        als_params, als_version = als_params_of(store, conn)
    if len(events) == 0:
        raise ValueError("no events in Postgres: load interactions first")
    fit = train_ranker(events, catalog, als_params, params)
    metrics = {**fit.metrics, **fit.stats}
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        version = registry.new_version_name("ranker")
        meta = model_meta(
            version,
            fit.feature_names,
            metrics=metrics,
            params=params.as_dict(),
            als_params_from=als_version,
            freshness_half_life_days=params.freshness_half_life_days,
            trained_at=datetime.now(UTC).isoformat(),
        )
        prefix = write_ranker(store, version, fit.booster.model_to_string(), meta)
        registry.register_version(conn, version, "ranker", prefix, metrics, params.as_dict())
        previous = registry.promote(conn, "ranker", version) if promote else None
    return {
        "version": version,
        "artifact_uri": prefix,
        "promoted": promote,
        "replaced": previous,
        "metrics": metrics,
        "seconds": round(time.perf_counter() - started, 2),
    }


def train_ranker_command(
    promote: bool = typer.Option(False, "--promote", help="make the new version the serving ranker"),
    rounds: int = typer.Option(RankerParams.max_rounds, min=1, help="boosting rounds (at most)"),
    als_candidates: int = typer.Option(RankerParams.als_candidates, min=1, help="ALS candidates per user"),
) -> None:
    """Train a LightGBM lambdarank ranker from the events in Postgres and register it."""
    settings = JobSettings()
    params = replace(RankerParams(), max_rounds=rounds, als_candidates=als_candidates)
    try:
        summary = train_and_publish(settings.postgres_dsn, open_artifact_store(settings.artifact_url), params, promote)
    except ValueError as error:
        typer.echo(f"train-ranker: {error}", err=True)
        raise typer.Exit(1) from error
    typer.echo(json.dumps(summary))


def register(app: typer.Typer) -> None:
    app.command("train-ranker")(train_ranker_command)

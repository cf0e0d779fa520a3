"""`recfleet-jobs train-als`: train ALS on the event log and publish a model version.

One run writes, in this order: the version's files into the artifact store
(`models/als/<version>/`, docs/CONTRACTS.md; `checksums.json` last, so a reader that
finds it finds every file), the user vectors into Postgres `user_vectors` and Redis
`rf:uv:{<user>}` (field = version), then the registry row (`candidate`), and with
`--promote` the promotion. The last stdout line is `version=<version>`.
"""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg
import redis
import typer
from recfleet_models.als import WEIGHTINGS, AlsModel, ALSParams, build_interaction_matrix, fit_als
from recfleet_models.evaluation import holdout_metrics
from recfleet_store import keys, registry
from recfleet_store.artifacts import ArtifactStore, open_artifact_store, sha256

from .settings import JobSettings

_REDIS_CHUNK = 1000
_PG_CHUNK = 5000


def read_interactions(conn: psycopg.Connection) -> tuple[list[str], list[str], list[str], list[float | None]]:
    """(users, items, types, values) of every event, erased users left out."""
    users: list[str] = []
    items: list[str] = []
    types: list[str] = []
    values: list[float | None] = []
    with conn.transaction(), conn.cursor(name="als_events") as cursor:
        cursor.itersize = 50_000
        cursor.execute(
            "SELECT e.user_id, e.item_id, e.type, e.value FROM events e"
            " WHERE NOT EXISTS (SELECT 1 FROM erased_users x WHERE x.user_id = e.user_id)"
        )
        for user, item, event_type, value in cursor:
            users.append(user)
            items.append(item)
            types.append(event_type)
            values.append(value)
    return users, items, types, values


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype="<f4"), allow_pickle=False)
    return buffer.getvalue()


def artifact_prefix(version: str) -> str:
    return f"models/als/{version}"


def publish_artifacts(store: ArtifactStore, version: str, model: AlsModel, meta: dict[str, Any]) -> dict[str, str]:
    """Write the version's files; returns their checksums (also written, last)."""
    files = {
        "item_ids.json": json.dumps(model.item_ids).encode(),
        "item_factors.npy": _npy(model.item_factors),
        "user_ids.json": json.dumps(model.user_ids).encode(),
        "user_factors.npy": _npy(model.user_factors),
        "meta.json": json.dumps(meta, indent=2, sort_keys=True).encode(),
    }
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
    params = ALSParams(
        factors=meta["factors"],
        iterations=meta["iterations"],
        regularization=meta["regularization"],
        alpha=meta["alpha"],
        event_weights=meta.get("event_weights", {}),
        rating_offset=meta.get("rating_offset", 2.5),
        weighting=meta.get("weighting", "none"),
    )
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
    }
    return ALSParams(**{**base, **chosen})


def train_and_publish(
    settings: JobSettings, params: ALSParams, promote: bool = False, show_progress: bool = True, holdout: bool = True
) -> tuple[str, dict[str, Any]]:
    """The whole job; returns the new version and its metrics."""
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        users, items, types, values = read_interactions(conn)
        matrix, user_index, item_index = build_interaction_matrix(users, items, types, values, params)
        if matrix.nnz == 0:
            raise ValueError("no interactions to train on (load events first, e.g. load-movielens)")

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
            "events": len(users),
            "interactions": int(matrix.nnz),
            "n_users": len(user_index),
            "n_items": len(item_index),
        }
        meta = {
            "version": version,
            **dict(params.as_dict().items()),
            "n_users": len(user_index),
            "n_items": len(item_index),
            "trained_at": datetime.now(UTC).isoformat(),
            "metrics": metrics,
        }
        store = open_artifact_store(settings.artifact_url)
        publish_artifacts(store, version, model, meta)
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
                params=params.as_dict(),
            )
            if promote:
                registry.promote(conn, "als", version, client)
        finally:
            client.close()
    return version, metrics


def train_als_command(
    factors: int | None = typer.Option(None, min=1, help="latent factors; default RECFLEET_JOBS_ALS_FACTORS"),
    iterations: int | None = typer.Option(None, min=1, help="ALS sweeps; default RECFLEET_JOBS_ALS_ITERATIONS"),
    regularization: float | None = typer.Option(None, min=0.0, help="L2 penalty"),
    alpha: float | None = typer.Option(None, help="confidence scale (> 0)"),
    rating_offset: float | None = typer.Option(None, help="rating weight = max(0, stars - offset) + 1"),
    weighting: str | None = typer.Option(None, help=f"one of {', '.join(WEIGHTINGS)}"),
    promote: bool = typer.Option(False, "--promote", help="make the new version the serving one"),
    holdout: bool = typer.Option(True, help="also fit on 90% of each user's items and record holdout metrics"),
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
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    started = time.perf_counter()
    try:
        version, metrics = train_and_publish(settings, params, promote=promote, holdout=holdout)
    except ValueError as error:
        typer.echo(f"train-als: {error}", err=True)
        raise typer.Exit(1) from error
    typer.echo(json.dumps({**metrics, "seconds": round(time.perf_counter() - started, 2), "promoted": promote}))
    typer.echo(f"version={version}")


def register(app: typer.Typer) -> None:
    app.command("train-als")(train_als_command)

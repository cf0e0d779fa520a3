"""`recfleet-jobs promote | rollback | models`: move and list model versions.

Promoting an ALS version moves every candidate-gen shard (they poll the registry) and the
user vectors (keyed by version in Redis, chosen through `rf:model:als:serving`) at once.
Promotion passes the registry's gates (`recfleet_store.registry.refusals`): an ALS
version's index built for RECFLEET_JOBS_SHARD_COUNT shards, and a main validation metric
at most RECFLEET_PROMOTION_MAX_REGRESSION below the serving version's; `--force` promotes
anyway and says what it overrode.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Annotated

import psycopg
import redis
import typer
from recfleet_models.index import ShardManifest, ShardRejected, read_manifest
from recfleet_store import registry
from recfleet_store.artifacts import ArtifactStore, open_artifact_store

from .settings import JobSettings


class Kind(str, Enum):
    als = "als"
    ranker = "ranker"


def _fail(error: ValueError) -> None:
    refused = {"reasons": error.reasons} if isinstance(error, registry.PromotionRefused) else {}
    typer.echo(json.dumps({"error": str(error), **refused}), err=True)
    raise typer.Exit(1)


def record_manifest(conn: psycopg.Connection, manifest: ShardManifest) -> bool:
    """Record a built index in the registry, where the promotion gate reads it; False
    when its version is not a registered ALS version."""
    return registry.record_index(
        conn,
        manifest.version,
        shard_count=manifest.shard_count,
        index_type=manifest.index_type,
        dimension=manifest.dimension,
        item_count=manifest.item_count,
        built_at=manifest.built_at,
    )


def _record_stored_index(conn: psycopg.Connection, store: ArtifactStore, version: str) -> None:
    """The index the artifact store holds, recorded again: it is what the shards load,
    and an index built before build-index recorded its builds counts too."""
    try:
        manifest = read_manifest(store, version)
    except ShardRejected:
        return
    record_manifest(conn, manifest)


def promote_command(
    kind: Annotated[Kind, typer.Option(help="model kind")],
    version: Annotated[str, typer.Option(help="the version to serve")],
    force: Annotated[
        bool, typer.Option("--force", help="promote even when the gates refuse; the output lists what it overrode")
    ] = False,
) -> None:
    """Serve a version; an ALS version needs its FAISS shards built for the fleet's shard
    count, and no version may fall too far below the serving one's validation metric."""
    settings = JobSettings()
    gates = registry.PromotionGates(settings.shard_count, settings.promotion_max_regression)
    client = redis.Redis.from_url(settings.redis_url)
    try:
        with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
            if kind is Kind.als:
                _record_stored_index(conn, open_artifact_store(settings.artifact_url), version)
            done = registry.promote_gated(conn, kind.value, version, gates, client, force=force)
    except ValueError as error:
        _fail(error)
    finally:
        client.close()
    typer.echo(
        json.dumps(
            {
                "kind": kind.value,
                "serving": version,
                "previous": done.previous,
                "forced": done.forced,
                "overridden": list(done.overridden),
            }
        )
    )


def rollback_command(kind: Annotated[Kind, typer.Option(help="model kind")]) -> None:
    """Serve again the most recently promoted retired version."""
    settings = JobSettings()
    client = redis.Redis.from_url(settings.redis_url)
    try:
        with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
            rolled_back_from = registry.serving_version(conn, kind.value)
            serving = registry.rollback(conn, kind.value, client)
    except ValueError as error:
        _fail(error)
    finally:
        client.close()
    typer.echo(json.dumps({"kind": kind.value, "serving": serving, "rolled_back_from": rolled_back_from}))


def models_command(kind: Annotated[Kind | None, typer.Option(help="only this kind")] = None) -> None:
    """Every registered version with its status, metrics and, in `refusals`, why the gates
    would refuse to promote it now (JSON, newest first)."""
    settings = JobSettings()
    gates = registry.PromotionGates(settings.shard_count, settings.promotion_max_regression)
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        rows = registry.list_versions(conn, kind.value if kind else None)
        serving = {k: registry.get_version(conn, v) for k in registry.KINDS if (v := registry.serving_version(conn, k))}
    for row in rows:
        row["refusals"] = registry.refusals(row, serving.get(row["kind"]), gates)
    typer.echo(json.dumps(rows, default=str, indent=2))


def register(app: typer.Typer) -> None:
    app.command("promote")(promote_command)
    app.command("rollback")(rollback_command)
    app.command("models")(models_command)

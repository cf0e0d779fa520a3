"""`recfleet-jobs promote | rollback | models`: move and list model versions.

Promoting an ALS version moves every candidate-gen shard (they poll the registry) and the
user vectors (keyed by version in Redis, chosen through `rf:model:als:serving`) at once.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Annotated

import psycopg
import redis
import typer
from recfleet_store import registry
from recfleet_store.artifacts import open_artifact_store

from .settings import JobSettings


class Kind(str, Enum):
    als = "als"
    ranker = "ranker"


def _fail(error: ValueError) -> None:
    typer.echo(json.dumps({"error": str(error)}), err=True)
    raise typer.Exit(1)


def promote_command(
    kind: Annotated[Kind, typer.Option(help="model kind")],
    version: Annotated[str, typer.Option(help="the version to serve")],
) -> None:
    """Serve a version; an ALS version needs its FAISS shards built first."""
    settings = JobSettings()
    client = redis.Redis.from_url(settings.redis_url)
    try:
        with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
            previous = registry.promote(
                conn, kind.value, version, client, artifact_store=open_artifact_store(settings.artifact_url)
            )
    except ValueError as error:
        _fail(error)
    finally:
        client.close()
    typer.echo(json.dumps({"kind": kind.value, "serving": version, "previous": previous}))


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
    """Every registered version with its status and metrics, newest first (JSON)."""
    settings = JobSettings()
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        rows = registry.list_versions(conn, kind.value if kind else None)
    typer.echo(json.dumps(rows, default=str, indent=2))


def register(app: typer.Typer) -> None:
    app.command("promote")(promote_command)
    app.command("rollback")(rollback_command)
    app.command("models")(models_command)

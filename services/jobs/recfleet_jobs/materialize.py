"""`recfleet-jobs materialize` (Postgres -> Redis) and `recfleet-jobs export-training-set`
(point-in-time features per event); the logic lives in the library
`recfleet_store.features.materialization`, beside the feature registry the feature-store
service serves from."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import typer
from recfleet_store.features.materialization import export_training_set, materialize

from .settings import JobSettings


def _timestamp(value: str, option: str) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 timestamp", param_hint=option) from None


def materialize_command(
    since: str = typer.Option("", help="ISO 8601 start of the window; default: the last run's watermark"),
    full: bool = typer.Option(False, "--full", help="re-materialize everything, ignoring the watermark"),
    progress: bool = typer.Option(True, help="show a progress bar on stderr"),
) -> None:
    """Copy catalog, profiles and event-derived features that changed since the last run
    from Postgres to Redis, and their history to offline_features."""
    settings = JobSettings()
    report = materialize(
        settings.postgres_dsn,
        settings.redis_url,
        since=_timestamp(since, "--since"),
        full=full,
        progress=progress,
        erasure_hash_key=settings.erasure_hash_key.get_secret_value(),
    )
    typer.echo(json.dumps(report.__dict__))


def export_training_set_command(
    out: str = typer.Option(..., help="output file, .csv or .parquet"),
    since: str = typer.Option("", help="only events at or after this ISO 8601 time"),
    until: str = typer.Option("", help="only events before this ISO 8601 time"),
    registry_path: str = typer.Option("", help="feature registry YAML; default: the bundled one"),
    progress: bool = typer.Option(True, help="show a progress bar on stderr"),
) -> None:
    """One row per event with every feature as it was at the event's timestamp."""
    settings = JobSettings()
    try:
        rows = export_training_set(
            settings.postgres_dsn,
            Path(out),
            registry_path=registry_path,
            since=_timestamp(since, "--since"),
            until=_timestamp(until, "--until"),
            progress=progress,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--out") from None
    typer.echo(json.dumps({"rows": rows, "out": str(out)}))


def register(app: typer.Typer) -> None:
    app.command("materialize")(materialize_command)
    app.command("export-training-set")(export_training_set_command)

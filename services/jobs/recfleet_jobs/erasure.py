"""`recfleet-jobs rehash-suppression`: the one-off step after migration 013.

Rows of the erasure suppression list written before 013 hold the plain user id; SQL has
no key to hash them with. This command hashes each under RECFLEET_ERASURE_HASH_KEY (the key
the services use), stores the hash and clears the id. Idempotent: a second run finds
nothing to do.
"""

from __future__ import annotations

import json
import time

import psycopg
import typer
from recfleet_store import suppression

from .settings import JobSettings


def rehash_suppression_command() -> None:
    """Hash the erased users still listed by plain id (from before migration 013) and clear the id."""
    settings = JobSettings()
    started = time.perf_counter()
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        rehashed = suppression.rehash_plain_rows(conn, settings.erasure_hash_key.get_secret_value())
    typer.echo(json.dumps({"rehashed": rehashed, "seconds": round(time.perf_counter() - started, 2)}))


def register(app: typer.Typer) -> None:
    app.command("rehash-suppression")(rehash_suppression_command)

"""The model registry: the Postgres table `model_versions`.

A version is `candidate` when registered, `serving` once promoted (one per kind, which a
unique partial index enforces) and `retired` when another version replaces it. Rollback
brings back the most recently promoted retired version; the version rolled back from
returns to `candidate`, so a second rollback goes one step further back in history
instead of bouncing between the same two versions.

For kind `als` the serving version is mirrored to Redis (`keys.SERVING_VERSION`) so the
gateway and feature store read it without a database round trip.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from typing import Any

import psycopg
import redis
from psycopg.types.json import Jsonb

from . import keys
from .artifacts import ArtifactStore

KINDS = ("als", "ranker")
_VERSION_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_COLUMNS = "version, kind, status, artifact_uri, metrics, params, created_at, promoted_at"


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r} (expected one of {', '.join(KINDS)})")


def new_version_name(kind: str) -> str:
    """`<kind>-<UTC yyyymmddTHHMMSSZ>-<4 hex>`: sortable by time, unique across runs."""
    _check_kind(kind)
    return f"{kind}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


def index_manifest_key(artifact_uri: str) -> str:
    """Where a version's FAISS shard manifest lives, given its artifact prefix."""
    return f"{artifact_uri.rstrip('/')}/index/manifest.json"


def register_version(
    conn: psycopg.Connection,
    version: str,
    kind: str,
    artifact_uri: str,
    metrics: dict[str, Any],
    params: dict[str, Any],
) -> None:
    """Record a new version as `candidate`. Re-registering a version is refused."""
    _check_kind(kind)
    if not _VERSION_RE.match(version):
        raise ValueError(f"invalid version name {version!r}: 1-128 characters of [A-Za-z0-9_.:-]")
    with conn.transaction():
        try:
            conn.execute(
                "INSERT INTO model_versions (version, kind, status, artifact_uri, metrics, params)"
                " VALUES (%s, %s, 'candidate', %s, %s, %s)",
                (version, kind, artifact_uri, Jsonb(metrics or {}), Jsonb(params or {})),
            )
        except psycopg.errors.UniqueViolation as error:
            raise ValueError(f"version {version!r} is already registered") from error


def _publish(kind: str, version: str, redis_client: redis.Redis | None) -> None:
    if kind == "als" and redis_client is not None:
        redis_client.set(keys.SERVING_VERSION, version)


def promote(
    conn: psycopg.Connection,
    kind: str,
    version: str,
    redis_client: redis.Redis | None = None,
    artifact_store: ArtifactStore | None = None,
) -> str | None:
    """Make `version` the serving one of its kind; returns the version it replaced.

    The replaced version becomes `retired`. Unknown versions, versions of another kind and
    (when `artifact_store` is given) ALS versions whose FAISS shards are not built yet are
    refused with ValueError. Promoting the serving version again changes nothing.
    """
    _check_kind(kind)
    with conn.transaction():
        # Serialise promotions of one kind: two concurrent promotes must not both see the
        # same "previous" version.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('model_versions:' || %s))", (kind,))
        row = conn.execute("SELECT kind, artifact_uri FROM model_versions WHERE version = %s", (version,)).fetchone()
        if row is None:
            raise ValueError(f"unknown {kind} version {version!r}")
        if row[0] != kind:
            raise ValueError(f"version {version!r} is a {row[0]} version, not {kind}")
        if kind == "als" and artifact_store is not None and not artifact_store.exists(index_manifest_key(row[1])):
            raise ValueError(f"version {version!r} has no FAISS index yet: run build-index --version {version} first")
        current = conn.execute(
            "SELECT version FROM model_versions WHERE kind = %s AND status = 'serving'", (kind,)
        ).fetchone()
        previous = current[0] if current else None
        if previous != version:
            conn.execute("UPDATE model_versions SET status = 'retired' WHERE kind = %s AND status = 'serving'", (kind,))
            conn.execute(
                "UPDATE model_versions SET status = 'serving', promoted_at = now() WHERE version = %s", (version,)
            )
    _publish(kind, version, redis_client)
    return previous


def rollback(conn: psycopg.Connection, kind: str, redis_client: redis.Redis | None = None) -> str:
    """Serve again the most recently promoted retired version; returns it.

    The version rolled back from returns to `candidate`. ValueError when no retired
    version exists.
    """
    _check_kind(kind)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('model_versions:' || %s))", (kind,))
        row = conn.execute(
            "SELECT version FROM model_versions WHERE kind = %s AND status = 'retired' AND promoted_at IS NOT NULL"
            " ORDER BY promoted_at DESC, version DESC LIMIT 1",
            (kind,),
        ).fetchone()
        if row is None:
            raise ValueError(f"no retired {kind} version to roll back to")
        target: str = row[0]
        conn.execute("UPDATE model_versions SET status = 'candidate' WHERE kind = %s AND status = 'serving'", (kind,))
        conn.execute("UPDATE model_versions SET status = 'serving', promoted_at = now() WHERE version = %s", (target,))
    _publish(kind, target, redis_client)
    return target


def serving_version(conn: psycopg.Connection, kind: str) -> str | None:
    """The serving version of a kind, or None before the first promotion."""
    _check_kind(kind)
    row = conn.execute("SELECT version FROM model_versions WHERE kind = %s AND status = 'serving'", (kind,)).fetchone()
    return row[0] if row else None


async def serving_version_async(aconn: psycopg.AsyncConnection, kind: str) -> str | None:
    """`serving_version` on an async connection (services polling the registry)."""
    _check_kind(kind)
    cursor = await aconn.execute("SELECT version FROM model_versions WHERE kind = %s AND status = 'serving'", (kind,))
    row = await cursor.fetchone()
    return row[0] if row else None


def _as_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(_COLUMNS.split(", "), row, strict=True))


def get_version(conn: psycopg.Connection, version: str) -> dict[str, Any] | None:
    """One version's row, or None."""
    row = conn.execute(f"SELECT {_COLUMNS} FROM model_versions WHERE version = %s", (version,)).fetchone()
    return _as_dict(row) if row else None


def latest_version(conn: psycopg.Connection, kind: str) -> str | None:
    """The most recently registered version of a kind, whatever its status."""
    _check_kind(kind)
    row = conn.execute(
        "SELECT version FROM model_versions WHERE kind = %s ORDER BY created_at DESC, version DESC LIMIT 1", (kind,)
    ).fetchone()
    return row[0] if row else None


def list_versions(conn: psycopg.Connection, kind: str | None = None) -> list[dict[str, Any]]:
    """Every version (of one kind when given), newest first, as dicts of the table's columns."""
    if kind is not None:
        _check_kind(kind)
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM model_versions WHERE kind = %s ORDER BY created_at DESC, version DESC", (kind,)
        ).fetchall()
    else:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM model_versions ORDER BY created_at DESC, version DESC").fetchall()
    return [_as_dict(row) for row in rows]

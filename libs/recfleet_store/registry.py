"""The model registry: the Postgres table `model_versions`.

A version is `candidate` when registered, `serving` once promoted (one per kind, which a
unique partial index enforces) and `retired` when another version replaces it. Rollback
brings back the most recently promoted retired version; the version rolled back from
returns to `candidate`, so a second rollback goes one step further back in history
instead of bouncing between the same two versions.

The serving version of each kind is mirrored to Redis (`keys.serving_version_key`) so the
gateway and feature store read it without a database round trip.

Promotion gates (`promote_gated`): a version is refused, with the reasons, when it is an
ALS version whose FAISS index is not built for exactly the shard count the fleet serves
(build-index records each index here: `record_index`), or when its main validation metric
(`QUALITY_METRICS`) falls more than `max_regression` below the serving version's, or when
its training job recorded a failed validation gate with it (`metrics.validation_gate`: a
ranker that does not beat the candidate order or the rule formula on held-out data). A
forced promotion goes past the gates and says which ones it went past.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import redis
from psycopg.types.json import Jsonb
from pydantic import AliasChoices, Field

from . import keys
from .artifacts import ArtifactStore

KINDS = ("als", "ranker")
_VERSION_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_COLUMNS = "version, kind, status, artifact_uri, metrics, params, created_at, promoted_at"

# The largest drop of the main validation metric a promotion may bring without `force`
# (absolute), one variable for the gateway and the jobs alike.
MAX_REGRESSION_ENV = "RECFLEET_PROMOTION_MAX_REGRESSION"
DEFAULT_MAX_REGRESSION = 0.02
# The main validation metric under the names versions record it, preferred first: two
# versions are compared on the first name both have, and not at all when they share none.
QUALITY_METRICS = ("ndcg@10", "validation_ndcg@10", "holdout_ndcg@10")


def max_regression_setting() -> Any:
    """The settings field of every component that promotes (the same variable everywhere)."""
    return Field(
        DEFAULT_MAX_REGRESSION,
        ge=0,
        validation_alias=AliasChoices(MAX_REGRESSION_ENV),
        description="largest drop of the main validation metric a promotion may bring without force",
    )


@dataclass(frozen=True)
class PromotionGates:
    """What a version must pass to be promoted: an ALS version's index built for
    `shard_count` shards (the fleet's candidate-gen shard count), and its main validation
    metric at most `max_regression` below the serving version's."""

    shard_count: int
    max_regression: float = DEFAULT_MAX_REGRESSION


@dataclass(frozen=True)
class Promotion:
    """A promotion that went through: `overridden` lists the gates' refusals a forced
    promotion went past (empty otherwise)."""

    kind: str
    version: str
    previous: str | None
    forced: bool = False
    overridden: tuple[str, ...] = ()


class PromotionRefused(ValueError):
    """The gates refuse a version; `reasons` says why, one line each."""

    def __init__(self, version: str, reasons: list[str]):
        super().__init__(f"version {version!r} is not promoted: {'; '.join(reasons)} (force promotes it anyway)")
        self.reasons = reasons


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


def record_index(
    conn: psycopg.Connection,
    version: str,
    *,
    shard_count: int,
    index_type: str,
    dimension: int,
    item_count: int,
    built_at: str,
) -> bool:
    """Record that an ALS version's FAISS index is built (build-index calls this once the
    manifest is written): kept in the version's `params` under `index`, where the
    promotion gate reads it. False when no ALS version of that name is registered."""
    summary = {
        "shard_count": shard_count,
        "index_type": index_type,
        "dimension": dimension,
        "item_count": item_count,
        "built_at": built_at,
    }
    cursor = conn.execute(
        "UPDATE model_versions SET params = params || jsonb_build_object('index', %s::jsonb)"
        " WHERE version = %s AND kind = 'als'",
        (Jsonb(summary), version),
    )
    return cursor.rowcount == 1


def built_index(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The index `record_index` recorded for a version's row, or None."""
    index = (row.get("params") or {}).get("index")
    return index if isinstance(index, dict) else None


def quality_comparison(candidate: Mapping[str, Any], serving: Mapping[str, Any]) -> tuple[str, float, float] | None:
    """(metric name, candidate's value, serving's value) on the first of `QUALITY_METRICS`
    both metric dicts hold as numbers; None when they share none."""
    for name in QUALITY_METRICS:
        new, old = _number(candidate.get(name)), _number(serving.get(name))
        if new is not None and old is not None:
            return name, new, old
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def refusals(candidate: Mapping[str, Any], serving: Mapping[str, Any] | None, gates: PromotionGates) -> list[str]:
    """Why the gates refuse promoting `candidate` (a version's row) over `serving` (the
    serving row of its kind, None when none serves); empty when they let it through."""
    version = candidate["version"]
    if serving is not None and serving["version"] == version:
        return []
    reasons = []
    if candidate["kind"] == "als":
        index = built_index(candidate)
        rebuild = f"build-index --version {version} --shards {gates.shard_count}"
        if index is None:
            reasons.append(f"its FAISS index is not built: run {rebuild}")
        elif index.get("shard_count") != gates.shard_count:
            reasons.append(
                f"its FAISS index has {index.get('shard_count')} shards but the fleet serves"
                f" {gates.shard_count}: run {rebuild}"
            )
    verdict = (candidate.get("metrics") or {}).get("validation_gate")
    if isinstance(verdict, dict) and verdict.get("passed") is False:
        reasons.append(str(verdict.get("reason") or "it failed the validation gate it was trained with"))
    if serving is not None:
        compared = quality_comparison(candidate.get("metrics") or {}, serving.get("metrics") or {})
        # A drop of exactly the margin passes, whatever the floating-point rounding.
        if compared is not None and compared[2] - compared[1] > gates.max_regression + 1e-9:
            name, new, old = compared
            reasons.append(
                f"{name} {new:.4f} is {old - new:.4f} below serving {serving['version']}'s {old:.4f}"
                f" (at most {gates.max_regression:g} allowed)"
            )
    return reasons


def _publish(kind: str, version: str, redis_client: redis.Redis | None) -> None:
    if redis_client is not None:
        redis_client.set(keys.serving_version_key(kind), version)


def _promote(
    conn: psycopg.Connection,
    kind: str,
    version: str,
    redis_client: redis.Redis | None,
    check: Callable[[dict[str, Any], dict[str, Any] | None], list[str]],
    force: bool,
) -> Promotion:
    _check_kind(kind)
    with conn.transaction():
        # Serialise promotions of one kind: two concurrent promotes must not both see the
        # same "previous" version, nor be gated against a serving version that is changing.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('model_versions:' || %s))", (kind,))
        row = get_version(conn, version)
        if row is None:
            raise ValueError(f"unknown {kind} version {version!r}")
        if row["kind"] != kind:
            raise ValueError(f"version {version!r} is a {row['kind']} version, not {kind}")
        current = conn.execute(
            f"SELECT {_COLUMNS} FROM model_versions WHERE kind = %s AND status = 'serving'", (kind,)
        ).fetchone()
        serving = _as_dict(current) if current else None
        previous = serving["version"] if serving else None
        reasons = check(row, serving) if previous != version else []
        if reasons and not force:
            raise PromotionRefused(version, reasons)
        if previous != version:
            conn.execute("UPDATE model_versions SET status = 'retired' WHERE kind = %s AND status = 'serving'", (kind,))
            conn.execute(
                "UPDATE model_versions SET status = 'serving', promoted_at = now() WHERE version = %s", (version,)
            )
    _publish(kind, version, redis_client)
    return Promotion(kind, version, previous, force, tuple(reasons))


def promote(
    conn: psycopg.Connection,
    kind: str,
    version: str,
    redis_client: redis.Redis | None = None,
    artifact_store: ArtifactStore | None = None,
) -> str | None:
    """Make `version` the serving one of its kind, without the promotion gates; returns
    the version it replaced.

    The replaced version becomes `retired`. Unknown versions, versions of another kind and
    (when `artifact_store` is given) ALS versions without an index manifest are refused
    with ValueError. Promoting the serving version again changes nothing.
    """

    def check(row: dict[str, Any], serving: dict[str, Any] | None) -> list[str]:
        manifest = index_manifest_key(row["artifact_uri"])
        if kind == "als" and artifact_store is not None and not artifact_store.exists(manifest):
            raise ValueError(f"version {version!r} has no FAISS index yet: run build-index --version {version} first")
        return []

    return _promote(conn, kind, version, redis_client, check, force=False).previous


def promote_gated(
    conn: psycopg.Connection,
    kind: str,
    version: str,
    gates: PromotionGates,
    redis_client: redis.Redis | None = None,
    force: bool = False,
) -> Promotion:
    """`promote` behind the gates (`refusals`): PromotionRefused (a ValueError) with the
    reasons, nothing changed, unless `force`, which promotes anyway and reports what it
    overrode. The gates compare with the version serving at that moment."""
    return _promote(conn, kind, version, redis_client, lambda row, serving: refusals(row, serving, gates), force)


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

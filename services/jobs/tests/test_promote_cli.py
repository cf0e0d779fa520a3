"""`recfleet-jobs build-index | promote | models` behind the promotion gates, against real
Postgres, Redis and a directory artifact store."""

from __future__ import annotations

import io
import json

import numpy as np
import psycopg
import pytest
import redis
import typer
from recfleet_jobs import index, registry
from recfleet_models.index import build_shards
from recfleet_store import keys
from recfleet_store import registry as store_registry
from recfleet_store.artifacts import open_artifact_store
from typer.testing import CliRunner

OLD = "als-20261201T000000Z-a"
NEW = "als-20261202T000000Z-b"


def _app() -> typer.Typer:
    app = typer.Typer()
    index.register(app)
    registry.register(app)
    return app


@pytest.fixture
def fleet(monkeypatch, fresh_pg_dsn, redis_url, artifact_dir):
    """The jobs' environment: a two-shard fleet, and two ALS versions with item factors."""
    monkeypatch.setenv("RECFLEET_POSTGRES_DSN", fresh_pg_dsn)
    monkeypatch.setenv("RECFLEET_REDIS_URL", redis_url)
    monkeypatch.setenv("RECFLEET_ARTIFACT_URL", f"file://{artifact_dir}")
    monkeypatch.setenv("RECFLEET_JOBS_SHARD_COUNT", "2")
    store = open_artifact_store(f"file://{artifact_dir}")
    factors = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, factors)
    with psycopg.connect(fresh_pg_dsn, autocommit=True) as conn:
        for version, ndcg in ((OLD, 0.30), (NEW, 0.25)):
            store.put_bytes(f"models/als/{version}/item_ids.json", json.dumps([f"i{n}" for n in range(40)]).encode())
            store.put_bytes(f"models/als/{version}/item_factors.npy", buffer.getvalue())
            store_registry.register_version(
                conn, version, "als", f"models/als/{version}/", {"holdout_ndcg@10": ndcg}, {"factors": 4}
            )
    return fresh_pg_dsn, redis.Redis.from_url(redis_url, decode_responses=True), store


def run(*args: str):
    return CliRunner().invoke(_app(), list(args))


def serving(dsn: str) -> str | None:
    with psycopg.connect(dsn) as conn:
        return store_registry.serving_version(conn, "als")


def test_promote_refuses_a_version_until_its_index_fits_the_fleet(fleet):
    dsn, client, _ = fleet
    refused = run("promote", "--kind", "als", "--version", OLD)
    assert refused.exit_code == 1
    error = json.loads(refused.stderr)
    assert error["reasons"] == [f"its FAISS index is not built: run build-index --version {OLD} --shards 2"]

    assert run("build-index", "--version", OLD, "--shards", "3").exit_code == 0
    refused = run("promote", "--kind", "als", "--version", OLD)
    assert refused.exit_code == 1 and "3 shards but the fleet serves 2" in refused.stderr
    assert serving(dsn) is None and client.get(keys.SERVING_VERSION) is None

    assert run("build-index", "--version", OLD).exit_code == 0
    promoted = run("promote", "--kind", "als", "--version", OLD)
    assert promoted.exit_code == 0, promoted.output
    assert json.loads(promoted.stdout) == {
        "kind": "als",
        "serving": OLD,
        "previous": None,
        "forced": False,
        "overridden": [],
    }
    assert serving(dsn) == OLD and client.get(keys.SERVING_VERSION) == OLD


def test_a_regressing_version_needs_force_and_models_says_why(fleet):
    dsn, client, store = fleet
    assert run("build-index", "--version", OLD).exit_code == 0
    assert run("promote", "--kind", "als", "--version", OLD).exit_code == 0
    # Built outside build-index (no registry record): promote reads the stored manifest.
    build_shards(store, NEW, 2, "flat")

    refused = run("promote", "--kind", "als", "--version", NEW)
    assert refused.exit_code == 1
    [reason] = json.loads(refused.stderr)["reasons"]
    assert reason.startswith(f"holdout_ndcg@10 0.2500 is 0.0500 below serving {OLD}'s 0.3000")
    listed = {row["version"]: row for row in json.loads(run("models", "--kind", "als").stdout)}
    assert listed[NEW]["refusals"] == [reason] and listed[OLD]["refusals"] == []
    assert serving(dsn) == OLD

    forced = run("promote", "--kind", "als", "--version", NEW, "--force")
    assert forced.exit_code == 0, forced.output
    out = json.loads(forced.stdout)
    assert (out["serving"], out["previous"], out["forced"], out["overridden"]) == (NEW, OLD, True, [reason])
    assert serving(dsn) == NEW and client.get(keys.SERVING_VERSION) == NEW


def test_the_margin_is_the_fleet_wide_setting(fleet, monkeypatch):
    dsn, _, _ = fleet
    for version in (OLD, NEW):
        assert run("build-index", "--version", version).exit_code == 0
    assert run("promote", "--kind", "als", "--version", OLD).exit_code == 0
    monkeypatch.setenv("RECFLEET_PROMOTION_MAX_REGRESSION", "0.1")
    assert run("promote", "--kind", "als", "--version", NEW).exit_code == 0
    assert serving(dsn) == NEW

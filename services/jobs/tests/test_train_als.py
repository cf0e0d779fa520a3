"""train-als against real Postgres, Redis and a directory artifact store."""

import io
import json
from pathlib import Path

import numpy as np
import psycopg
import pytest
import redis
import typer
from recfleet_jobs import als, bootstrap, evaluate
from recfleet_store import keys
from recfleet_store.artifacts import open_artifact_store, sha256
from typer.testing import CliRunner

SMALL = ["--factors", "4", "--iterations", "3", "--regularization", "0.1", "--alpha", "2"]


def _app() -> typer.Typer:
    app = typer.Typer()
    bootstrap.register(app)
    als.register(app)
    return app


def _evaluate_app() -> typer.Typer:
    app = typer.Typer()
    evaluate.register(app)
    return app


def _write_dataset(path: Path) -> Path:
    """Two taste groups: users 1-6 rate 5 of movies 1-6, users 7-12 5 of movies 11-16."""
    path.mkdir(parents=True, exist_ok=True)
    movies = ["movieId,title,genres"] + [f"{m},Movie {m} (2000),Drama" for m in [*range(1, 7), *range(11, 17)]]
    ratings = ["userId,movieId,rating,timestamp"]
    for user in range(1, 13):
        base = 1 if user <= 6 else 11
        for offset in range(6):
            if (user + offset) % 6:
                ratings.append(
                    f"{user},{base + offset},{1 + (user + offset) % 5}.0,{1_000_000_000 + user * 100 + offset}"
                )
    (path / "movies.csv").write_text("\r\n".join(movies) + "\r\n")
    (path / "ratings.csv").write_text("\r\n".join(ratings) + "\r\n")
    return path


def _environment(monkeypatch, dsn, redis_url, artifact_dir):
    monkeypatch.setenv("RECFLEET_POSTGRES_DSN", dsn)
    monkeypatch.setenv("RECFLEET_REDIS_URL", redis_url)
    monkeypatch.setenv("RECFLEET_ARTIFACT_URL", f"file://{artifact_dir}")


def _train(*args: str) -> str:
    result = CliRunner().invoke(_app(), ["train-als", *SMALL, *args])
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("version=als-")
    return last.split("=", 1)[1]


def test_train_publishes_a_complete_version(monkeypatch, fresh_pg_dsn, redis_url, artifact_dir, tmp_path):
    _environment(monkeypatch, fresh_pg_dsn, redis_url, artifact_dir)
    with psycopg.connect(fresh_pg_dsn) as conn:
        conn.execute("INSERT INTO erased_users (user_id, receipt_id) VALUES ('12', 'r-1')")
    loaded = CliRunner().invoke(_app(), ["load-movielens", "--data-dir", str(_write_dataset(tmp_path / "ml"))])
    assert loaded.exit_code == 0, loaded.output

    version = _train("--promote")
    store = open_artifact_store(f"file://{artifact_dir}")
    prefix = f"models/als/{version}"
    checksums = json.loads(store.get_bytes(f"{prefix}/checksums.json"))
    assert set(checksums) == {"item_ids.json", "item_factors.npy", "user_ids.json", "user_factors.npy", "meta.json"}
    for name, digest in checksums.items():
        assert sha256(store.get_bytes(f"{prefix}/{name}")) == digest
    user_ids = json.loads(store.get_bytes(f"{prefix}/user_ids.json"))
    item_ids = json.loads(store.get_bytes(f"{prefix}/item_ids.json"))
    user_factors = np.load(io.BytesIO(store.get_bytes(f"{prefix}/user_factors.npy")))
    item_factors = np.load(io.BytesIO(store.get_bytes(f"{prefix}/item_factors.npy")))
    assert "12" not in user_ids and len(user_ids) == 11  # the erased user is not trained on
    assert sorted(item_ids) == sorted(str(m) for m in [*range(1, 7), *range(11, 17)])
    assert user_factors.shape == (11, 4) and item_factors.shape == (12, 4)
    assert user_factors.dtype == np.float32 and item_factors.dtype == np.float32
    meta = json.loads(store.get_bytes(f"{prefix}/meta.json"))
    assert (meta["version"], meta["factors"], meta["iterations"], meta["n_users"], meta["n_items"]) == (
        version,
        4,
        3,
        11,
        12,
    )
    assert {"regularization", "alpha", "event_weights", "trained_at", "metrics"} <= set(meta)
    # Users with 5+ ratings had 10% hidden for the recorded holdout metrics.
    assert meta["metrics"]["holdout_users_evaluated"] > 0
    assert 0 <= meta["metrics"]["holdout_ndcg@10"] <= 1

    row = user_ids.index("1")
    client = redis.Redis.from_url(redis_url)
    stored = client.hget(keys.user_vectors("1"), version)
    assert np.frombuffer(stored, dtype="<f4").tolist() == user_factors[row].tolist()
    assert client.get(keys.SERVING_VERSION) == version.encode()
    with psycopg.connect(fresh_pg_dsn) as conn:
        vector = conn.execute(
            "SELECT vector FROM user_vectors WHERE user_id = '1' AND model_version = %s", (version,)
        ).fetchone()[0]
        assert np.allclose(vector, user_factors[row])
        assert conn.execute("SELECT count(*) FROM user_vectors").fetchone()[0] == 11
        status, uri = conn.execute(
            "SELECT status, artifact_uri FROM model_versions WHERE version = %s", (version,)
        ).fetchone()
    assert (status, uri) == ("serving", prefix)

    model = als.load_model(store, version)
    assert model.item_factors.tolist() == item_factors.tolist()

    scored = CliRunner().invoke(
        _evaluate_app(),
        [
            "evaluate",
            "--dataset",
            str(tmp_path / "ml"),
            "--format",
            "ml-latest-small",
            "--protocol",
            "recbole",
            "--version",
            version,
        ],
    )
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.output)["version"] == version

    candidate = _train()
    with psycopg.connect(fresh_pg_dsn) as conn:
        assert conn.execute("SELECT status FROM model_versions WHERE version = %s", (candidate,)).fetchone()[0] == (
            "candidate"
        )
    assert client.get(keys.SERVING_VERSION) == version.encode()
    assert set(client.hkeys(keys.user_vectors("1"))) == {version.encode(), candidate.encode()}
    client.close()


def test_empty_event_log_and_bad_params_are_refused(monkeypatch, fresh_pg_dsn, redis_url, artifact_dir):
    _environment(monkeypatch, fresh_pg_dsn, redis_url, artifact_dir)
    result = CliRunner().invoke(_app(), ["train-als", *SMALL])
    assert result.exit_code == 1
    assert "no interactions" in result.output
    result = CliRunner().invoke(_app(), ["train-als", "--alpha", "0"])
    assert result.exit_code == 2
    assert "alpha" in result.output


def test_corrupted_version_is_refused(monkeypatch, fresh_pg_dsn, redis_url, artifact_dir, tmp_path):
    _environment(monkeypatch, fresh_pg_dsn, redis_url, artifact_dir)
    CliRunner().invoke(_app(), ["load-movielens", "--data-dir", str(_write_dataset(tmp_path / "ml"))])
    version = _train()
    store = open_artifact_store(f"file://{artifact_dir}")
    store.put_bytes(f"models/als/{version}/item_ids.json", b'["1"]')
    with pytest.raises(ValueError, match=r"item_ids\.json"):
        als.load_model(store, version)
    with pytest.raises(FileNotFoundError):
        als.load_model(store, "als-20000101T000000Z-0000")

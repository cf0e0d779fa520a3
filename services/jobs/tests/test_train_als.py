"""train-als against real Postgres, Redis and a directory artifact store."""

import io
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psycopg
import pytest
import redis
import scipy.sparse as sp
import typer
from recfleet_jobs import als, bootstrap, evaluate, index
from recfleet_models.evaluation import ranking_metrics
from recfleet_models.index import load_shard
from recfleet_models.tuning import ease_trial_count
from recfleet_store import keys
from recfleet_store.artifacts import open_artifact_store, sha256
from recfleet_store.suppression import LOCAL_KEY, user_hash
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
    # The logs here are a few users: an item with two of them is in the EASE vocabulary.
    monkeypatch.setenv("RECFLEET_JOBS_EASE_MIN_USERS", "2")


def _train(*args: str) -> str:
    result = CliRunner().invoke(_app(), ["train-als", *SMALL, *args])
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("version=als-")
    return last.split("=", 1)[1]


def test_train_publishes_a_complete_version(monkeypatch, fresh_pg_dsn, redis_url, artifact_dir, tmp_path):
    _environment(monkeypatch, fresh_pg_dsn, redis_url, artifact_dir)
    loaded = CliRunner().invoke(_app(), ["load-movielens", "--data-dir", str(_write_dataset(tmp_path / "ml"))])
    assert loaded.exit_code == 0, loaded.output
    # User 12's erasure is listed but has not deleted the events yet (it races the run).
    with psycopg.connect(fresh_pg_dsn) as conn:
        conn.execute(
            "INSERT INTO erased_users (user_hash, receipt_id) VALUES (%s, 'r-1')", (user_hash(LOCAL_KEY, "12"),)
        )

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


def _registered(dsn: str, version: str) -> tuple[dict, dict]:
    with psycopg.connect(dsn) as conn:
        params, metrics = conn.execute(
            "SELECT params, metrics FROM model_versions WHERE version = %s", (version,)
        ).fetchone()
    return params, metrics


def test_tuning_is_printed_and_stored_with_the_version(monkeypatch, fresh_pg_dsn, redis_url, artifact_dir, tmp_path):
    _environment(monkeypatch, fresh_pg_dsn, redis_url, artifact_dir)
    CliRunner().invoke(_app(), ["load-movielens", "--data-dir", str(_write_dataset(tmp_path / "ml"))])
    result = CliRunner().invoke(_app(), ["train-als", "--iterations", "3", "--factors", "4", "--tune-trials", "3"])
    assert result.exit_code == 0, result.output
    assert "tuning: 3 points" in result.stderr
    lines = result.stdout.strip().splitlines()
    printed = json.loads(lines[-2])["tuning"]
    version = lines[-1].split("=", 1)[1]
    params, metrics = _registered(fresh_pg_dsn, version)
    tuning = metrics["tuning"]
    assert tuning == printed
    assert tuning["stopped"] == "max-trials" and tuning["budget_seconds"] == 120
    assert [t["phase"] for t in tuning["trials"]] == ["seed", "seed", "coarse"]
    assert {t["factors"] for t in tuning["trials"]} == {4}  # given on the command line: not searched
    assert all(0 <= t["ndcg@10"] <= 1 for t in tuning["trials"])
    assert {key: params[key] for key in tuning["chosen"]} == tuning["chosen"]
    assert params["value_transforms"] == {"rating": "rating", "view": "log1p", "watch": "log1p"}

    version = _train("--tune-seconds", "0")
    params, metrics = _registered(fresh_pg_dsn, version)
    assert metrics["tuning"]["stopped"] == "off" and metrics["tuning"]["trials"] == []
    assert (params["factors"], params["regularization"], params["alpha"]) == (4, 0.1, 2.0)


def test_bad_tuning_options_are_refused(monkeypatch, fresh_pg_dsn, redis_url, artifact_dir):
    _environment(monkeypatch, fresh_pg_dsn, redis_url, artifact_dir)
    result = CliRunner().invoke(_app(), ["train-als", "--tune-holdout", "oldest"], env={"COLUMNS": "500"})
    assert result.exit_code == 2 and "oldest" in result.output
    result = CliRunner().invoke(_app(), ["train-als", "--tune-seconds", "-1"], env={"COLUMNS": "500"})
    assert result.exit_code == 2 and "tune-seconds" in result.output


def _play_counts(seed: int = 7) -> list[tuple[str, str, float, float]]:
    """(user, item, plays, time) of a listening log unlike MovieLens: 800 users and 1,000
    items with a heavy popularity skew (Zipf), 80 taste clusters, each user 4-333 items
    (60 on average) mostly from one cluster, Pareto-tailed play counts."""
    rng = np.random.default_rng(seed)
    n_users, n_items, clusters = 800, 1000, 80
    popularity = 1.0 / np.arange(1, n_items + 1)
    rng.shuffle(popularity)
    cluster_of = rng.integers(clusters, size=n_items)
    rows = []
    for user in range(n_users):
        cluster = rng.integers(clusters)
        count = int(min(n_items // 3, 3 + rng.geometric(1 / 60)))
        weights = popularity * np.where(cluster_of == cluster, 3000.0, 1.0)
        items = rng.choice(n_items, size=count, replace=False, p=weights / weights.sum())
        plays = np.ceil(rng.pareto(1.2, size=count) * 3 * np.where(cluster_of[items] == cluster, 3.0, 1.0))
        times = rng.uniform(1.7e9, 1.71e9, size=count)
        rows += [(f"u{user}", f"i{i}", float(p), float(t)) for i, p, t in zip(items, plays, times, strict=True)]
    return rows


def test_tuning_beats_the_movielens_defaults_on_play_counts(monkeypatch, fresh_pg_dsn, redis_url, artifact_dir):
    """Play counts loaded as `watch` events (value = plays); each user's most recent 20%
    of items are held back, and the version train-als tunes must rank them clearly
    better than one trained with the MovieLens defaults."""
    _environment(monkeypatch, fresh_pg_dsn, redis_url, artifact_dir)
    by_user: dict[str, list[tuple[str, float, float]]] = {}
    for user, item, plays, ts in _play_counts():
        by_user.setdefault(user, []).append((item, plays, ts))
    loaded, held_back = [], {}
    for user, rows in by_user.items():
        rows.sort(key=lambda row: row[2])
        cut = len(rows) - max(1, round(0.2 * len(rows))) if len(rows) >= 5 else len(rows)
        loaded += [(user, *row) for row in rows[:cut]]
        if cut < len(rows):
            held_back[user] = {item for item, _, _ in rows[cut:]}
    with (
        psycopg.connect(fresh_pg_dsn) as conn,
        conn.cursor().copy("COPY events (event_id, user_id, item_id, type, value, ts) FROM STDIN") as copy,
    ):
        for user, item, plays, ts in loaded:
            copy.write_row((uuid.uuid4(), user, item, "watch", plays, datetime.fromtimestamp(ts, UTC)))

    tuned = _train_version(["--tune-seconds", "300", "--no-holdout"])
    defaults = _train_version(["--tune-seconds", "0", "--no-holdout"])
    history: dict[str, set[str]] = {}
    for user, item, _, _ in loaded:
        history.setdefault(user, set()).add(item)
    store = open_artifact_store(f"file://{artifact_dir}")
    scores = {}
    for name, version in (("tuned", tuned), ("defaults", defaults)):
        model = als.load_model(store, version)
        users = sorted(held_back)
        seen = [(i, model.item_row(item)) for i, user in enumerate(users) for item in history[user]]
        exclude = sp.csr_matrix(
            (np.ones(len(seen)), ([i for i, _ in seen], [c for _, c in seen])), shape=(len(users), len(model.item_ids))
        )
        best = model.recommend_batch(np.array([model.user_row(u) for u in users]), 10, exclude)
        recommended = {u: [model.item_ids[c] for c in row if c >= 0] for u, row in zip(users, best, strict=True)}
        scores[name] = ranking_metrics(recommended, held_back, 10, len(model.item_ids)).ndcg
    params, metrics = _registered(fresh_pg_dsn, tuned)
    assert metrics["tuning"]["stopped"] == "converged" and not metrics["tuning"]["kept_given"]
    assert {key: params[key] for key in metrics["tuning"]["chosen"]} == metrics["tuning"]["chosen"]
    assert scores["tuned"] >= 1.2 * scores["defaults"], scores


def _train_version(args: list[str]) -> str:
    result = CliRunner().invoke(_app(), ["train-als", *args])
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1].split("=", 1)[1]


def _index_app() -> typer.Typer:
    app = _app()
    index.register(app)
    return app


EASE_FILES = {"ease/items.json", "ease/weights.npy", "ease/meta.json"}


def test_ease_is_published_with_the_version_and_split_over_the_shards(
    monkeypatch, fresh_pg_dsn, redis_url, artifact_dir, tmp_path
):
    """No search (--tune-seconds 0): the configured EASE setting is used as it is."""
    _environment(monkeypatch, fresh_pg_dsn, redis_url, artifact_dir)
    monkeypatch.setenv("RECFLEET_JOBS_EASE_L2", "50")
    monkeypatch.setenv("RECFLEET_JOBS_EASE_ALS_WEIGHT", "0.5")
    monkeypatch.setenv("RECFLEET_JOBS_EASE_POPULARITY_PENALTY", "0.4")
    dataset = _write_dataset(tmp_path / "ml")
    # A thirteenth user who watched movies 1 and 2: they have six users, the others five.
    with (dataset / "ratings.csv").open("a") as ratings:
        ratings.write("13,1,5.0,1000002000\r\n13,2,5.0,1000002001\r\n")
    CliRunner().invoke(_app(), ["load-movielens", "--data-dir", str(dataset)])
    result = CliRunner().invoke(_app(), ["train-als", *SMALL, "--tune-seconds", "0"])
    assert result.exit_code == 0, result.output
    assert "ease: no search (no budget); on, l2=50 als_weight=0.5 popularity_penalty=0.4 as configured" in result.stderr
    version = result.stdout.strip().splitlines()[-1].split("=", 1)[1]
    store = open_artifact_store(f"file://{artifact_dir}")
    prefix = f"models/als/{version}"
    checksums = json.loads(store.get_bytes(f"{prefix}/checksums.json"))
    assert set(checksums) >= EASE_FILES | {"ease/popularity.npy"}
    for name in EASE_FILES | {"ease/popularity.npy"}:
        assert sha256(store.get_bytes(f"{prefix}/{name}")) == checksums[name]
    vocabulary = json.loads(store.get_bytes(f"{prefix}/ease/items.json"))
    weights = np.load(io.BytesIO(store.get_bytes(f"{prefix}/ease/weights.npy")))
    # Every movie has at least two users, so all twelve are in the vocabulary.
    assert sorted(vocabulary) == sorted(str(m) for m in [*range(1, 7), *range(11, 17)])
    assert weights.dtype == np.float32 and weights.shape == (12, 12) and np.all(np.diag(weights) == 0)
    # Movies of the two taste groups were never rated together: they do not predict each other.
    group = {item: int(item) < 10 for item in vocabulary}
    across = [(i, j) for i, a in enumerate(vocabulary) for j, b in enumerate(vocabulary) if group[a] != group[b]]
    assert all(weights[i, j] == 0 for i, j in across)
    expected = {
        "l2": 50.0,
        "als_weight": 0.5,
        "popularity_penalty": 0.4,
        "max_items": 8000,
        "min_users": 2,
        "vocabulary_size": 12,
    }
    # Every ALS item's popularity: its standardised log user count, in item_ids.json's order.
    item_ids = json.loads(store.get_bytes(f"{prefix}/item_ids.json"))
    popularity = np.load(io.BytesIO(store.get_bytes(f"{prefix}/ease/popularity.npy")))
    assert popularity.dtype == np.float32 and popularity.shape == (len(item_ids),)
    logs = np.log1p([6 if item in ("1", "2") else 5 for item in item_ids])
    np.testing.assert_allclose(popularity, (logs - logs.mean()) / logs.std(), rtol=1e-5, atol=1e-6)
    assert json.loads(store.get_bytes(f"{prefix}/ease/meta.json")) == expected
    assert json.loads(store.get_bytes(f"{prefix}/meta.json"))["ease"] == expected
    params, metrics = _registered(fresh_pg_dsn, version)
    assert params["ease"] == expected
    assert metrics["ease_tuning"]["reason"] == "off" and metrics["ease_tuning"]["adopted"] is True

    built = CliRunner().invoke(_index_app(), ["build-index", "--version", version, "--shards", "2"])
    assert built.exit_code == 0, built.output
    assert json.loads(built.stdout)["ease"] == {"l2": 50.0, "als_weight": 0.5, "popularity_penalty": 0.4}
    owned = []
    for shard in range(2):
        loaded = load_shard(store, version, shard)
        assert loaded.ease is not None and (loaded.ease.l2, loaded.ease.als_weight) == (50.0, 0.5)
        # The shard's items' popularity, as the version has it; the fused score subtracts 0.4 x it.
        assert loaded.ease.item_popularity is not None and loaded.fusion is not None
        rows = [item_ids.index(item) for item in loaded.item_ids]
        assert loaded.ease.item_popularity.tolist() == popularity[rows].tolist()
        np.testing.assert_allclose(loaded.fusion.penalty, 0.4 * popularity[rows], rtol=1e-6)
        assert loaded.ease.weights.shape == (12, loaded.item_count)
        # A user's history scores this shard's items as the whole B does.
        history = [loaded.ease.vocabulary[item] for item in ("1", "2", "12")]
        scores = loaded.ease.weights[history].sum(axis=0)
        for column, row in enumerate(loaded.ease.shard_rows.tolist()):
            full = weights[[vocabulary.index(item) for item in ("1", "2", "12")]].sum(axis=0)
            assert scores[column] == pytest.approx(full[vocabulary.index(loaded.item_ids[row])])
            owned.append(loaded.item_ids[row])
    assert sorted(owned) == sorted(vocabulary)


def test_the_ease_search_is_recorded_and_no_ease_leaves_it_out(
    monkeypatch, fresh_pg_dsn, redis_url, artifact_dir, tmp_path
):
    _environment(monkeypatch, fresh_pg_dsn, redis_url, artifact_dir)
    CliRunner().invoke(_app(), ["load-movielens", "--data-dir", str(_write_dataset(tmp_path / "ml"))])
    result = CliRunner().invoke(_app(), ["train-als", *SMALL, "--tune-trials", "1"])
    assert result.exit_code == 0, result.output
    assert f"ease: {ease_trial_count()} points" in result.stderr
    version = result.stdout.strip().splitlines()[-1].split("=", 1)[1]
    params, metrics = _registered(fresh_pg_dsn, version)
    searched = metrics["ease_tuning"]
    assert json.loads(result.stdout.strip().splitlines()[-2])["ease_tuning"] == searched
    assert searched["stopped"] == "done" and len(searched["trials"]) == ease_trial_count()
    assert 0 < searched["vocabulary_size"] <= 12 and searched["budget_seconds"] == 60
    assert all(0 <= t["ndcg@10"] <= 1 for t in searched["trials"])
    store = open_artifact_store(f"file://{artifact_dir}")
    checksums = set(json.loads(store.get_bytes(f"models/als/{version}/checksums.json")))
    # Published exactly when the search adopted it.
    assert (checksums >= EASE_FILES) == searched["adopted"]
    assert (params["ease"] is not None) == searched["adopted"]

    version = _train("--no-ease")
    params, metrics = _registered(fresh_pg_dsn, version)
    assert params["ease"] is None and "ease_tuning" not in metrics
    assert not EASE_FILES & set(json.loads(store.get_bytes(f"models/als/{version}/checksums.json")))
    built = CliRunner().invoke(_index_app(), ["build-index", "--version", version, "--shards", "2"])
    assert built.exit_code == 0 and json.loads(built.stdout)["ease"] is None
    assert load_shard(store, version, 0).ease is None

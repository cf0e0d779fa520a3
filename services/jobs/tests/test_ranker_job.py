"""train-ranker on MovieLens latest-small interactions loaded into a real Postgres."""

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from recfleet_jobs.__main__ import _load, app
from recfleet_jobs.ranker import train_and_publish
from recfleet_models.ranking.artifacts import load_ranker
from recfleet_models.ranking.training import RankerParams
from recfleet_store.artifacts import DirectoryArtifactStore
from recfleet_store.registry import get_version, serving_version
from typer.testing import CliRunner

DATA = Path(__file__).resolve().parents[3] / "data" / "ml-latest-small"


def load_movielens(dsn: str, max_users: int) -> None:
    """Catalog (genres as categories, release year as published_at) and ratings as events."""
    with open(DATA / "movies.csv", encoding="utf-8", newline="") as handle:
        movies = list(csv.DictReader(handle))
    with open(DATA / "ratings.csv", encoding="utf-8", newline="") as handle:
        ratings = [r for r in csv.DictReader(handle) if int(r["userId"]) <= max_users]
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy("COPY items (item_id, title, categories, published_at) FROM STDIN") as copy:
            for movie in movies:
                genres = [g for g in movie["genres"].split("|") if g != "(no genres listed)"]
                title = movie["title"].strip()
                year = title[-5:-1] if title.endswith(")") and title[-5:-1].isdigit() else None
                copy.write_row((movie["movieId"], title, genres, f"{year}-01-01T00:00:00Z" if year else None))
        with cur.copy("COPY events (event_id, user_id, item_id, type, value, ts) FROM STDIN") as copy:
            for index, r in enumerate(ratings):
                ts = datetime.fromtimestamp(int(r["timestamp"]), UTC)
                copy.write_row(
                    (
                        f"00000000-0000-0000-0000-{index:012d}",
                        r["userId"],
                        r["movieId"],
                        "rating",
                        float(r["rating"]),
                        ts,
                    )
                )


def test_train_ranker_is_validated_against_what_serves_without_it_and_writes_a_loadable_candidate(
    fresh_pg_dsn, artifact_dir
):
    load_movielens(fresh_pg_dsn, max_users=610)
    store = DirectoryArtifactStore(artifact_dir)
    summary = train_and_publish(fresh_pg_dsn, store, RankerParams(), promote=False)
    metrics, gate = summary["metrics"], summary["validation_gate"]
    assert metrics["validation_users"] > 100
    # The learned ranker orders the candidates about as well as the better of what serves
    # without it, within two standard errors of the gain (which is ahead on this data
    # moves with the ALS factors a platform's floating point produces; the gate below
    # decides), and far above what a broken ranker scores (a random order of the 200 candidates
    # scores a few hundredths).
    for baseline in ("candidate_order", "rules"):
        floor = metrics[f"validation_ndcg@10_{baseline}"] - 2 * metrics[f"validation_gain_se_{baseline}"]
        assert metrics["validation_ndcg@10"] > max(floor, 0.05), metrics
    # The verdict weighs the gain over the better alternative against its standard error.
    assert gate["baseline"] == "candidate-order" and gate["gain_se"] == metrics["validation_gain_se_candidate_order"]
    assert gate["passed"] == (gate["gain"] >= 0.002 and gate["gain"] > 2 * gate["gain_se"])
    ranker = load_ranker(store, summary["version"], summary["artifact_uri"])
    assert ranker.version == summary["version"]
    meta = json.loads(store.get_bytes(f"{summary['artifact_uri'].rstrip('/')}/meta.json"))
    assert meta["metrics"]["validation_gate"] == summary["validation_gate"]
    with psycopg.connect(fresh_pg_dsn) as conn:
        assert serving_version(conn, "ranker") is None
        row = get_version(conn, summary["version"])
        assert row["status"] == "candidate" and row["metrics"]["validation_ndcg@10"] == metrics["validation_ndcg@10"]
        # The candidates the gateway sends a user with history: the top 100 of 2 shards.
        assert (row["params"]["als_candidates"], row["params"]["popular_candidates"]) == (200, 0)


def test_train_ranker_command_registers_a_candidate(fresh_pg_dsn, artifact_dir, monkeypatch):
    load_movielens(fresh_pg_dsn, max_users=60)
    monkeypatch.setenv("RECFLEET_POSTGRES_DSN", fresh_pg_dsn)
    monkeypatch.setenv("RECFLEET_ARTIFACT_URL", str(artifact_dir))
    _load()
    result = CliRunner().invoke(app, ["train-ranker", "--rounds", "10"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    # Not promoted, and `refusals` says what promoting it would meet: the gate's verdict.
    gate = summary["validation_gate"]
    assert summary["promoted"] is False and summary["refusals"] == ([] if gate["passed"] else [gate["reason"]])
    with psycopg.connect(fresh_pg_dsn) as conn:
        assert get_version(conn, summary["version"])["status"] == "candidate"
        assert serving_version(conn, "ranker") is None


def test_train_ranker_without_events_says_so(fresh_pg_dsn, artifact_dir, monkeypatch):
    monkeypatch.setenv("RECFLEET_POSTGRES_DSN", fresh_pg_dsn)
    monkeypatch.setenv("RECFLEET_ARTIFACT_URL", str(artifact_dir))
    _load()
    result = CliRunner().invoke(app, ["train-ranker"])
    assert result.exit_code == 1
    assert "no events" in result.output


def test_a_ranker_for_an_als_version_with_ease_learns_on_the_fused_candidates(fresh_pg_dsn, artifact_dir):
    # The serving ALS version fuses EASE in: the shards send ranking fused scores, so the
    # ranker is trained on candidates proposed and scored that way, and says so.
    from recfleet_store.registry import register_version

    load_movielens(fresh_pg_dsn, max_users=120)
    store = DirectoryArtifactStore(artifact_dir)
    ease = {"l2": 200.0, "als_weight": 0.3, "max_items": 2000, "min_users": 2, "vocabulary_size": 0}
    params = {"factors": 32, "iterations": 8, "regularization": 30.0, "alpha": 2.0}
    prefix = "models/als/als-with-ease/"
    store.put_bytes(f"{prefix}meta.json", json.dumps({"params": {**params, "ease": ease}, "ease": ease}).encode())
    with psycopg.connect(fresh_pg_dsn, autocommit=True) as conn:
        register_version(conn, "als-with-ease", "als", prefix, {}, {**params, "ease": ease})
    fused = train_and_publish(fresh_pg_dsn, store, RankerParams(), promote=False)
    meta = json.loads(store.get_bytes(f"{fused['artifact_uri'].rstrip('/')}/meta.json"))
    assert meta["als_params_from"] == "als-with-ease" and meta["candidates_fused_with_ease"] is True
    # The candidate order it is judged against is the fused one: not the plain ALS order's.
    store.put_bytes(f"{prefix}meta.json", json.dumps({"params": params}).encode())
    plain = train_and_publish(fresh_pg_dsn, store, RankerParams(), promote=False)
    plain_meta = json.loads(store.get_bytes(f"{plain['artifact_uri'].rstrip('/')}/meta.json"))
    assert plain_meta["candidates_fused_with_ease"] is False
    order = "validation_ndcg@10_candidate_order"
    assert fused["metrics"][order] != plain["metrics"][order]

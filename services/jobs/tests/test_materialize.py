"""`recfleet-jobs materialize` and `export-training-set` on a small fixture, against real
Postgres and Redis."""

from __future__ import annotations

import csv
import json
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import redis
import typer
from recfleet_jobs import materialize as materialize_job
from recfleet_store import keys
from recfleet_store.suppression import LOCAL_KEY, user_hash
from typer.testing import CliRunner

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
LONG_AGO = datetime.now(UTC) - timedelta(hours=1)


@pytest.fixture
def cli(fresh_pg_dsn, redis_url, monkeypatch):
    monkeypatch.setenv("RECFLEET_POSTGRES_DSN", fresh_pg_dsn)
    monkeypatch.setenv("RECFLEET_REDIS_URL", redis_url)
    app = typer.Typer()
    materialize_job.register(app)
    runner = CliRunner()

    def run(*args: str) -> dict:
        result = runner.invoke(app, [*args, "--no-progress"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output.strip().splitlines()[-1])

    return run


def add_event(conn, user: str, item: str, ts: datetime, received: datetime = LONG_AGO, kind: str = "click") -> None:
    conn.execute(
        "INSERT INTO events (event_id, user_id, item_id, type, ts, received_at) VALUES (%s, %s, %s, %s, %s, %s)",
        (uuid.uuid4(), user, item, kind, ts, received),
    )


def seed(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        for item, categories, available in (
            ("m1", ["Drama", "War"], True),
            ("m2", ["Comedy"], True),
            ("m3", [], False),
        ):
            conn.execute(
                "INSERT INTO items (item_id, title, categories, available, updated_at) VALUES (%s, %s, %s, %s, %s)",
                (item, f"Title {item}", categories, available, LONG_AGO),
            )
        conn.execute(
            "INSERT INTO user_profiles (user_id, blocked_categories, age, country, updated_at)"
            " VALUES ('u1', '{Horror}', 16, 'DE', %s)",
            (LONG_AGO,),
        )
        add_event(conn, "u1", "m1", T0)
        add_event(conn, "u1", "m2", T0 + timedelta(hours=1))
        add_event(conn, "u1", "m1", T0 + timedelta(hours=2))
        add_event(conn, "u2", "m2", T0 + timedelta(hours=3))


def hash_of(client: redis.Redis, key: str) -> dict:
    return {k.decode(): json.loads(v) for k, v in client.hgetall(key).items()}


def test_materialize_fills_redis_then_only_reads_what_is_new(cli, fresh_pg_dsn, redis_url):
    seed(fresh_pg_dsn)
    client = redis.Redis.from_url(redis_url)

    first = cli("materialize")
    assert (first["items"], first["profiles"], first["users"], first["item_counters"]) == (3, 1, 2, 2)

    u1 = hash_of(client, keys.user("u1"))
    assert u1["interaction_count"] == 3
    assert u1["last_seen_at"] == int((T0 + timedelta(hours=2)).timestamp())
    assert u1["category_counts"] == {"Drama": 2, "War": 2, "Comedy": 1}
    assert u1["blocked_categories"] == ["Horror"] and u1["age"] == 16 and u1["country"] == "DE"
    assert {m.decode() for m in client.smembers(keys.user_seen("u1"))} == {"m1", "m2"}
    m2 = hash_of(client, keys.item("m2"))
    assert m2["interaction_count"] == 2 and m2["title"] == "Title m2" and m2["categories"] == ["Comedy"]
    assert m2["last_interaction_at"] == int((T0 + timedelta(hours=3)).timestamp())
    assert hash_of(client, keys.item("m3"))["available"] == 0

    with psycopg.connect(fresh_pg_dsn) as conn:
        history = conn.execute(
            "SELECT value, event_time FROM offline_features"
            " WHERE entity = 'user' AND entity_id = 'u1' AND feature = 'interaction_count' ORDER BY event_time"
        ).fetchall()
        assert history == [(1, T0), (2, T0 + timedelta(hours=1)), (3, T0 + timedelta(hours=2))]
        add_event(conn, "u2", "m1", T0 + timedelta(hours=4), received=datetime.now(UTC))

    second = cli("materialize")
    assert (second["items"], second["profiles"], second["users"], second["item_counters"]) == (0, 0, 1, 1)
    assert hash_of(client, keys.user("u2"))["interaction_count"] == 2
    assert hash_of(client, keys.item("m1"))["interaction_count"] == 3
    assert hash_of(client, keys.user("u1"))["interaction_count"] == 3

    full = cli("materialize", "--full")
    assert (full["users"], full["item_counters"], full["offline_values"]) == (2, 2, 0)


def test_training_rows_hold_features_as_of_each_event_and_nothing_later(cli, fresh_pg_dsn, tmp_path):
    seed(fresh_pg_dsn)
    cli("materialize")
    with psycopg.connect(fresh_pg_dsn) as conn:
        for value, when in ((0.2, T0 - timedelta(days=1)), (0.9, T0 + timedelta(minutes=30))):
            conn.execute(
                "INSERT INTO offline_features (entity, entity_id, feature, value, event_time)"
                " VALUES ('item', 'm2', 'popularity', %s, %s)",
                (json.dumps(value), when),
            )
        # Written after every event: must appear in no row.
        conn.execute(
            "INSERT INTO offline_features (entity, entity_id, feature, value, event_time)"
            " VALUES ('user', 'u1', 'age', '99', %s)",
            (T0 + timedelta(days=30),),
        )
        # Popularity changes right after u1's m2 event, before u2's: only u2's row sees it.
        conn.execute(
            "INSERT INTO offline_features (entity, entity_id, feature, value, event_time)"
            " VALUES ('item', 'm2', 'popularity', '0.5', %s)",
            (T0 + timedelta(hours=1, seconds=1),),
        )

    out = tmp_path / "training.csv"
    reply = cli("export-training-set", "--out", str(out))
    assert reply["rows"] == 4
    rows = list(csv.DictReader(out.open()))
    assert [(r["user_id"], r["item_id"]) for r in rows] == [("u1", "m1"), ("u1", "m2"), ("u1", "m1"), ("u2", "m2")]
    counts = [float(r["user__interaction_count"]) for r in rows]
    assert counts == [1, 2, 3, 1]
    hours = [0, 1, 2, 3]
    assert [float(r["user__last_seen_at"]) for r in rows] == [(T0 + timedelta(hours=h)).timestamp() for h in hours]
    # m2 was first used at T0+1h: that row already sees it, the later m2 row sees 2 uses.
    assert [float(r["item__interaction_count"]) for r in rows] == [1, 1, 2, 2]
    # Windowed counts as the realtime buckets served them then: the row two hours after
    # m1's first use no longer counts it in the last hour, but does in the last day.
    windowed = [[float(r[f"item__interactions_{w}"]) for w in ("1h", "24h", "7d")] for r in rows]
    assert windowed == [[1, 1, 1], [1, 1, 1], [1, 2, 2], [1, 2, 2]]
    assert float(rows[1]["item__popularity"]) == 0.9
    assert float(rows[3]["item__popularity"]) == 0.5
    assert float(rows[0]["item__popularity"]) == 0  # m1 never had a popularity value
    assert {float(r["user__age"]) for r in rows if r["user_id"] == "u1"} == {16}
    assert json.loads(rows[0]["item__categories"]) == ["Drama", "War"]
    assert [json.loads(r["user__category_counts"]) for r in rows[:3]] == [
        {"Drama": 1, "War": 1},
        {"Drama": 1, "War": 1, "Comedy": 1},
        {"Drama": 2, "War": 2, "Comedy": 1},
    ]

    # The same rows as Parquet: list columns as lists, maps as JSON text as in the CSV.
    import pyarrow.parquet as pq

    reply = cli("export-training-set", "--out", str(tmp_path / "training.parquet"))
    assert reply["rows"] == 4
    table = pq.read_table(tmp_path / "training.parquet")
    assert table.column_names == list(rows[0].keys())
    parquet_rows = table.to_pylist()
    assert [(r["user_id"], r["item_id"]) for r in parquet_rows] == [(r["user_id"], r["item_id"]) for r in rows]
    assert [r["user__interaction_count"] for r in parquet_rows] == counts
    assert parquet_rows[0]["item__categories"] == ["Drama", "War"]
    assert [r["item__interactions_24h"] for r in parquet_rows] == [1, 1, 2, 2]
    assert json.loads(parquet_rows[2]["user__category_counts"]) == {"Drama": 2, "War": 2, "Comedy": 1}

    with pytest.raises(AssertionError, match=r"must end in \.csv or \.parquet"):
        cli("export-training-set", "--out", str(tmp_path / "training.txt"))


def test_users_being_erased_are_not_materialized(cli, fresh_pg_dsn, redis_url):
    seed(fresh_pg_dsn)
    with psycopg.connect(fresh_pg_dsn) as conn:
        conn.execute(
            "INSERT INTO erased_users (user_hash, receipt_id) VALUES (%s, 'r-1')", (user_hash(LOCAL_KEY, "u2"),)
        )
    report = cli("materialize")
    client = redis.Redis.from_url(redis_url)
    assert report["users"] == 1
    assert client.exists(keys.user("u1"), keys.user_seen("u1")) == 2
    assert client.exists(keys.user("u2"), keys.user_seen("u2")) == 0
    with psycopg.connect(fresh_pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM offline_features WHERE entity_id = 'u2'").fetchone() == (0,)

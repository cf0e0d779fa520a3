"""The popularity job against real Postgres and Redis."""

import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import redis
import typer
from recfleet_jobs import popularity
from recfleet_store import keys
from recfleet_store.suppression import LOCAL_KEY, user_hash
from typer.testing import CliRunner

NEWEST = datetime(2018, 9, 24, tzinfo=UTC)


def _app() -> typer.Typer:
    app = typer.Typer()
    popularity.register(app)
    app.command("noop")(lambda: None)
    return app


def _seed(dsn: str) -> None:
    items = [
        ("a", ["Drama", "Comedy"], True),
        ("b", ["Drama"], True),
        ("c", ["Horror"], True),
        ("gone", ["Drama"], False),
        ("quiet", ["Drama"], True),
    ]
    # (user, item, type, value, days before the newest event)
    events = [
        ("u1", "a", "purchase", None, 100),
        ("u2", "a", "view", None, 100),
        ("u3", "a", "rating", 5.0, 60),
        ("u1", "b", "view", None, 3),
        ("u2", "b", "view", None, 1),
        ("u3", "b", "click", None, 0),
        ("u1", "c", "view", None, 20),
        ("u1", "gone", "purchase", None, 0),
        ("u2", "gone", "purchase", None, 0),
        ("erased", "c", "purchase", None, 0),
    ]
    with psycopg.connect(dsn) as conn:
        for item, categories, available in items:
            conn.execute(
                "INSERT INTO items (item_id, categories, available) VALUES (%s, %s, %s)", (item, categories, available)
            )
        for user, item, kind, value, days in events:
            conn.execute(
                "INSERT INTO events (event_id, user_id, item_id, type, value, ts) VALUES (gen_random_uuid(), %s, %s,"
                " %s, %s, %s)",
                (user, item, kind, value, NEWEST - timedelta(days=days)),
            )
        conn.execute(
            "INSERT INTO erased_users (user_hash, receipt_id) VALUES (%s, 'r-1')", (user_hash(LOCAL_KEY, "erased"),)
        )


def test_windows_reach_postgres_and_redis(monkeypatch, fresh_pg_dsn, redis_url):
    _seed(fresh_pg_dsn)
    monkeypatch.setenv("RECFLEET_POSTGRES_DSN", fresh_pg_dsn)
    monkeypatch.setenv("RECFLEET_REDIS_URL", redis_url)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.zadd(keys.popular("all", "Western"), {"old": 1.0})  # a category with no items left
    client.hset(keys.item("a"), "title", json.dumps("A"))

    result = CliRunner().invoke(_app(), ["popularity"])
    assert result.exit_code == 0, result.output

    # all-time: a = purchase 5 + view 1 + rating 5 stars (3.5) = 9.5; b = 1 + 1 + 2 = 4; c = 1.
    assert client.zrevrange(keys.popular("all"), 0, -1, withscores=True) == [("a", 9.5), ("b", 4.0), ("c", 1.0)]
    assert client.zrevrange(keys.popular("all", "Drama"), 0, -1) == ["a", "b"]
    assert client.zrange(keys.popular("all", "Comedy"), 0, -1) == ["a"]
    assert client.zrange(keys.popular("all", "Horror"), 0, -1) == ["c"]
    assert not client.exists(keys.popular("all", "Western"))
    # 7 days before the newest event: only b; trending (30 days, decayed): b then c.
    assert client.zrange(keys.popular("7d"), 0, -1, withscores=True) == [("b", 4.0)]
    assert client.zrevrange(keys.popular("trending"), 0, -1) == ["b", "c"]
    assert not [k for k in client.scan_iter("rf:pop:*") if ":tmp-" in k]

    item_a = client.hgetall(keys.item("a"))
    assert item_a == {"title": json.dumps("A"), "popularity": "1.0", "popularity_7d": "0.0"}
    assert json.loads(client.hget(keys.item("b"), "popularity")) == pytest.approx(4 / 9.5, abs=1e-6)
    assert json.loads(client.hget(keys.item("b"), "popularity_7d")) == 1.0
    assert json.loads(client.hget(keys.item("quiet"), "popularity")) == 0.0
    assert not client.exists(keys.item("gone"))

    with psycopg.connect(fresh_pg_dsn) as conn:
        rows = conn.execute("SELECT window_name, item_id, score FROM item_popularity ORDER BY 1, 3 DESC").fetchall()
    assert [(w, i) for w, i, _ in rows if w == "all"] == [("all", "a"), ("all", "b"), ("all", "c")]
    assert [(w, i) for w, i, _ in rows if w == "7d"] == [("7d", "b")]

    # A second run replaces, it does not add up.
    assert CliRunner().invoke(_app(), ["popularity"]).exit_code == 0
    assert client.zscore(keys.popular("all"), "a") == 9.5
    with psycopg.connect(fresh_pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM item_popularity").fetchone()[0] == len(rows)
    client.close()

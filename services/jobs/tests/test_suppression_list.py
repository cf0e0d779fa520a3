"""The jobs against the erasure suppression list, which holds keyed hashes of user ids: a
listed user is left out only under the key that hashed it, and `rehash-suppression` turns
rows from before the hashing into hashed ones."""

from datetime import UTC, datetime, timedelta

import psycopg
import redis
import typer
from recfleet_jobs import erasure, popularity
from recfleet_store import keys
from recfleet_store.suppression import LOCAL_KEY, user_hash
from typer.testing import CliRunner

NOW = datetime.now(UTC)
OTHER_KEY = "another-erasure-hash-key"


def _app() -> typer.Typer:
    app = typer.Typer()
    popularity.register(app)
    erasure.register(app)
    return app


def _seed(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO items (item_id, categories, available) VALUES ('a', '{Drama}', true)")
        conn.execute("INSERT INTO items (item_id, categories, available) VALUES ('b', '{Drama}', true)")
        for user, item in (("kept", "a"), ("gone", "b"), ("gone", "b")):
            conn.execute(
                "INSERT INTO events (event_id, user_id, item_id, type, ts) VALUES (gen_random_uuid(), %s, %s,"
                " 'view', %s)",
                (user, item, NOW - timedelta(hours=1)),
            )


def _popular(monkeypatch, dsn: str, redis_url: str, key: str | None = None) -> list[tuple[str, float]]:
    monkeypatch.setenv("RECFLEET_POSTGRES_DSN", dsn)
    monkeypatch.setenv("RECFLEET_REDIS_URL", redis_url)
    if key is None:
        monkeypatch.delenv("RECFLEET_ERASURE_HASH_KEY", raising=False)
    else:
        monkeypatch.setenv("RECFLEET_ERASURE_HASH_KEY", key)
    result = CliRunner().invoke(_app(), ["popularity"])
    assert result.exit_code == 0, result.output
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return client.zrevrange(keys.popular("all"), 0, -1, withscores=True)
    finally:
        client.close()


def _rows(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT user_id, user_hash, receipt_id FROM erased_users ORDER BY receipt_id").fetchall()


def test_a_listed_user_is_left_out_only_under_the_key_that_hashed_them(monkeypatch, fresh_pg_dsn, redis_url):
    _seed(fresh_pg_dsn)
    with psycopg.connect(fresh_pg_dsn) as conn:
        conn.execute(
            "INSERT INTO erased_users (user_hash, receipt_id) VALUES (%s, 'r-1')", (user_hash(OTHER_KEY, "gone"),)
        )
    assert _popular(monkeypatch, fresh_pg_dsn, redis_url, OTHER_KEY) == [("a", 1.0)]
    # Under another key (here the local default) the stored hash matches no one.
    assert _popular(monkeypatch, fresh_pg_dsn, redis_url) == [("b", 2.0), ("a", 1.0)]


def test_a_key_too_short_is_refused(monkeypatch, fresh_pg_dsn, redis_url):
    monkeypatch.setenv("RECFLEET_POSTGRES_DSN", fresh_pg_dsn)
    monkeypatch.setenv("RECFLEET_ERASURE_HASH_KEY", "short")
    result = CliRunner().invoke(_app(), ["popularity"])
    assert result.exit_code != 0
    assert "RECFLEET_ERASURE_HASH_KEY" in str(result.exception)


def test_rehash_suppression_hashes_rows_from_before_the_migration(monkeypatch, fresh_pg_dsn, redis_url):
    _seed(fresh_pg_dsn)
    with psycopg.connect(fresh_pg_dsn) as conn:
        # Rows as the previous release wrote them: the plain id. "again" was erased once
        # more since, so a hashed row of theirs is there already.
        conn.execute("INSERT INTO erased_users (user_id, receipt_id) VALUES ('gone', 'r-1'), ('again', 'r-2')")
        conn.execute(
            "INSERT INTO erased_users (user_hash, receipt_id) VALUES (%s, 'r-3')", (user_hash(LOCAL_KEY, "again"),)
        )
    # Before the rehash the jobs already leave the plain rows' users out.
    assert _popular(monkeypatch, fresh_pg_dsn, redis_url) == [("a", 1.0)]

    result = CliRunner().invoke(_app(), ["rehash-suppression"])
    assert result.exit_code == 0, result.output
    assert '"rehashed": 2' in result.output
    assert _rows(fresh_pg_dsn) == [
        (None, user_hash(LOCAL_KEY, "gone"), "r-1"),
        (None, user_hash(LOCAL_KEY, "again"), "r-3"),
    ]
    assert _popular(monkeypatch, fresh_pg_dsn, redis_url) == [("a", 1.0)]

    again = CliRunner().invoke(_app(), ["rehash-suppression"])
    assert again.exit_code == 0 and '"rehashed": 0' in again.output

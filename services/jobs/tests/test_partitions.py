"""create-partitions against real Postgres: months ahead, and rows already sitting in the
default partition are moved into their month without loss."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import psycopg
from recfleet_jobs.__main__ import _load, app
from recfleet_jobs.partitions import Month, create_partitions, months_to_cover
from typer.testing import CliRunner

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def test_months_to_cover_wraps_the_year_and_adds_months_with_rows():
    months = months_to_cover(NOW, 2, {Month(2025, 3)})
    assert [m.partition for m in months] == ["events_p2025_03", "events_p2026_11", "events_p2026_12", "events_p2027_01"]
    assert Month(2026, 12).end == datetime(2027, 1, 1, tzinfo=UTC)


def insert(conn, ts: datetime) -> None:
    conn.execute(
        "INSERT INTO events (event_id, user_id, item_id, type, ts) VALUES (%s, 'u', 'i', 'view', %s)",
        (uuid.uuid4(), ts),
    )


def placement(conn) -> dict[str, int]:
    rows = conn.execute("SELECT tableoid::regclass::text, count(*) FROM events GROUP BY 1")
    return dict(rows.fetchall())


def test_rows_in_the_default_partition_move_to_their_new_month(fresh_pg_dsn):
    with psycopg.connect(fresh_pg_dsn, autocommit=True) as conn:
        insert(conn, datetime(2026, 11, 30, 23, 59, tzinfo=UTC))
        insert(conn, datetime(2026, 12, 1, 0, 0, tzinfo=UTC))
        insert(conn, datetime(2024, 2, 10, tzinfo=UTC))
        assert placement(conn) == {"events_default": 3}

    result = create_partitions(fresh_pg_dsn, months_ahead=1, now=NOW)
    assert result == {"created": ["events_p2024_02", "events_p2026_11", "events_p2026_12"], "moved_rows": 3}

    with psycopg.connect(fresh_pg_dsn, autocommit=True) as conn:
        assert placement(conn) == {"events_p2024_02": 1, "events_p2026_11": 1, "events_p2026_12": 1}
        # New rows route to the partitions; the indexes of the parent exist on them.
        insert(conn, datetime(2026, 12, 15, tzinfo=UTC))
        assert placement(conn)["events_p2026_12"] == 2
        indexes = {
            row[0] for row in conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'events_p2026_12'")
        }
        assert any("(user_id, ts DESC)" in d for d in indexes)

    assert create_partitions(fresh_pg_dsn, months_ahead=1, now=NOW) == {"created": [], "moved_rows": 0}


def test_cli_creates_months_ahead(fresh_pg_dsn, monkeypatch):
    monkeypatch.setenv("RECFLEET_POSTGRES_DSN", fresh_pg_dsn)
    _load()
    result = CliRunner().invoke(app, ["create-partitions", "--months-ahead", "2"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["created"]) == 3

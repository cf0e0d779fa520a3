"""load-movielens against a real Postgres: content, idempotence, erased users."""

import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import typer
from recfleet_jobs import bootstrap
from recfleet_store.suppression import LOCAL_KEY, user_hash
from typer.testing import CliRunner

BUNDLED = Path(__file__).resolve().parents[3] / "data" / "ml-latest-small"


def _app() -> typer.Typer:
    app = typer.Typer()
    bootstrap.register(app)
    app.command("noop")(lambda: None)  # two commands: typer keeps the command name
    return app


def _write_dataset(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    crlf = "\r\n"
    (path / "movies.csv").write_text(
        crlf.join(
            [
                "movieId,title,genres",
                '1,"Heat, The (1995)",Action|Crime',
                "2,Nameless,(no genres listed)",
                "3,Quiet Film (2001) ,Drama",
            ]
        )
        + crlf,
        encoding="utf-8",
    )
    (path / "ratings.csv").write_text(
        crlf.join(
            [
                "userId,movieId,rating,timestamp",
                "7,1,4.5,1000000000",
                "7,2,1.0,1000000100",
                "8,1,3.0,1000000200",
                "9,3,5.0,1000000300",
            ]
        )
        + crlf,
        encoding="utf-8",
    )
    tags = ["userId,movieId,tag,timestamp"] + [f"7,1,tag{i % 12},100{i}" for i in range(30)] + ["7,1,Tag0,2000"]
    (path / "tags.csv").write_text(crlf.join(tags) + crlf, encoding="utf-8")
    return path


def _run(monkeypatch, dsn: str, data_dir: Path) -> str:
    monkeypatch.setenv("RECFLEET_POSTGRES_DSN", dsn)
    result = CliRunner().invoke(_app(), ["load-movielens", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    return result.output


def test_bundled_catalog_and_ratings_load_once(monkeypatch, fresh_pg_dsn):
    first = _run(monkeypatch, fresh_pg_dsn, BUNDLED)
    assert "items_changed=9742" in first and "events_new=100836" in first
    with psycopg.connect(fresh_pg_dsn) as conn:
        stamp = conn.execute("SELECT max(updated_at) FROM items").fetchone()[0]
        toy = conn.execute(
            "SELECT title, categories, published_at, tags, age_rating, regions, available, creator"
            " FROM items WHERE item_id = '1'"
        ).fetchone()
    assert toy[:3] == (
        "Toy Story (1995)",
        ["Adventure", "Animation", "Children", "Comedy", "Fantasy"],
        datetime(1995, 1, 1, tzinfo=UTC),
    )
    assert "pixar" in toy[3] and len(toy[3]) == len(set(toy[3])) <= 10
    assert toy[4:] == (0, [], True, "")

    second = _run(monkeypatch, fresh_pg_dsn, BUNDLED)
    assert "items_changed=0" in second and "events_new=0" in second
    with psycopg.connect(fresh_pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 100836
        assert conn.execute("SELECT count(*) FROM event_ids").fetchone()[0] == 100836
        assert conn.execute("SELECT max(updated_at) FROM items").fetchone()[0] == stamp


def test_small_dataset_fields_ids_and_erased_users(monkeypatch, fresh_pg_dsn, tmp_path):
    data_dir = _write_dataset(tmp_path / "ml")
    with psycopg.connect(fresh_pg_dsn) as conn:
        conn.execute(
            "INSERT INTO erased_users (user_hash, receipt_id) VALUES (%s, 'r-1')", (user_hash(LOCAL_KEY, "9"),)
        )
    _run(monkeypatch, fresh_pg_dsn, data_dir)
    with psycopg.connect(fresh_pg_dsn) as conn:
        items = {
            row[0]: row[1:]
            for row in conn.execute("SELECT item_id, title, categories, published_at, tags FROM items ORDER BY item_id")
        }
        events = conn.execute("SELECT event_id, user_id, item_id, type, value, ts FROM events ORDER BY ts").fetchall()
    assert items["1"][0] == "Heat, The (1995)"
    assert items["1"][3] == [f"tag{i}" for i in range(10)]  # deduplicated ("Tag0" too), capped at 10
    assert items["2"][1:3] == ([], None)  # no genres, no year
    assert items["3"][2] == datetime(2001, 1, 1, tzinfo=UTC)
    assert [(e[1], e[2], e[3], e[4]) for e in events] == [
        ("7", "1", "rating", 4.5),
        ("7", "2", "rating", 1.0),
        ("8", "1", "rating", 3.0),
    ]  # user 9 is erased
    assert events[0][0] == bootstrap.rating_event_id(7, 1, 1000000000)
    assert isinstance(events[0][0], uuid.UUID) and events[0][0].version == 5
    assert events[0][5] == datetime.fromtimestamp(1000000000, UTC)


def test_bad_directory_is_refused(monkeypatch, fresh_pg_dsn, tmp_path):
    monkeypatch.setenv("RECFLEET_POSTGRES_DSN", fresh_pg_dsn)
    result = CliRunner().invoke(_app(), ["load-movielens", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "movies.csv" in result.output


@pytest.mark.parametrize("fmt", ["ml-1m"])
def test_unknown_format_is_refused(monkeypatch, fresh_pg_dsn, fmt):
    monkeypatch.setenv("RECFLEET_POSTGRES_DSN", fresh_pg_dsn)
    result = CliRunner().invoke(_app(), ["load-movielens", "--data-dir", str(BUNDLED), "--format", fmt])
    assert result.exit_code == 2
    assert "ml-1m" in result.output

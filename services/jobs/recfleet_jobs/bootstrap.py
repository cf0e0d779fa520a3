"""`recfleet-jobs load-movielens`: the MovieLens catalog and ratings into Postgres.

Items are upserted (a row only changes when its content does). Ratings become `rating`
events whose event id is uuid5("ml:<user>:<movie>:<ts>"), so a reload is idempotent: rows
are COPYed into a temporary table and only ids new to `event_ids` reach `events`, in one
transaction. Ratings of erased users are not loaded.
"""

from __future__ import annotations

import io
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import typer
from recfleet_models.data import FORMATS, MovieLensDataset, read_movielens, unique_tags
from recfleet_store import suppression
from recfleet_store.postgres import ensure_database, migrate
from tqdm import tqdm

from .settings import JobSettings

# Fixed namespace: the same rating always gets the same event id, on every machine.
EVENT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://recfleet/movielens")
MAX_TAGS = 10
_CHUNK = 10_000


def rating_event_id(user_id: int, movie_id: int, ts: int) -> uuid.UUID:
    return uuid.uuid5(EVENT_NAMESPACE, f"ml:{user_id}:{movie_id}:{ts}")


def _published_at(year: int | None) -> datetime | None:
    return datetime(year, 1, 1, tzinfo=UTC) if year else None


def load_items(conn: psycopg.Connection, dataset: MovieLensDataset) -> int:
    """Upsert the catalog; returns the number of rows inserted or changed."""
    conn.execute(
        "CREATE TEMP TABLE load_items (item_id text, title text, categories text[], published_at timestamptz,"
        " tags text[]) ON COMMIT DROP"
    )
    with conn.cursor().copy("COPY load_items (item_id, title, categories, published_at, tags) FROM STDIN") as copy:
        for movie in tqdm(dataset.movies, desc="items", unit="item", leave=False):
            copy.write_row(
                (
                    str(movie.movie_id),
                    movie.title,
                    list(movie.genres),
                    _published_at(movie.year),
                    unique_tags(dataset.tags.get(movie.movie_id, []), MAX_TAGS),
                )
            )
    cursor = conn.execute(
        "INSERT INTO items AS i (item_id, title, categories, published_at, tags, age_rating, regions, available,"
        " creator)"
        " SELECT item_id, title, categories, published_at, tags, 0, '{}', true, '' FROM load_items"
        " ON CONFLICT (item_id) DO UPDATE SET title = EXCLUDED.title, categories = EXCLUDED.categories,"
        " published_at = EXCLUDED.published_at, tags = EXCLUDED.tags, updated_at = now()"
        " WHERE (i.title, i.categories, i.published_at, i.tags)"
        " IS DISTINCT FROM (EXCLUDED.title, EXCLUDED.categories, EXCLUDED.published_at, EXCLUDED.tags)"
    )
    return cursor.rowcount


def load_ratings(conn: psycopg.Connection, dataset: MovieLensDataset, erasure_hash_key: str) -> int:
    """Insert the ratings not loaded before, none of an erased user; returns how many were
    new. Call inside a transaction."""
    conn.execute(
        "CREATE TEMP TABLE load_events (event_id uuid, user_id text, item_id text, value double precision,"
        " ts timestamptz) ON COMMIT DROP"
    )
    ratings = dataset.ratings
    users = ratings.user_ids.tolist()
    movies = ratings.movie_ids.tolist()
    stars = ratings.ratings.tolist()
    stamps = ratings.timestamps.tolist()
    with (
        conn.cursor().copy("COPY load_events (event_id, user_id, item_id, value, ts) FROM STDIN") as copy,
        tqdm(total=len(users), desc="ratings", unit="row", leave=False) as progress,
    ):
        for start in range(0, len(users), _CHUNK):
            buffer = io.StringIO()
            for user, movie, value, ts in zip(
                users[start : start + _CHUNK],
                movies[start : start + _CHUNK],
                stars[start : start + _CHUNK],
                stamps[start : start + _CHUNK],
                strict=False,
            ):
                stamp = datetime.fromtimestamp(ts, UTC).isoformat()
                buffer.write(f"{rating_event_id(user, movie, ts)}\t{user}\t{movie}\t{value}\t{stamp}\n")
            copy.write(buffer.getvalue())
            progress.update(min(_CHUNK, len(users) - start))
    # As the event sink does: an erasure waits for this transaction and then deletes what
    # it loaded, and the list read now cannot change before the insert.
    conn.execute("LOCK TABLE erased_users IN SHARE MODE")
    erased = sorted(suppression.load(conn, erasure_hash_key).among(str(user) for user in set(users)))
    cursor = conn.execute(
        "WITH fresh AS ("
        "  INSERT INTO event_ids (event_id, user_id)"
        "  SELECT DISTINCT ON (event_id) event_id, user_id FROM load_events l"
        "  WHERE l.user_id <> ALL (%s::text[])"
        "  ON CONFLICT DO NOTHING RETURNING event_id)"
        " INSERT INTO events (event_id, user_id, item_id, type, value, ts, context)"
        " SELECT DISTINCT ON (l.event_id) l.event_id, l.user_id, l.item_id, 'rating', l.value, l.ts,"
        ' \'{"source": "movielens"}\'::jsonb'
        " FROM load_events l JOIN fresh USING (event_id)",
        (erased,),
    )
    return cursor.rowcount


def load_movielens(
    dsn: str, data_dir: str | Path, erasure_hash_key: str, fmt: str = "ml-latest-small"
) -> dict[str, int]:
    """Migrate, then load one MovieLens directory; returns counts of what changed."""
    ensure_database(dsn)
    migrate(dsn)
    dataset = read_movielens(data_dir, fmt)
    with psycopg.connect(dsn) as conn:
        with conn.transaction():
            items = load_items(conn, dataset)
        with conn.transaction():
            events = load_ratings(conn, dataset, erasure_hash_key)
    return {
        "movies": len(dataset.movies),
        "items_changed": items,
        "ratings": len(dataset.ratings),
        "events_new": events,
    }


def load_movielens_command(
    data_dir: str = typer.Option("", help="MovieLens directory; default RECFLEET_JOBS_DATA_DIR"),
    fmt: str = typer.Option("ml-latest-small", "--format", help=f"one of {', '.join(FORMATS)}"),
) -> None:
    """Load a MovieLens catalog and its ratings into Postgres (idempotent)."""
    settings = JobSettings()
    if fmt not in FORMATS:
        raise typer.BadParameter(f"{fmt!r} is not one of {', '.join(FORMATS)}", param_hint="--format")
    path = Path(data_dir or settings.data_dir)
    if not path.is_dir():
        raise typer.BadParameter(f"{path} is not a directory", param_hint="--data-dir")
    started = time.perf_counter()
    try:
        counts = load_movielens(settings.postgres_dsn, path, settings.erasure_hash_key.get_secret_value(), fmt)
    except (FileNotFoundError, ValueError) as error:
        raise typer.BadParameter(str(error), param_hint="--data-dir") from error
    typer.echo(
        f"movies={counts['movies']} items_changed={counts['items_changed']} ratings={counts['ratings']}"
        f" events_new={counts['events_new']} seconds={time.perf_counter() - started:.1f}"
    )


def register(app: typer.Typer) -> None:
    app.command("load-movielens")(load_movielens_command)

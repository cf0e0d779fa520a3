"""`recfleet-jobs popularity`: popularity windows into Postgres and Redis.

Only available items count. Postgres `item_popularity` is replaced window by window in
one transaction. In Redis each sorted set `rf:pop:<window>:<category or *>` is written
under a temporary name and RENAMEd over the live one, so readers see the old ranking or
the new one, never a half-written one; categories that no longer have items lose their
key. Item hashes `rf:i:<item>` get only the fields `popularity` (all-time, normalised to
[0, 1]) and `popularity_7d` (7-day, normalised the same way), JSON-encoded.
"""

from __future__ import annotations

import json
import secrets
import time

import numpy as np
import psycopg
import redis
import typer
from recfleet_models.als import ALSParams, event_weights
from recfleet_models.popularity import DEFAULT_PARAMS, WINDOWS, PopularityParams, by_category, normalise, window_scores
from recfleet_store import keys
from tqdm import tqdm

from .als import read_interactions
from .settings import JobSettings

_CHUNK = 1000


def read_events(conn: psycopg.Connection, erasure_hash_key: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(item ids, weights, epoch seconds) of events on available items, erased users left out."""
    log = read_interactions(conn, erasure_hash_key, available_items_only=True)
    weights = event_weights(log.types, log.values, ALSParams())
    return log.items, weights, np.asarray(log.times, dtype=np.float64)


def read_categories(conn: psycopg.Connection) -> dict[str, list[str]]:
    return {
        item: list(categories)
        for item, categories in conn.execute("SELECT item_id, categories FROM items WHERE available")
    }


def write_postgres(conn: psycopg.Connection, scores: dict[str, dict[str, float]]) -> None:
    with conn.transaction():
        conn.execute("DELETE FROM item_popularity WHERE window_name = ANY(%s)", (list(scores),))
        with conn.cursor().copy("COPY item_popularity (window_name, item_id, score) FROM STDIN") as copy:
            for window, items in scores.items():
                for item, score in items.items():
                    copy.write_row((window, item, score))


def replace_sorted_set(client: redis.Redis, key: str, scores: dict[str, float]) -> None:
    """Write `scores` to a temporary key and rename it over `key` (delete when empty)."""
    if not scores:
        client.delete(key)
        return
    temporary = f"{key}:tmp-{secrets.token_hex(4)}"
    entries = list(scores.items())
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(entries), _CHUNK):
        pipe.zadd(temporary, dict(entries[start : start + _CHUNK]))
    pipe.rename(temporary, key)
    pipe.execute()


def write_redis(client: redis.Redis, scores: dict[str, dict[str, float]], categories: dict[str, list[str]]) -> int:
    """Every window's sorted sets and the items' popularity fields; returns keys written."""
    written = 0
    for window, items in tqdm(scores.items(), desc="sorted sets", unit="window", leave=False):
        per_category = by_category(items, categories)
        wanted = {keys.popular(window)} | {keys.popular(window, category) for category in per_category}
        replace_sorted_set(client, keys.popular(window), items)
        for category, members in per_category.items():
            replace_sorted_set(client, keys.popular(window, category), members)
        written += len(wanted)
        for stale in client.scan_iter(match=f"{keys.PREFIX}:pop:{window}:*", count=1000):
            name = stale.decode()
            if name not in wanted and ":tmp-" not in name:
                client.delete(name)
    all_time = normalise(scores["all"])
    recent = normalise(scores["7d"])
    available = sorted(categories)
    for start in range(0, len(available), _CHUNK):
        pipe = client.pipeline(transaction=False)
        for item in available[start : start + _CHUNK]:
            pipe.hset(
                keys.item(item),
                mapping={
                    "popularity": json.dumps(round(all_time.get(item, 0.0), 6)),
                    "popularity_7d": json.dumps(round(recent.get(item, 0.0), 6)),
                },
            )
        pipe.execute()
    return written


def compute_popularity(settings: JobSettings, params: PopularityParams = DEFAULT_PARAMS) -> dict[str, int]:
    """The whole job; returns how many items each window scored."""
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        items, weights, stamps = read_events(conn, settings.erasure_hash_key.get_secret_value())
        categories = read_categories(conn)
        scores = window_scores(items, weights, stamps, params)
        write_postgres(conn, scores)
    client = redis.Redis.from_url(settings.redis_url)
    try:
        write_redis(client, scores, categories)
    finally:
        client.close()
    return {window: len(scores[window]) for window in WINDOWS}


def popularity_command(
    recent_days: float = typer.Option(7.0, min=0.001, help="length of the 7d window in days"),
    trending_days: float = typer.Option(30.0, min=0.001, help="events older than this do not trend"),
    half_life_days: float = typer.Option(3.0, min=0.001, help="trending: a weight halves every this many days"),
) -> None:
    """Compute popularity windows (all, 7d, trending) into Postgres and Redis."""
    settings = JobSettings()
    started = time.perf_counter()
    counts = compute_popularity(settings, PopularityParams(recent_days, trending_days, half_life_days))
    typer.echo(json.dumps({"items": counts, "seconds": round(time.perf_counter() - started, 2)}))


def register(app: typer.Typer) -> None:
    app.command("popularity")(popularity_command)

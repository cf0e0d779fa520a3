"""Materialization (Postgres -> Redis) and the point-in-time training-set export.

Materialization is incremental by time window: it reads catalog rows and profiles whose
`updated_at`, and events whose `received_at`, fall after the last watermark (minus an
overlap for transactions that committed late), recomputes the affected users' and items'
features from all of their events, writes them to the online store and appends their
history to `offline_features`. Recomputing whole entities makes a re-run idempotent.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from tqdm import tqdm

from .. import keys
from . import registry as registry_module
from .aggregates import running_category_counts
from .batch import OfflineBatch, OnlineBatch
from .pointintime import column, stored_features, training_rows

# Rows committed with an older timestamp than the watermark (long transactions) are
# picked up by re-reading this much before it; re-reading is harmless.
OVERLAP = timedelta(minutes=2)
BEGINNING = datetime(1900, 1, 1, tzinfo=UTC)


@dataclass
class MaterializeReport:
    start: str
    until: str
    items: int
    profiles: int
    users: int
    item_counters: int
    offline_values: int
    seconds: float


def window_start(watermark: datetime | None, since: datetime | None, full: bool) -> datetime:
    """Where a run starts: everything when full, else `since`, else the last watermark
    minus the overlap, else everything."""
    if full:
        return BEGINNING
    if since is not None:
        return since if since.tzinfo else since.replace(tzinfo=UTC)
    if watermark is not None:
        return watermark - OVERLAP
    return BEGINNING


def materialize(
    pg_dsn: str,
    redis_url: str,
    since: datetime | None = None,
    full: bool = False,
    progress: bool = True,
    *,
    erasure_hash_key: str,
) -> MaterializeReport:
    """Fill the online store from Postgres for the window since the last run; see module doc.
    Users on the erasure suppression list (keyed by `erasure_hash_key`) are left out."""
    started = time.perf_counter()
    offline = OfflineBatch(pg_dsn)
    online = OnlineBatch(redis_url)
    try:
        until = offline.now()
        start = window_start(offline.watermark(), since, full)
        n_users, n_items = offline.mark_affected(start, until, erasure_hash_key)
        n_catalog = offline.count_changed("items", start, until)
        n_profiles = offline.count_changed("user_profiles", start, until)
        bar = tqdm(
            total=n_catalog + n_profiles + n_users + n_items,
            unit="row",
            desc="materialize",
            disable=not progress,
            mininterval=0.5,
        )
        with bar:
            bar.set_postfix_str("catalog")
            for (
                item_id,
                title,
                categories,
                creator,
                published,
                tags,
                age_rating,
                regions,
                available,
            ) in offline.changed_items(start, until):
                online.hset(
                    keys.item(item_id),
                    {
                        "title": title,
                        "categories": categories,
                        "creator": creator,
                        "published_at": published,
                        "tags": tags,
                        "age_rating": age_rating,
                        "regions": regions,
                        "available": 1 if available else 0,
                    },
                )
                bar.update()
            bar.set_postfix_str("profiles")
            for user_id, preferred, blocked, liked, age, country in offline.changed_profiles(start, until):
                online.hset(
                    keys.user(user_id),
                    {
                        "preferred_categories": preferred,
                        "blocked_categories": blocked,
                        "liked_items": liked,
                        "age": age,
                        "country": country,
                    },
                )
                bar.update()
            bar.set_postfix_str("users")
            for user_id, count, last, category_counts, seen in offline.user_aggregates():
                online.hset(
                    keys.user(user_id),
                    {"interaction_count": count, "last_seen_at": last, "category_counts": category_counts},
                )
                online.sadd(keys.user_seen(user_id), seen)
                bar.update()
            bar.set_postfix_str("items")
            for item_id, count, last in offline.item_aggregates():
                online.hset(keys.item(item_id), {"interaction_count": count, "last_interaction_at": last})
                bar.update()
            online.flush()
            bar.set_postfix_str("offline store")
            written = offline.write_offline(start, until)
            bar.set_postfix_str("category history")
            written += offline.write_history(
                "user", "category_counts", running_category_counts(offline.user_category_events())
            )
        report = MaterializeReport(
            start=start.isoformat(),
            until=until.isoformat(),
            items=n_catalog,
            profiles=n_profiles,
            users=n_users,
            item_counters=n_items,
            offline_values=written,
            seconds=round(time.perf_counter() - started, 3),
        )
        offline.save_watermark(until, asdict(report))
        offline.commit()
        return report
    finally:
        online.close()
        offline.close()


def export_training_set(
    pg_dsn: str,
    out: str | Path,
    registry_path: str = "",
    since: datetime | None = None,
    until: datetime | None = None,
    progress: bool = True,
) -> int:
    """Write one row per event with every registry feature as of the event's timestamp
    (CSV; list values as JSON). Returns the number of rows."""
    out = Path(out)
    if out.suffix not in (".csv", ".parquet"):
        raise ValueError(f"--out: must end in .csv or .parquet (got {out.name!r})")
    if out.suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401  (optional dependency)
        except ModuleNotFoundError:
            raise ValueError("--out: writing .parquet needs pyarrow, which is not installed; use .csv") from None
    registry = registry_module.load(registry_path)
    views = registry.views
    offline = OfflineBatch(pg_dsn)
    try:
        histories = offline.histories(stored_features(views))
        rows = training_rows(offline.events(since, until), histories, views)
        columns = ["user_id", "item_id", "ts", "type", "value", *(column(view) for view in views)]
        rows = tqdm(rows, unit="row", desc="training set", disable=not progress, mininterval=0.5)
        if out.suffix == ".csv":
            return _write_csv(out, columns, rows)
        return _write_parquet(out, columns, rows)
    finally:
        offline.close()


def _cell(value: Any) -> Any:
    return orjson.dumps(value).decode() if isinstance(value, list) else value


def _write_csv(out: Path, columns: list[str], rows: Iterable[dict[str, Any]]) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row[name]) for name in columns])
            count += 1
    return count


def _write_parquet(out: Path, columns: list[str], rows: Iterable[dict[str, Any]]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data: dict[str, list[Any]] = {name: [] for name in columns}
    for row in rows:
        for name in columns:
            data[name].append(row[name])
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(data), out)
    return len(data["user_id"])

"""Batch access for materialization and training-set export: synchronous psycopg and
redis clients, set-based SQL and pipelined Redis writes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
import redis
from psycopg.types.json import Jsonb

from .. import suppression
from .pointintime import Event, Histories, History

WATERMARK_NAME = "online"
# Values known before any event (catalog and profile fields loaded with historical
# interactions) are dated here, so point-in-time reads of old events see them.
KNOWN_SINCE = datetime(1970, 1, 1, tzinfo=UTC)

# Catalog and profile values are appended only when they differ from the latest stored
# one: the first value of an entity counts as known since KNOWN_SINCE, later ones since
# the row's updated_at.
CATALOG_OFFLINE_SQL = """
INSERT INTO offline_features (entity, entity_id, feature, value, event_time)
SELECT 'item', i.item_id, f.key, f.value,
       CASE WHEN latest.value IS NULL THEN %(known_since)s ELSE i.updated_at END
FROM items i,
     LATERAL jsonb_each(jsonb_build_object(
        'title', i.title, 'categories', to_jsonb(i.categories), 'creator', i.creator,
        'published_at', COALESCE(floor(extract(epoch FROM i.published_at)), 0),
        'tags', to_jsonb(i.tags), 'age_rating', i.age_rating, 'regions', to_jsonb(i.regions),
        'available', CASE WHEN i.available THEN 1 ELSE 0 END)) f
     LEFT JOIN LATERAL (SELECT o.value FROM offline_features o
                        WHERE o.entity = 'item' AND o.entity_id = i.item_id AND o.feature = f.key
                        ORDER BY o.event_time DESC LIMIT 1) latest ON true
WHERE i.updated_at > %(start)s AND i.updated_at <= %(until)s
  AND latest.value IS DISTINCT FROM f.value
ON CONFLICT (entity, entity_id, feature, event_time) DO UPDATE SET value = EXCLUDED.value
"""

PROFILE_OFFLINE_SQL = """
INSERT INTO offline_features (entity, entity_id, feature, value, event_time)
SELECT 'user', p.user_id, f.key, f.value,
       CASE WHEN latest.value IS NULL THEN %(known_since)s ELSE p.updated_at END
FROM user_profiles p,
     LATERAL jsonb_each(jsonb_build_object(
        'preferred_categories', to_jsonb(p.preferred_categories),
        'blocked_categories', to_jsonb(p.blocked_categories),
        'liked_items', to_jsonb(p.liked_items),
        'age', COALESCE(p.age, 0), 'country', COALESCE(p.country, ''))) f
     LEFT JOIN LATERAL (SELECT o.value FROM offline_features o
                        WHERE o.entity = 'user' AND o.entity_id = p.user_id AND o.feature = f.key
                        ORDER BY o.event_time DESC LIMIT 1) latest ON true
WHERE p.updated_at > %(start)s AND p.updated_at <= %(until)s
  AND latest.value IS DISTINCT FROM f.value
ON CONFLICT (entity, entity_id, feature, event_time) DO UPDATE SET value = EXCLUDED.value
"""

# Running interaction counts per (entity, ts): the value right after the events at ts, so
# a point-in-time read sees exactly the events up to then. The times of these rows are
# the entity's interaction times, so `last_seen_at` / `last_interaction_at` are not
# stored as history of their own: point-in-time reads derive them from these rows.
RUNNING_OFFLINE_SQL = """
INSERT INTO offline_features (entity, entity_id, feature, value, event_time)
SELECT %(entity)s::text, g.id, 'interaction_count', to_jsonb(g.running), g.ts
FROM (
    SELECT e.{column} AS id, e.ts, sum(count(*)) OVER (PARTITION BY e.{column} ORDER BY e.ts) AS running
    FROM events e JOIN {affected} a ON a.id = e.{column}
    GROUP BY e.{column}, e.ts
) g
ON CONFLICT (entity, entity_id, feature, event_time) DO UPDATE SET value = EXCLUDED.value
WHERE offline_features.value IS DISTINCT FROM EXCLUDED.value
"""


def _scalar(cursor: psycopg.Cursor[Any]) -> Any:
    """The first column of a query's single row."""
    row = cursor.fetchone()
    if row is None:
        raise RuntimeError("the query returned no row")
    return row[0]


class OfflineBatch:
    """Set-based reads and writes over one Postgres connection (one transaction per run)."""

    def __init__(self, dsn: str):
        self.conn = psycopg.connect(dsn)

    def close(self) -> None:
        self.conn.close()

    def now(self) -> datetime:
        now: datetime = _scalar(self.conn.execute("SELECT now()"))
        return now

    def watermark(self) -> datetime | None:
        row = self.conn.execute(
            "SELECT watermark FROM materialization_watermarks WHERE name = %s", (WATERMARK_NAME,)
        ).fetchone()
        return row[0] if row else None

    def save_watermark(self, watermark: datetime, stats: dict[str, Any]) -> None:
        self.conn.execute(
            "INSERT INTO materialization_watermarks (name, watermark, stats) VALUES (%s, %s, %s)"
            " ON CONFLICT (name) DO UPDATE SET watermark = EXCLUDED.watermark, stats = EXCLUDED.stats,"
            " updated_at = now()",
            (WATERMARK_NAME, watermark, Jsonb(stats)),
        )

    def commit(self) -> None:
        self.conn.commit()

    def mark_affected(self, start: datetime, until: datetime, erasure_hash_key: str) -> tuple[int, int]:
        """Temp tables of the users (not being erased) and items with events received in
        (start, until]; returns their sizes."""
        self.conn.execute("DROP TABLE IF EXISTS affected_users, affected_items")
        self.conn.execute(
            "CREATE TEMP TABLE affected_users ON COMMIT DROP AS SELECT DISTINCT user_id AS id FROM events"
            " WHERE received_at > %s AND received_at <= %s",
            (start, until),
        )
        # Users whose erasure was requested are skipped: their events may not be deleted
        # yet, and materializing them would bring their keys back. The list holds keyed
        # hashes, so the affected users are hashed here and the erased ones dropped.
        erased = suppression.load(self.conn, erasure_hash_key)
        if erased.hashes:
            affected = [user for (user,) in self.conn.execute("SELECT id FROM affected_users")]
            gone = sorted(erased.among(affected))
            if gone:
                self.conn.execute("DELETE FROM affected_users WHERE id = ANY (%s)", (gone,))
        self.conn.execute(
            "CREATE TEMP TABLE affected_items ON COMMIT DROP AS SELECT DISTINCT item_id AS id FROM events"
            " WHERE received_at > %s AND received_at <= %s",
            (start, until),
        )
        self.conn.execute("ANALYZE affected_users; ANALYZE affected_items")
        users = int(_scalar(self.conn.execute("SELECT count(*) FROM affected_users")))
        items = int(_scalar(self.conn.execute("SELECT count(*) FROM affected_items")))
        return users, items

    def count_changed(self, table: str, start: datetime, until: datetime) -> int:
        return int(
            _scalar(
                self.conn.execute(
                    f"SELECT count(*) FROM {table} WHERE updated_at > %s AND updated_at <= %s", (start, until)
                )
            )
        )

    def changed_items(self, start: datetime, until: datetime) -> Iterator[tuple[Any, ...]]:
        with self.conn.cursor(name="changed_items") as cur:
            cur.itersize = 2000
            cur.execute(
                "SELECT item_id, title, categories, creator,"
                " COALESCE(floor(extract(epoch FROM published_at))::bigint, 0), tags, age_rating, regions, available"
                " FROM items WHERE updated_at > %s AND updated_at <= %s",
                (start, until),
            )
            yield from cur

    def changed_profiles(self, start: datetime, until: datetime) -> Iterator[tuple[Any, ...]]:
        with self.conn.cursor(name="changed_profiles") as cur:
            cur.itersize = 2000
            cur.execute(
                "SELECT user_id, preferred_categories, blocked_categories, liked_items, COALESCE(age, 0),"
                " COALESCE(country, '') FROM user_profiles WHERE updated_at > %s AND updated_at <= %s",
                (start, until),
            )
            yield from cur

    def user_aggregates(self) -> Iterator[tuple[Any, ...]]:
        """(user, count, last epoch, {category: n}, [seen items]) for every affected user."""
        with self.conn.cursor(name="user_aggregates") as cur:
            cur.itersize = 500
            cur.execute(
                """
                WITH base AS (
                    SELECT e.user_id, count(*) AS n, floor(extract(epoch FROM max(e.ts)))::bigint AS last,
                           array_agg(DISTINCT e.item_id) AS seen
                    FROM events e JOIN affected_users a ON a.id = e.user_id GROUP BY e.user_id
                ), cats AS (
                    SELECT user_id, jsonb_object_agg(category, n) AS counts FROM (
                        SELECT e.user_id, c.category, count(*) AS n
                        FROM events e JOIN affected_users a ON a.id = e.user_id
                        JOIN items i ON i.item_id = e.item_id, unnest(i.categories) AS c(category)
                        GROUP BY e.user_id, c.category
                    ) per_category GROUP BY user_id
                )
                SELECT b.user_id, b.n, b.last, COALESCE(c.counts, '{}'::jsonb), b.seen
                FROM base b LEFT JOIN cats c USING (user_id)
                """
            )
            yield from cur

    def item_aggregates(self) -> Iterator[tuple[Any, ...]]:
        """(item, count, last epoch) for every affected item."""
        with self.conn.cursor(name="item_aggregates") as cur:
            cur.itersize = 5000
            cur.execute(
                "SELECT e.item_id, count(*), floor(extract(epoch FROM max(e.ts)))::bigint"
                " FROM events e JOIN affected_items a ON a.id = e.item_id GROUP BY e.item_id"
            )
            yield from cur

    def write_offline(self, start: datetime, until: datetime) -> int:
        """Catalog, profile and event-derived values into offline_features with the time
        each became true; returns the rows inserted or changed."""
        params = {"start": start, "until": until, "known_since": KNOWN_SINCE}
        written = self.conn.execute(CATALOG_OFFLINE_SQL, params).rowcount
        written += self.conn.execute(PROFILE_OFFLINE_SQL, params).rowcount
        for entity, column, affected in (("user", "user_id", "affected_users"), ("item", "item_id", "affected_items")):
            sql = RUNNING_OFFLINE_SQL.format(column=column, affected=affected)
            written += self.conn.execute(sql, {"entity": entity}).rowcount
        return written

    def user_category_events(self) -> list[tuple[str, datetime, list[str] | None]]:
        """(user, ts, item categories) of every affected user's events, by user and time."""
        return self.conn.execute(
            "SELECT e.user_id, e.ts, i.categories FROM events e JOIN affected_users a ON a.id = e.user_id"
            " LEFT JOIN items i ON i.item_id = e.item_id ORDER BY e.user_id, e.ts"
        ).fetchall()

    def write_history(self, entity: str, feature: str, values: Iterable[tuple[str, datetime, Any]]) -> int:
        """Append (entity id, event time, value) rows of one feature, replacing values
        stored at the same time; returns the rows inserted or changed."""
        self.conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS history_load (entity_id text, event_time timestamptz, value jsonb)"
            " ON COMMIT DROP"
        )
        self.conn.execute("TRUNCATE history_load")
        with self.conn.cursor().copy("COPY history_load (entity_id, event_time, value) FROM STDIN") as copy:
            for entity_id, event_time, value in values:
                copy.write_row((entity_id, event_time, orjson.dumps(value).decode()))
        return self.conn.execute(
            "INSERT INTO offline_features (entity, entity_id, feature, value, event_time)"
            " SELECT %s, entity_id, %s, value, event_time FROM history_load"
            " ON CONFLICT (entity, entity_id, feature, event_time) DO UPDATE SET value = EXCLUDED.value"
            " WHERE offline_features.value IS DISTINCT FROM EXCLUDED.value",
            (entity, feature),
        ).rowcount

    def events(self, since: datetime | None, until: datetime | None) -> Iterator[Event]:
        """Events in time order, optionally within [since, until)."""
        with self.conn.cursor(name="training_events") as cur:
            cur.itersize = 10000
            cur.execute(
                "SELECT user_id, item_id, ts, type, value FROM events"
                " WHERE (%(since)s::timestamptz IS NULL OR ts >= %(since)s)"
                " AND (%(until)s::timestamptz IS NULL OR ts < %(until)s) ORDER BY ts, user_id, item_id",
                {"since": since, "until": until},
            )
            for user_id, item_id, ts, kind, value in cur:
                yield Event(user_id, item_id, ts, kind, value)

    def histories(self, features: list[tuple[str, str]]) -> Histories:
        """Every offline value of the given (entity, feature) pairs, in time order."""
        found: Histories = {}
        entities = [entity for entity, _ in features]
        names = [name for _, name in features]
        with self.conn.cursor(name="histories") as cur:
            cur.itersize = 20000
            cur.execute(
                "SELECT o.entity, o.entity_id, o.feature, o.value, o.event_time FROM offline_features o"
                " JOIN unnest(%s::text[], %s::text[]) AS w(entity, feature)"
                " ON w.entity = o.entity AND w.feature = o.feature ORDER BY o.event_time",
                (entities, names),
            )
            for entity, entity_id, feature, value, event_time in cur:
                key = (entity, entity_id, feature)
                history = found.get(key)
                if history is None:
                    history = found[key] = History()
                history.add(event_time, value)
        return found


class OnlineBatch:
    """Pipelined Redis writes, flushed every `batch` commands."""

    def __init__(self, url: str, batch: int = 2000):
        self.client = redis.Redis.from_url(url)
        self.pipe = self.client.pipeline(transaction=False)
        self.batch = batch
        self.pending = 0

    def _queued(self) -> None:
        self.pending += 1
        if self.pending >= self.batch:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.pipe.execute()
            self.pending = 0

    def hset(self, key: str, values: dict[str, Any]) -> None:
        # Values are JSON, as every online-store writer stores them (docs/CONTRACTS.md).
        self.pipe.hset(key, mapping={name: orjson.dumps(value) for name, value in values.items()})
        self._queued()

    def sadd(self, key: str, members: list[str]) -> None:
        if members:
            self.pipe.sadd(key, *members)
            self._queued()

    def zadd_new(self, key: str, member: str) -> None:
        self.pipe.zadd(key, {member: 0}, nx=True)
        self._queued()

    def close(self) -> None:
        self.flush()
        self.client.close()

"""The offline store and catalog in Postgres: the source of truth behind the online store."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from ..validation import CatalogItem, Profile


class PostgresOfflineStore:
    """offline_features, items, user_profiles, user_vectors and (read-only) events."""

    def __init__(self, pool: AsyncConnectionPool):
        self.pool = pool

    async def open(self) -> None:
        """Start the pool without waiting: readiness is `ping`'s job."""
        await self.pool.open(wait=False)

    async def ping(self) -> bool:
        async with self.pool.connection() as conn:
            await conn.execute("SELECT 1")
        return True

    async def close(self) -> None:
        await self.pool.close()

    async def write_features(self, entity: str, rows: dict[str, dict[str, Any]], event_time: datetime) -> int:
        """Every value with the time it became true; a rewrite at the same time replaces it."""
        params = [
            (entity, entity_id, name, Jsonb(value), event_time)
            for entity_id, values in rows.items()
            for name, value in values.items()
        ]
        if not params:
            return 0
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO offline_features (entity, entity_id, feature, value, event_time)"
                " VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (entity, entity_id, feature, event_time) DO UPDATE SET value = EXCLUDED.value",
                params,
            )
        return len(params)

    async def upsert_items(self, items: list[CatalogItem]) -> tuple[set[str], dict[str, list[str]]]:
        """Upsert the catalog rows; returns the ids that are new and the categories the
        existing ones had before."""
        ids = [item.item_id for item in items]
        created: set[str] = set()
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute("SELECT item_id, categories FROM items WHERE item_id = ANY(%s) FOR UPDATE", (ids,))
            previous = {row[0]: list(row[1]) for row in await cur.fetchall()}
            async with conn.cursor() as cur:
                # executemany pipelines the statements: one round trip for the batch.
                await cur.executemany(
                    "INSERT INTO items (item_id, title, categories, creator, published_at, tags, age_rating,"
                    " regions, available) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (item_id) DO UPDATE SET title = EXCLUDED.title, categories = EXCLUDED.categories,"
                    " creator = EXCLUDED.creator, published_at = EXCLUDED.published_at, tags = EXCLUDED.tags,"
                    " age_rating = EXCLUDED.age_rating, regions = EXCLUDED.regions,"
                    " available = EXCLUDED.available, updated_at = now()"
                    " RETURNING item_id, (xmax = 0)",
                    [
                        (
                            item.item_id,
                            item.title,
                            item.categories,
                            item.creator,
                            item.published_at,
                            item.tags,
                            item.age_rating,
                            item.regions,
                            item.available,
                        )
                        for item in items
                    ],
                    returning=True,
                )
                while True:
                    # xmax = 0 on the returned row: it was inserted, not updated.
                    returned = await cur.fetchone()
                    assert returned is not None  # RETURNING: one row per upserted item
                    item_id, inserted = returned
                    if inserted:
                        created.add(item_id)
                    if not cur.nextset():
                        break
        return created, previous

    async def upsert_profile(self, profile: Profile) -> Profile:
        """Store the profile; returns it as stored."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO user_profiles (user_id, preferred_categories, blocked_categories, liked_items, age,"
                " country) VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (user_id) DO UPDATE SET preferred_categories = EXCLUDED.preferred_categories,"
                " blocked_categories = EXCLUDED.blocked_categories, liked_items = EXCLUDED.liked_items,"
                " age = EXCLUDED.age, country = EXCLUDED.country, updated_at = now()"
                " RETURNING user_id, preferred_categories, blocked_categories, liked_items, age, country",
                (
                    profile.user_id,
                    profile.preferred_categories,
                    profile.blocked_categories,
                    profile.liked_items,
                    profile.age or None,
                    profile.country or None,
                ),
            )
            row = await cur.fetchone()
        assert row is not None  # an upsert RETURNING its row
        return Profile(
            user_id=row[0],
            preferred_categories=list(row[1]),
            blocked_categories=list(row[2]),
            liked_items=list(row[3]),
            age=row[4] or 0,
            country=row[5] or "",
        )

    async def export_user(self, user_id: str) -> dict:
        """Profile, offline features, stored vectors and events of the user."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT preferred_categories, blocked_categories, liked_items, age, country, updated_at"
                " FROM user_profiles WHERE user_id = %s",
                (user_id,),
            )
            row = await cur.fetchone()
            profile = None
            if row:
                profile = {
                    "preferred_categories": list(row[0]),
                    "blocked_categories": list(row[1]),
                    "liked_items": list(row[2]),
                    "age": row[3] or 0,
                    "country": row[4] or "",
                    "updated_at": row[5].isoformat(),
                }
            cur = await conn.execute(
                "SELECT feature, value, event_time FROM offline_features"
                " WHERE entity = 'user' AND entity_id = %s ORDER BY feature, event_time",
                (user_id,),
            )
            offline = [{"feature": f, "value": v, "event_time": t.isoformat()} for f, v, t in await cur.fetchall()]
            cur = await conn.execute(
                "SELECT model_version, vector FROM user_vectors WHERE user_id = %s ORDER BY model_version",
                (user_id,),
            )
            vectors = [{"model_version": v, "vector": list(vec)} for v, vec in await cur.fetchall()]
            cur = await conn.execute(
                "SELECT event_id, item_id, type, value, ts, context, received_at FROM events"
                " WHERE user_id = %s ORDER BY ts, event_id",
                (user_id,),
            )
            events = [
                {
                    "event_id": str(event_id),
                    "item_id": item_id,
                    "type": kind,
                    "value": value,
                    "timestamp": ts.isoformat(),
                    "context": context,
                    "received_at": received.isoformat(),
                }
                for event_id, item_id, kind, value, ts, context, received in await cur.fetchall()
            ]
        return {"profile": profile, "offline_features": offline, "user_vectors": vectors, "events": events}

    async def erase_user(self, user_id: str) -> dict[str, int]:
        """Delete the profile, offline features and vectors of the user (events belong to
        event-ingest's erasure); returns rows removed per table."""
        removed = {}
        async with self.pool.connection() as conn, conn.transaction():
            for table, where in (
                ("user_profiles", "user_id = %s"),
                ("offline_features", "entity = 'user' AND entity_id = %s"),
                ("user_vectors", "user_id = %s"),
            ):
                cur = await conn.execute(f"DELETE FROM {table} WHERE {where}", (user_id,))
                removed[f"postgres.{table}"] = cur.rowcount
        return removed

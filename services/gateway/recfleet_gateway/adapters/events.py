"""The `events` table, read for a user's data export (the event path writes it through
event-ingest and its Postgres sink, never through the gateway)."""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool

EXPORT_COLUMNS = ("event_id", "item_id", "type", "value", "timestamp", "context", "received_at")


async def user_events(pool: AsyncConnectionPool, user_id: str) -> list[dict]:
    """Every stored event of the user, oldest first."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT event_id::text, item_id, type, value, ts, context, received_at FROM events"
            " WHERE user_id = %s ORDER BY ts, event_id",
            (user_id,),
        )
        rows = await cur.fetchall()
    return [dict(zip(EXPORT_COLUMNS, row, strict=True)) for row in rows]

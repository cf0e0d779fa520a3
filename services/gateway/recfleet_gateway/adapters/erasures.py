"""The `erasures` table: one receipt per erasure request, with each store's outcome."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool


@dataclass(frozen=True)
class ErasureRow:
    receipt_id: str
    user_id: str
    requested_at: datetime
    completed_at: datetime | None
    stores: dict[str, Any]


class ErasureTable:
    def __init__(self, pool: AsyncConnectionPool):
        self._pool = pool

    async def insert(self, receipt_id: str, user_id: str, stores: dict[str, Any]) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO erasures (receipt_id, user_id, stores) VALUES (%s, %s, %s)",
                (receipt_id, user_id, Jsonb(stores)),
            )

    async def get(self, receipt_id: str) -> ErasureRow | None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT receipt_id, user_id, requested_at, completed_at, stores FROM erasures WHERE receipt_id = %s",
                (receipt_id,),
            )
            row = await cur.fetchone()
        return None if row is None else ErasureRow(*row)

    async def record_store(self, receipt_id: str, store: str, state: dict[str, Any]) -> None:
        """One store's outcome (`stores[store] = state`)."""
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE erasures SET stores = jsonb_set(stores, %s, %s) WHERE receipt_id = %s",
                ([store], Jsonb(state), receipt_id),
            )

    async def mark_completed(self, receipt_id: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute("UPDATE erasures SET completed_at = now() WHERE receipt_id = %s", (receipt_id,))

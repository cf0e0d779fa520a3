"""The item catalog's metadata, read from Postgres `items`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg

# A row's updated_at is its transaction's start time, so a long transaction can commit a
# row stamped before rows already seen. Re-reading this much history on every poll keeps
# such rows from being missed; re-reading a row is harmless.
COMMIT_LAG = timedelta(seconds=60)


@dataclass(frozen=True)
class CatalogRow:
    item_id: str
    categories: tuple[str, ...]
    tags: tuple[str, ...]
    available: bool
    updated_at: datetime


class CatalogReader:
    """Reads item metadata; one lazily (re)opened connection, dropped after an error so the
    next call reconnects (the error itself propagates to the caller)."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self._conn: psycopg.AsyncConnection | None = None

    async def _rows(self, query: str, params: tuple = ()) -> list[CatalogRow]:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, connect_timeout=5)
            async with self._conn.cursor() as cursor:
                await cursor.execute(query, params)
                rows = await cursor.fetchall()
        except psycopg.Error:
            await self.close()
            raise
        return [CatalogRow(row[0], tuple(row[1]), tuple(row[2]), row[3], row[4]) for row in rows]

    async def all_items(self) -> list[CatalogRow]:
        """Every item of the catalog."""
        return await self._rows("SELECT item_id, categories, tags, available, updated_at FROM items")

    async def changed_since(self, watermark: datetime) -> list[CatalogRow]:
        """Items inserted or updated after `watermark` (minus the commit lag)."""
        return await self._rows(
            "SELECT item_id, categories, tags, available, updated_at FROM items WHERE updated_at > %s",
            (watermark - COMMIT_LAG,),
        )

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

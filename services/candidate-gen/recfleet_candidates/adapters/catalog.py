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
    """Reads item metadata over one lazily (re)opened connection, dropped after an error so
    the next call reconnects (the error itself propagates to the caller).

    Blocking on purpose: callers run it in a worker thread, because turning a million
    rows into Python objects would otherwise hold the event loop for seconds. Calls must
    not overlap (the caller serialises them).
    """

    def __init__(self, dsn: str):
        self.dsn = dsn
        self._conn: psycopg.Connection | None = None

    def _rows(self, query: str, params: tuple = ()) -> list[CatalogRow]:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
            with self._conn.cursor() as cursor:
                cursor.execute(query, params)
                rows = cursor.fetchall()
        except psycopg.Error:
            self.close()
            raise
        return [CatalogRow(row[0], tuple(row[1]), tuple(row[2]), row[3], row[4]) for row in rows]

    def all_items(self) -> list[CatalogRow]:
        """Every item of the catalog."""
        return self._rows("SELECT item_id, categories, tags, available, updated_at FROM items")

    def changed_since(self, watermark: datetime) -> list[CatalogRow]:
        """Items inserted or updated after `watermark` (minus the commit lag)."""
        return self._rows(
            "SELECT item_id, categories, tags, available, updated_at FROM items WHERE updated_at > %s",
            (watermark - COMMIT_LAG,),
        )

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

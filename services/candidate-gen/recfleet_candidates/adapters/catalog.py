"""The item catalog's metadata, read from Postgres `items`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg

# A row's updated_at is its transaction's start time, so a long transaction can commit a
# row stamped before rows already seen. Each poll re-reads this much before the previous
# read began; re-reading a row is harmless. The bound follows the database's clock, not
# the newest row seen, so a quiet catalog costs nothing to poll once this has passed.
COMMIT_LAG = timedelta(seconds=60)


@dataclass(frozen=True)
class CatalogRow:
    item_id: str
    categories: tuple[str, ...]
    tags: tuple[str, ...]
    available: bool
    updated_at: datetime


@dataclass(frozen=True)
class CatalogRead:
    """Rows from one read, and the database's clock when the read began: the next
    `changed_since` starts from it."""

    rows: list[CatalogRow]
    read_at: datetime


class CatalogReader:
    """Reads item metadata over one lazily (re)opened connection, dropped after an error so
    the next call reconnects (the error itself propagates to the caller).

    Blocking on purpose: callers run it in a worker thread, because turning a million
    rows into Python objects would otherwise hold the event loop for seconds. Calls must
    not overlap (the caller serialises them).
    """

    def __init__(self, dsn: str, commit_lag: timedelta = COMMIT_LAG):
        self.dsn = dsn
        self.commit_lag = commit_lag
        self._conn: psycopg.Connection | None = None

    def _read(self, query: str, params: tuple = ()) -> CatalogRead:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
            with self._conn.cursor() as cursor:
                # Taken before the read's own snapshot: every row committed by then is in it.
                stamp = cursor.execute("SELECT statement_timestamp()").fetchone()
                assert stamp is not None  # a SELECT without FROM returns its one row
                read_at = stamp[0]
                cursor.execute(query, params)
                rows = cursor.fetchall()
        except psycopg.Error:
            self.close()
            raise
        return CatalogRead([CatalogRow(row[0], tuple(row[1]), tuple(row[2]), row[3], row[4]) for row in rows], read_at)

    def all_items(self) -> CatalogRead:
        """Every item of the catalog."""
        return self._read("SELECT item_id, categories, tags, available, updated_at FROM items")

    def changed_since(self, previous_read_at: datetime) -> CatalogRead:
        """Items inserted or updated since the read that began at `previous_read_at`
        (reaching back the commit lag)."""
        return self._read(
            "SELECT item_id, categories, tags, available, updated_at FROM items WHERE updated_at > %s",
            (previous_read_at - self.commit_lag,),
        )

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

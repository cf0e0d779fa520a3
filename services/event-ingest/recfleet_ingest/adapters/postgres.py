"""Postgres side of events: the idempotent batch sink, the erased-users list, erasure.

Idempotency is by event id through the `event_ids` table (a unique key on the partitioned
`events` table would have to include the timestamp). Erasure and the sink serialise on
`erased_users`: a sink batch holds a SHARE lock on it, so an erasure waits for an
in-flight batch and then deletes its rows too, and every later batch sees the erasure.
The list holds keyed hashes of user ids (recfleet_store.suppression), computed here in
Python: the sink stages each event with its user's hash, and SQL compares hashes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool
from recfleet_store import suppression

from ..validation import Event

SINK_APPLICATION_NAME = "recfleet-ingest-sink"

_CREATE_INCOMING = """
CREATE TEMP TABLE incoming (
    event_id uuid NOT NULL, user_id text NOT NULL, user_hash text NOT NULL, item_id text NOT NULL,
    type text NOT NULL, value double precision, ts timestamptz NOT NULL, context jsonb NOT NULL
) ON COMMIT DELETE ROWS
"""

# A staged event whose user is on the list: by hash, or by the plain id of a row from
# before migration 013 that `recfleet-jobs rehash-suppression` has not hashed yet.
_ERASED = """(
    EXISTS (SELECT 1 FROM erased_users e WHERE e.user_hash = t.user_hash)
    OR EXISTS (SELECT 1 FROM erased_users e WHERE e.user_id = t.user_id)
)"""

_STORE_NEW = f"""
WITH fresh AS (
    INSERT INTO event_ids (event_id, user_id)
    SELECT DISTINCT ON (t.event_id) t.event_id, t.user_id FROM incoming t
    WHERE NOT {_ERASED}
    ORDER BY t.event_id
    ON CONFLICT DO NOTHING
    RETURNING event_id
), stored AS (
    INSERT INTO events (event_id, user_id, item_id, type, value, ts, context)
    SELECT DISTINCT ON (t.event_id) t.event_id, t.user_id, t.item_id, t.type, t.value, t.ts, t.context
    FROM incoming t JOIN fresh USING (event_id)
    ORDER BY t.event_id
    RETURNING 1
)
SELECT (SELECT count(*) FROM stored), (SELECT count(*) FROM incoming t WHERE {_ERASED})
"""


@dataclass(frozen=True)
class SinkOutcome:
    """What one batch did: events stored now, duplicates absorbed, events of erased users dropped."""

    stored: int
    duplicate: int
    erased: int


class EventSink:
    """Writes batches of events to Postgres in one transaction each (blocking, one connection)."""

    def __init__(self, dsn: str, hash_key: str, connect_timeout: int = 3):
        self.dsn = dsn
        self.hash_key = hash_key
        self.connect_timeout = connect_timeout
        self._conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(
                self.dsn, connect_timeout=self.connect_timeout, application_name=SINK_APPLICATION_NAME
            )
            # One staging table per connection, emptied at every commit: no catalog churn per batch.
            try:
                with conn.transaction():
                    conn.execute(_CREATE_INCOMING)
            except psycopg.Error:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def write(self, events: Sequence[Event]) -> SinkOutcome:
        """COPY into a temp table, keep the ids not seen before, insert only those events.

        Raises psycopg.OperationalError when Postgres is unreachable (the caller retries);
        the connection is dropped so the next attempt reconnects.
        """
        if not events:
            return SinkOutcome(0, 0, 0)
        hashes = {user: suppression.user_hash(self.hash_key, user) for user in {e.user_id for e in events}}
        try:
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("LOCK TABLE erased_users IN SHARE MODE")
                with cur.copy(
                    "COPY incoming (event_id, user_id, user_hash, item_id, type, value, ts, context) FROM STDIN"
                ) as copy:
                    for e in events:
                        copy.write_row(
                            (
                                e.event_id,
                                e.user_id,
                                hashes[e.user_id],
                                e.item_id,
                                e.type,
                                e.value,
                                e.timestamp,
                                orjson.dumps(e.context).decode(),
                            )
                        )
                counts = cur.execute(_STORE_NEW).fetchone()
                assert counts is not None  # a SELECT of two scalar subqueries: one row
                stored, erased = counts
        except psycopg.OperationalError:
            self.close()
            raise
        return SinkOutcome(stored=stored, duplicate=len(events) - stored - erased, erased=erased)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


def load_erased_users(dsn: str, hash_key: str) -> set[str]:
    """Blocking read of the whole list, as hashes (the consumers' refresh)."""
    with psycopg.connect(dsn, connect_timeout=3) as conn:
        return set(suppression.load(conn, hash_key).hashes)


class ErasureStore:
    """The API's Postgres access: the erased-users list and erasure itself."""

    def __init__(self, pool: AsyncConnectionPool, hash_key: str):
        self.pool = pool
        self.hash_key = hash_key

    async def erased_users(self) -> set[str]:
        """The whole list, as hashes."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(suppression.ROWS_SQL)
            return suppression.hashes_of(self.hash_key, await cur.fetchall())

    async def erase(self, user_id: str, receipt_id: str) -> int:
        """Put the user on the list (first, so later events are dropped; by hash only),
        then delete the user's events and event ids; returns the number of events removed."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO erased_users (user_hash, receipt_id) VALUES (%s, %s) ON CONFLICT (user_hash) DO NOTHING",
                (suppression.user_hash(self.hash_key, user_id), receipt_id),
            )
            removed = await conn.execute("DELETE FROM events WHERE user_id = %s", (user_id,))
            await conn.execute("DELETE FROM event_ids WHERE user_id = %s", (user_id,))
            return removed.rowcount

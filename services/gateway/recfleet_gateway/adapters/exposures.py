"""The `exposures` table, written in batches: the exposure log the recommendation path
feeds.

Exposures never cost a response its latency: `ExposureLog.record` appends to a buffer in
memory, and a background task writes the buffer with COPY every `flush_seconds` (and once
more on shutdown). If Postgres is away the buffer keeps the newest `buffer_limit`
exposures and counts the ones it drops.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import psycopg
from prometheus_client import Counter
from psycopg_pool import AsyncConnectionPool
from recfleet_runtime.logging import get_logger
from recfleet_store import suppression

log = get_logger("recfleet.gateway.exposures")
EXPOSURES = Counter(
    "recfleet_gateway_exposures_total",
    "Experiment exposures, by outcome (written to Postgres, or dropped when the buffer overflowed).",
    ["outcome"],
)
# Event types that count as a click for the readout.


class ExposureLog:
    """Buffers exposures in memory and writes them to Postgres in batches."""

    def __init__(self, pool: AsyncConnectionPool, flush_seconds: float, buffer_limit: int, erasure_hash_key: str):
        self.pool = pool
        self.flush_seconds = flush_seconds
        self.buffer_limit = buffer_limit
        self._erasure_hash_key = erasure_hash_key
        self._buffer: list[tuple] = []
        self._lock = asyncio.Lock()

    def record(self, request_id: str, experiment: str, variant: str, user_id: str, item_ids: list[str]) -> None:
        """Never waits: the row goes to the buffer."""
        self._buffer.append((request_id, experiment, variant, user_id, item_ids, datetime.now(UTC)))
        overflow = len(self._buffer) - self.buffer_limit
        if overflow > 0:
            del self._buffer[:overflow]
            EXPOSURES.labels("dropped").inc(overflow)

    async def erase_user(self, user_id: str) -> int:
        """Erasure: the user's exposures, buffered and written; returns how many went.
        Under the flush lock, so that a batch being written cannot bring them back."""
        async with self._lock:
            kept = [row for row in self._buffer if row[3] != user_id]
            removed = len(self._buffer) - len(kept)
            self._buffer[:] = kept
            async with self.pool.connection() as conn:
                cur = await conn.execute("DELETE FROM exposures WHERE user_id = %s", (user_id,))
                return removed + cur.rowcount

    @property
    def pending(self) -> int:
        return len(self._buffer)

    async def flush(self) -> int:
        """Write what is buffered; on failure the rows go back to the buffer."""
        async with self._lock:
            rows, self._buffer = self._buffer, []
            if not rows:
                return 0
            try:
                rows = await self._without_erased(rows)
                async with (
                    self.pool.connection() as conn,
                    conn.cursor() as cur,
                    cur.copy(
                        "COPY exposures (request_id, experiment, variant, user_id, item_ids, created_at) FROM STDIN"
                    ) as copy,
                ):
                    for row in rows:
                        await copy.write_row(row)
            except (psycopg.Error, OSError) as error:
                log.warning("exposures not written; kept for the next flush", error=str(error), rows=len(rows))
                self._buffer[:0] = rows
                overflow = len(self._buffer) - self.buffer_limit
                if overflow > 0:
                    del self._buffer[:overflow]
                    EXPOSURES.labels("dropped").inc(overflow)
                return 0
            EXPOSURES.labels("written").inc(len(rows))
            return len(rows)

    async def _without_erased(self, rows: list[tuple]) -> list[tuple]:
        """Users erased on any replica since these rows were buffered stay erased. The list
        holds keyed hashes: the buffered users' hashes are computed here and looked up."""
        users = sorted({row[3] for row in rows})
        async with self.pool.connection() as conn:
            cur = await conn.execute(suppression.AMONG_SQL, suppression.among_params(self._erasure_hash_key, users))
            erased = {user for (user,) in await cur.fetchall()}
        return [row for row in rows if row[3] not in erased] if erased else rows

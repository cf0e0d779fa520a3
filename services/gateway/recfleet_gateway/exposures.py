"""Experiments in Postgres: definitions, the exposure log the recommendation path feeds,
and the attribution query behind the readout.

Exposures never cost a response its latency: `ExposureLog.record` appends to a buffer in
memory, and a background task writes the buffer with COPY every `flush_seconds` (and once
more on shutdown). If Postgres is away the buffer keeps the newest `buffer_limit`
exposures and counts the ones it drops.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import orjson
import psycopg
from prometheus_client import Counter
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from recfleet_runtime.logging import get_logger

from .experiments import Assignment, ExperimentSpec, VariantSpec, assignment, choose, overlaps

log = get_logger("recfleet.gateway.exposures")
EXPOSURES = Counter(
    "recfleet_gateway_exposures_total",
    "Experiment exposures, by outcome (written to Postgres, or dropped when the buffer overflowed).",
    ["outcome"],
)
# Event types that count as a click for the readout.
CLICK_TYPES = ["click", "add_to_cart", "purchase", "like", "watch"]
# One creation at a time across replicas, so two overlapping experiments cannot both start.
_CREATE_LOCK = 0x7265_6366_6578_70  # "recfexp"


class ExperimentConflict(Exception):
    """The name is taken, or a running experiment already claims the surface."""


def _spec(row: dict) -> ExperimentSpec:
    variants = tuple(
        VariantSpec(v["name"], float(v["share"]), v.get("ranker_version", "serving")) for v in row["variants"]
    )
    return ExperimentSpec(row["name"], row["salt"], variants, row["surface"])


def _out(row: dict) -> dict:
    return {
        "name": row["name"],
        "salt": row["salt"],
        "surface": row["surface"],
        "status": row["status"],
        "variants": row["variants"],
        "created_at": row["created_at"],
        "stopped_at": row["stopped_at"],
    }


class ExperimentStore:
    """The `experiments` and `exposures` tables."""

    def __init__(self, pool: AsyncConnectionPool):
        self.pool = pool

    async def create(self, spec: ExperimentSpec) -> dict:
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CREATE_LOCK,))
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT name, surface FROM experiments WHERE name = %s OR status = 'running'", (spec.name,)
            )
            for row in await cur.fetchall():
                if row["name"] == spec.name:
                    raise ExperimentConflict(f"an experiment named {spec.name!r} already exists")
                if overlaps(spec.surface, row["surface"]):
                    claimed = "every surface" if row["surface"] is None else f"surface {row['surface']!r}"
                    raise ExperimentConflict(
                        f"experiment {row['name']!r} is already running on {claimed};"
                        " stop it first (at most one running experiment per surface)"
                    )
            await cur.execute(
                "INSERT INTO experiments (name, salt, variants, surface, status) VALUES (%s, %s, %s, %s, 'running')"
                " RETURNING *",
                (spec.name, spec.salt, orjson.dumps([v.as_dict() for v in spec.variants]).decode(), spec.surface),
            )
            return _out(await cur.fetchone())

    async def list(self) -> list[dict]:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute("SELECT * FROM experiments ORDER BY created_at DESC, name")
            return [_out(row) for row in await cur.fetchall()]

    async def get(self, name: str) -> tuple[ExperimentSpec, dict] | None:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute("SELECT * FROM experiments WHERE name = %s", (name,))
            row = await cur.fetchone()
        return None if row is None else (_spec(row), _out(row))

    async def stop(self, name: str) -> dict | None:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "UPDATE experiments SET status = 'stopped', stopped_at = coalesce(stopped_at, now())"
                " WHERE name = %s RETURNING *",
                (name,),
            )
            row = await cur.fetchone()
        return None if row is None else _out(row)

    async def running(self) -> list[ExperimentSpec]:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute("SELECT * FROM experiments WHERE status = 'running' ORDER BY created_at, name")
            return [_spec(row) for row in await cur.fetchall()]

    async def counts(self, name: str) -> dict[str, tuple[int, int]]:
        """variant -> (exposures, clicks): an exposure is clicked when an event of a
        click-like type names its request id in `context.request_id` and one of its items."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                """
                SELECT x.variant, count(*),
                       count(*) FILTER (WHERE EXISTS (
                           SELECT 1 FROM events e
                           WHERE e.context ? 'request_id' AND e.context->>'request_id' = x.request_id
                             AND e.item_id = ANY (x.item_ids) AND e.type = ANY (%s)))
                FROM exposures x WHERE x.experiment = %s GROUP BY x.variant
                """,
                (CLICK_TYPES, name),
            )
            return {variant: (int(n), int(clicks)) for variant, n, clicks in await cur.fetchall()}


class ExposureLog:
    """Buffers exposures in memory and writes them to Postgres in batches."""

    def __init__(self, pool: AsyncConnectionPool, flush_seconds: float, buffer_limit: int):
        self.pool = pool
        self.flush_seconds = flush_seconds
        self.buffer_limit = buffer_limit
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
        """Users erased on any replica since these rows were buffered stay erased."""
        users = sorted({row[3] for row in rows})
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT user_id FROM erased_users WHERE user_id = ANY (%s)", (users,))
            erased = {user for (user,) in await cur.fetchall()}
        return [row for row in rows if row[3] not in erased] if erased else rows


class ExperimentBook:
    """The running experiments, re-read every `refresh_seconds` so that every replica
    follows a create or stop; assigns requests and logs their exposures."""

    def __init__(self, store: ExperimentStore, exposures: ExposureLog, refresh_seconds: float):
        self.store = store
        self.exposures = exposures
        self.refresh_seconds = refresh_seconds
        self._running: list[ExperimentSpec] = []
        self._tasks: list[asyncio.Task] = []
        self.refreshed_at = 0.0

    async def refresh(self) -> None:
        try:
            self._running = await self.store.running()
            self.refreshed_at = time.monotonic()
        except (psycopg.Error, OSError) as error:
            # Keep serving the experiments known so far rather than none.
            log.warning("running experiments not re-read", error=str(error))

    def assign(self, user_id: str, surface: str) -> Assignment | None:
        spec = choose(self._running, surface)
        return None if spec is None else assignment(spec, user_id)

    def expose(self, response: dict) -> None:
        """Log a recommendation response served under an experiment (`experiment` set)."""
        chosen = response.get("experiment")
        if chosen:
            items = [item["item_id"] for item in response["items"]]
            self.exposures.record(response["request_id"], chosen["name"], chosen["variant"], response["user_id"], items)

    async def _every(self, seconds: float, work) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await work()
            except Exception as error:  # noqa: BLE001 - a background loop must outlive one failure
                log.warning("experiment background work failed", error=str(error))

    async def start(self) -> None:
        await self.refresh()
        self._tasks = [
            asyncio.create_task(self._every(self.refresh_seconds, self.refresh)),
            asyncio.create_task(self._every(self.exposures.flush_seconds, self.exposures.flush)),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.exposures.flush()

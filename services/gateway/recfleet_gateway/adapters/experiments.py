"""The `experiments` table (definitions) and the attribution query over `exposures` and
`events` behind the readout."""

from __future__ import annotations

import builtins

import orjson
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from ..experiments import ExperimentSpec, VariantSpec, overlaps

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
            created = await cur.fetchone()
            assert created is not None
            return _out(created)

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

    async def running(self) -> builtins.list[ExperimentSpec]:
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

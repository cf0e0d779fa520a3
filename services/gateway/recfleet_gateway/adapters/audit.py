"""The `audit_log` table: one row per admin action that succeeded."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

AUDIT_COLUMNS = "audit_id, created_at, key_id, key_name, request_id, action, target, before, after"


@dataclass(frozen=True)
class AuditRecord:
    """An action to record: who (key id and name), under which request, what, on what,
    and the state it changed."""

    key_id: str
    key_name: str
    request_id: str | None
    action: str
    target: str
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


class AuditTable:
    def __init__(self, pool: AsyncConnectionPool):
        self._pool = pool

    async def insert(self, record: AuditRecord, wait_seconds: float) -> int:
        """The new entry's audit id; waits at most `wait_seconds` for a connection."""
        async with self._pool.connection(timeout=wait_seconds) as conn:
            cur = await conn.execute(
                "INSERT INTO audit_log (key_id, key_name, request_id, action, target, before, after)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING audit_id",
                (
                    record.key_id,
                    record.key_name,
                    record.request_id,
                    record.action,
                    record.target,
                    _json(record.before),
                    _json(record.after),
                ),
            )
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def list(
        self,
        *,
        limit: int,
        action: str | None = None,
        key_id: str | None = None,
        since: datetime | None = None,
        before: int | None = None,
    ) -> list[dict[str, Any]]:
        """Entries newest first, those matching every filter given; `before` pages on:
        only entries older than that audit id."""
        conditions, params = [], []
        for column, operator, value in (
            ("action", "=", action),
            ("key_id", "=", key_id),
            ("created_at", ">=", since),
            ("audit_id", "<", before),
        ):
            if value is not None:
                conditions.append(f"{column} {operator} %s")
                params.append(value)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {AUDIT_COLUMNS} FROM audit_log{where} ORDER BY audit_id DESC LIMIT %s",
                [*params, limit],
            )
            return list(await cur.fetchall())


def _json(state: dict[str, Any] | None) -> Jsonb | None:
    # orjson: states hold datetimes, written as RFC 3339 like the API's answers.
    return None if state is None else Jsonb(state, dumps=lambda value: orjson.dumps(value).decode())

"""The `api_keys` table: one row per key, its secret stored only as a hash."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg_pool import AsyncConnectionPool


@dataclass(frozen=True)
class ApiKeyRecord:
    key_id: str
    name: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class ActiveKey:
    """An unrevoked key, as verification needs it."""

    key_id: str
    name: str
    scopes: list[str]


class ApiKeyTable:
    def __init__(self, pool: AsyncConnectionPool):
        self._pool = pool

    async def find_active(self, key_hash: str, wait_seconds: float) -> ActiveKey | None:
        """The unrevoked key with this hash; waits at most `wait_seconds` for a connection."""
        async with self._pool.connection(timeout=wait_seconds) as conn:
            cur = await conn.execute(
                "SELECT key_id, name, scopes FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL", (key_hash,)
            )
            row = await cur.fetchone()
        return ActiveKey(*row) if row else None

    async def insert(self, key_id: str, name: str, key_hash: str, scopes: list[str]) -> ApiKeyRecord:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO api_keys (key_id, name, key_hash, scopes) VALUES (%s, %s, %s, %s)"
                " RETURNING key_id, name, scopes, created_at, revoked_at",
                (key_id, name, key_hash, scopes),
            )
            row = await cur.fetchone()
        assert row is not None
        return ApiKeyRecord(*row)

    async def list(self) -> list[ApiKeyRecord]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT key_id, name, scopes, created_at, revoked_at FROM api_keys ORDER BY created_at, key_id"
            )
            return [ApiKeyRecord(*row) for row in await cur.fetchall()]

    async def revoke(self, key_id: str) -> tuple[ApiKeyRecord, str] | None:
        """(the key as revoked, its hash); None when there is no such key. Revoking twice
        keeps the first time."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = %s"
                " RETURNING key_id, name, scopes, created_at, revoked_at, key_hash",
                (key_id,),
            )
            row = await cur.fetchone()
        return None if row is None else (ApiKeyRecord(*row[:5]), row[5])

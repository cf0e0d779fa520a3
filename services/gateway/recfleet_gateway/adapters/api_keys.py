"""The `api_keys` table: one row per key, its secret stored only as a hash; and
`bootstrap_key_disabled`, whose one row turns the environment's bootstrap key off."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

_RECORD = "key_id, name, scopes, created_at, revoked_at, expires_at, rotated_to"
# An admin key that still lets someone in: neither revoked nor expired.
_USABLE_ADMIN = "revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()) AND 'admin' = ANY (scopes)"


@dataclass(frozen=True)
class ApiKeyRecord:
    key_id: str
    name: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None
    rotated_to: str | None


@dataclass(frozen=True)
class ActiveKey:
    """An unrevoked key, as verification needs it (expired or not)."""

    key_id: str
    name: str
    scopes: list[str]
    expires_at: datetime | None


@dataclass(frozen=True)
class Rotation:
    """A rotated key as it is now (expiring, naming its successor) and the successor."""

    previous: ApiKeyRecord
    previous_hash: str
    before: ApiKeyRecord
    created: ApiKeyRecord


@dataclass(frozen=True)
class BootstrapState:
    disabled: bool
    disabled_at: datetime | None = None
    disabled_by: str | None = None


class KeyConflict(Exception):
    """The key (or the bootstrap key) cannot change that way now."""


class ApiKeyTable:
    def __init__(self, pool: AsyncConnectionPool):
        self._pool = pool

    async def find_active(self, key_hash: str, wait_seconds: float) -> ActiveKey | None:
        """The unrevoked key with this hash; waits at most `wait_seconds` for a connection."""
        async with self._pool.connection(timeout=wait_seconds) as conn:
            cur = await conn.execute(
                "SELECT key_id, name, scopes, expires_at FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL",
                (key_hash,),
            )
            row = await cur.fetchone()
        return ActiveKey(*row) if row else None

    async def insert(
        self, key_id: str, name: str, key_hash: str, scopes: list[str], expires_at: datetime | None = None
    ) -> ApiKeyRecord:
        async with self._pool.connection() as conn:
            return await _insert(conn, key_id, name, key_hash, scopes, expires_at)

    async def list(self) -> list[ApiKeyRecord]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(f"SELECT {_RECORD} FROM api_keys ORDER BY created_at, key_id")
            return [ApiKeyRecord(*row) for row in await cur.fetchall()]

    async def revoke(self, key_id: str) -> tuple[ApiKeyRecord, ApiKeyRecord, str] | None:
        """(the key before, the key as revoked, its hash); None when there is no such key.
        Revoking twice keeps the first time. KeyConflict when the bootstrap key is disabled
        and this is the last admin key that still lets someone in."""
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                f"SELECT {_RECORD}, key_hash, {_USABLE_ADMIN} FROM api_keys WHERE key_id = %s FOR UPDATE", (key_id,)
            )
            row = await cur.fetchone()
            if row is None:
                return None
            before, key_hash, usable_admin = ApiKeyRecord(*row[:7]), row[7], row[8]
            if usable_admin and await _bootstrap_disabled(conn) and not await _other_admin_key(conn, key_id):
                raise KeyConflict(
                    f"{key_id} is the last usable admin key and the bootstrap key is disabled:"
                    " create another admin key (or enable the bootstrap key) first"
                )
            cur = await conn.execute(
                f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = %s RETURNING {_RECORD}",
                (key_id,),
            )
            after = await cur.fetchone()
        assert after is not None
        return before, ApiKeyRecord(*after), key_hash

    async def rotate(
        self, key_id: str, new_key_id: str, new_hash: str, overlap_seconds: int, new_expires_at: datetime | None
    ) -> Rotation | None:
        """A new key with the old one's name and scopes; the old one expires after
        `overlap_seconds` (or earlier, when it already would). None when there is no such
        key; KeyConflict when it is revoked, expired or already rotated."""
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                f"SELECT {_RECORD}, key_hash, expires_at <= now() FROM api_keys WHERE key_id = %s FOR UPDATE",
                (key_id,),
            )
            row = await cur.fetchone()
            if row is None:
                return None
            before, key_hash, expired = ApiKeyRecord(*row[:7]), row[7], row[8]
            if before.revoked_at is not None:
                raise KeyConflict(f"{key_id} is revoked")
            if expired:
                raise KeyConflict(f"{key_id} has expired")
            if before.rotated_to is not None:
                raise KeyConflict(f"{key_id} was already rotated to {before.rotated_to}; rotate that key instead")
            created = await _insert(conn, new_key_id, before.name, new_hash, before.scopes, new_expires_at)
            cur = await conn.execute(
                "UPDATE api_keys SET expires_at = least(expires_at, now() + make_interval(secs => %s)),"
                f" rotated_to = %s WHERE key_id = %s RETURNING {_RECORD}",
                (overlap_seconds, new_key_id, key_id),
            )
            previous = await cur.fetchone()
        assert previous is not None
        return Rotation(ApiKeyRecord(*previous), key_hash, before, created)

    async def bootstrap_state(self, wait_seconds: float | None = None) -> BootstrapState:
        async with self._pool.connection(timeout=wait_seconds) as conn:
            return await _bootstrap_state(conn)

    async def disable_bootstrap(self, actor: str) -> tuple[BootstrapState, BootstrapState]:
        """(state before, state now). KeyConflict unless another admin key lets someone in."""
        async with self._pool.connection() as conn, conn.transaction():
            before = await _bootstrap_state(conn, lock=True)
            if before.disabled:
                return before, before
            if not await _other_admin_key(conn, None):
                raise KeyConflict(
                    "no API key with the admin scope is usable (unrevoked, unexpired): create one before"
                    " disabling the bootstrap key, or nobody could administer the fleet"
                )
            await conn.execute("INSERT INTO bootstrap_key_disabled (disabled_by) VALUES (%s)", (actor,))
            return before, await _bootstrap_state(conn)

    async def enable_bootstrap(self) -> tuple[BootstrapState, BootstrapState]:
        async with self._pool.connection() as conn, conn.transaction():
            before = await _bootstrap_state(conn, lock=True)
            await conn.execute("DELETE FROM bootstrap_key_disabled")
            return before, BootstrapState(False)


async def _insert(
    conn: AsyncConnection, key_id: str, name: str, key_hash: str, scopes: list[str], expires_at: datetime | None
) -> ApiKeyRecord:
    cur = await conn.execute(
        "INSERT INTO api_keys (key_id, name, key_hash, scopes, expires_at) VALUES (%s, %s, %s, %s, %s)"
        f" RETURNING {_RECORD}",
        (key_id, name, key_hash, scopes, expires_at),
    )
    row = await cur.fetchone()
    assert row is not None
    return ApiKeyRecord(*row)


async def _bootstrap_state(conn: AsyncConnection, lock: bool = False) -> BootstrapState:
    if lock:
        # Disabling and enabling take turns, so a check and its change see the same state.
        await conn.execute("LOCK TABLE bootstrap_key_disabled IN SHARE ROW EXCLUSIVE MODE")
    cur = await conn.execute("SELECT disabled_at, disabled_by FROM bootstrap_key_disabled")
    row = await cur.fetchone()
    return BootstrapState(False) if row is None else BootstrapState(True, row[0], row[1])


async def _bootstrap_disabled(conn: AsyncConnection) -> bool:
    return (await _bootstrap_state(conn, lock=True)).disabled


async def _other_admin_key(conn: AsyncConnection, key_id: str | None) -> bool:
    cur = await conn.execute(
        f"SELECT EXISTS (SELECT 1 FROM api_keys WHERE {_USABLE_ADMIN} AND key_id IS DISTINCT FROM %s)", (key_id,)
    )
    row = await cur.fetchone()
    return bool(row and row[0])

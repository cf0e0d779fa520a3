"""The serving ALS version, read from the Postgres registry."""

from __future__ import annotations

import psycopg
import structlog
from recfleet_store.registry import serving_version_async

log = structlog.get_logger("recfleet.candidates")


class RegistryReader:
    """One lazily (re)opened connection; a failed read returns None and reconnects next time."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self._conn: psycopg.AsyncConnection | None = None

    async def serving_version(self) -> str | None:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, connect_timeout=5)
            return await serving_version_async(self._conn, "als")
        except psycopg.Error as error:
            log.warning("registry read failed", error=str(error))
            await self.close()
            return None

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

"""The model registry (`recfleet_store.registry`: Postgres `model_versions`, and the
serving keys in Redis) through sync psycopg, run in a worker thread."""

from __future__ import annotations

import asyncio

import psycopg
import redis
from recfleet_store import registry


def _version_out(row: dict) -> dict:
    return {
        key: row.get(key)
        for key in ("version", "kind", "status", "artifact_uri", "metrics", "created_at", "promoted_at")
    }


class Registry:
    def __init__(self, dsn: str, redis_url: str):
        self._dsn = dsn
        self._redis_url = redis_url

    def _list(self) -> dict:
        with psycopg.connect(self._dsn) as conn:
            versions = registry.list_versions(conn)
            serving = {kind: registry.serving_version(conn, kind) for kind in registry.KINDS}
        return {"serving": serving, "versions": [_version_out(v) for v in versions]}

    def _change(self, kind: str, version: str | None) -> dict:
        client = redis.Redis.from_url(self._redis_url)
        try:
            with psycopg.connect(self._dsn) as conn:
                if version is None:
                    before = registry.serving_version(conn, kind)
                    now = registry.rollback(conn, kind, redis_client=client)
                    return {"kind": kind, "serving": now, "previous": before}
                if registry.get_version(conn, version) is None:
                    raise LookupError(f"unknown {kind} version {version!r}")
                previous = registry.promote(conn, kind, version, redis_client=client)
                return {"kind": kind, "serving": version, "previous": previous}
        finally:
            client.close()

    async def list(self) -> dict:
        """The serving version of each kind and every registered version."""
        return await asyncio.to_thread(self._list)

    async def change(self, kind: str, version: str | None) -> dict:
        """Serve `version` of `kind` (None: the previously serving one again). LookupError
        for an unknown version, ValueError when the registry refuses the change."""
        return await asyncio.to_thread(self._change, kind, version)

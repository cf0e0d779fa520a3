"""The model registry (`recfleet_store.registry`: Postgres `model_versions`, and the
serving keys in Redis) through sync psycopg, run in a worker thread. Promotion passes the
registry's gates (`registry.refusals`) for this gateway's fleet."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import redis
from recfleet_store import registry


def _version_out(row: dict[str, Any], serving: dict[str, Any] | None, gates: registry.PromotionGates) -> dict:
    out = {
        key: row.get(key)
        for key in ("version", "kind", "status", "artifact_uri", "metrics", "created_at", "promoted_at")
    }
    return {**out, "index": registry.built_index(row), "refusals": registry.refusals(row, serving, gates)}


class Registry:
    def __init__(self, dsn: str, redis_url: str, gates: registry.PromotionGates):
        self._dsn = dsn
        self._redis_url = redis_url
        self._gates = gates

    def _list(self) -> dict:
        with psycopg.connect(self._dsn) as conn:
            versions = registry.list_versions(conn)
        serving = {row["kind"]: row for row in versions if row["status"] == "serving"}
        return {
            "serving": {kind: serving[kind]["version"] if kind in serving else None for kind in registry.KINDS},
            "versions": [_version_out(v, serving.get(v["kind"]), self._gates) for v in versions],
        }

    def _change(self, kind: str, version: str | None, force: bool) -> dict:
        client = redis.Redis.from_url(self._redis_url)
        try:
            with psycopg.connect(self._dsn) as conn:
                if version is None:
                    before = registry.serving_version(conn, kind)
                    now = registry.rollback(conn, kind, redis_client=client)
                    return {"kind": kind, "serving": now, "previous": before, "forced": False, "overridden": []}
                if registry.get_version(conn, version) is None:
                    raise LookupError(f"unknown {kind} version {version!r}")
                done = registry.promote_gated(conn, kind, version, self._gates, redis_client=client, force=force)
                return {
                    "kind": kind,
                    "serving": version,
                    "previous": done.previous,
                    "forced": done.forced,
                    "overridden": list(done.overridden),
                }
        finally:
            client.close()

    async def list(self) -> dict:
        """The serving version of each kind and every registered version, with the index
        built for it and why promoting it now would be refused."""
        return await asyncio.to_thread(self._list)

    async def change(self, kind: str, version: str | None, force: bool = False) -> dict:
        """Serve `version` of `kind` (None: the previously serving one again). LookupError
        for an unknown version, `registry.PromotionRefused` when the gates refuse it (and
        not `force`), ValueError when the registry refuses the change otherwise."""
        return await asyncio.to_thread(self._change, kind, version, force)

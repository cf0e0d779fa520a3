"""Canary traffic state shared by every gateway replica.

Weights come from three places, in this precedence: the admin API (written here, in
Redis, which every replica polls), the routing file the chart renders from its values
(a ConfigMap, re-read when it changes), and the defaults in settings. A service that was
rolled back is frozen at weight 0 until an operator acknowledges.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

KEY_PREFIX = "rf:traffic:"
# Set of the services the admin API has state for, so a refresh reads exactly those.
SERVICES_KEY = "rf:traffic-services"


class TrafficFrozen(RuntimeError):
    """The service was rolled back; raising its weight needs an acknowledgement first."""


@dataclass(frozen=True)
class TrafficState:
    service: str
    weight: int = 0
    shadow_percent: int = 0
    source: str = "default"
    frozen: bool = False
    reason: str = ""
    updated_at: float = 0.0
    updated_by: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def validate_percent(name: str, value: int) -> int:
    if not isinstance(value, int) or not 0 <= value <= 100:
        raise ValueError(f"{name} must be an integer within 0..100, not {value!r}")
    return value


def read_routing_file(path: str) -> dict[str, dict[str, Any]]:
    """The chart's routing ConfigMap: {"ranking": {"weight": 10, "shadow_percent": 0}, ...}."""
    if not path or not os.path.isfile(path):
        return {}
    with open(path) as handle:
        data = json.load(handle)
    services = data.get("services", data)
    return {name: dict(spec) for name, spec in services.items() if isinstance(spec, dict)}


class TrafficStore:
    def __init__(self, redis: Redis):
        self.redis = redis

    async def overrides(self) -> dict[str, dict[str, Any]]:
        """Every service the admin API set, with its stored fields, in one round trip."""
        names = sorted(n.decode() if isinstance(n, bytes) else n for n in await self.redis.smembers(SERVICES_KEY))
        if not names:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(KEY_PREFIX + name)
            rows = await pipe.execute()
        return {
            name: {
                (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                for k, v in raw.items()
            }
            for name, raw in zip(names, rows, strict=True)
            if raw
        }

    async def _write(self, service: str, fields: dict[FieldT, EncodableT]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(KEY_PREFIX + service, mapping=fields)
            pipe.sadd(SERVICES_KEY, service)
            await pipe.execute()

    async def set(self, service: str, weight: int, shadow_percent: int, actor: str) -> TrafficState:
        validate_percent("weight", weight)
        validate_percent("shadow_percent", shadow_percent)
        current = await self.redis.hgetall(KEY_PREFIX + service)
        if current.get(b"frozen") == b"1" and weight > 0:
            reason = current.get(b"reason", b"")
            reason = reason.decode() if isinstance(reason, bytes) else reason
            raise TrafficFrozen(f"{service} was rolled back ({reason}); acknowledge before raising its weight")
        fields: dict[FieldT, EncodableT] = {
            "weight": weight,
            "shadow_percent": shadow_percent,
            "updated_at": time.time(),
            "updated_by": actor,
        }
        await self._write(service, fields)
        return await self.state(service)

    async def rollback(self, service: str, reason: str, actor: str) -> TrafficState:
        fields: dict[FieldT, EncodableT] = {
            "weight": 0,
            "frozen": 1,
            "reason": reason,
            "updated_at": time.time(),
            "updated_by": actor,
        }
        await self._write(service, fields)
        return await self.state(service)

    async def ack(self, service: str, actor: str) -> TrafficState:
        await self._write(service, {"frozen": 0, "updated_at": time.time(), "updated_by": actor})
        return await self.state(service)

    async def state(self, service: str) -> TrafficState:
        raw = await self.redis.hgetall(KEY_PREFIX + service)
        fields = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
        return state_from(service, fields, "admin")


def state_from(service: str, fields: dict[str, Any], source: str) -> TrafficState:
    return TrafficState(
        service=service,
        weight=int(float(fields.get("weight", 0))),
        shadow_percent=int(float(fields.get("shadow_percent", 0))),
        source=source,
        frozen=str(fields.get("frozen", "0")) in ("1", "true", "True"),
        reason=str(fields.get("reason", "")),
        updated_at=float(fields.get("updated_at", 0) or 0),
        updated_by=str(fields.get("updated_by", "")),
    )


def effective(
    services: list[str],
    admin: dict[str, dict[str, Any]],
    routing_file: dict[str, dict[str, Any]],
    defaults: dict[str, int],
) -> dict[str, TrafficState]:
    """Merge the three sources: admin API > routing file > defaults."""
    result = {}
    for service in services:
        if service in admin:
            result[service] = state_from(service, admin[service], "admin")
        elif service in routing_file:
            result[service] = state_from(service, routing_file[service], "routing-file")
        else:
            result[service] = TrafficState(service, weight=int(defaults.get(service, 0)))
    return result


async def record_event(
    pool: AsyncConnectionPool,
    service: str,
    action: str,
    weight: int | None,
    shadow: int | None,
    reason: str,
    actor: str,
) -> None:
    """Append to the Postgres audit trail (`canary_events`)."""
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO canary_events (service, action, weight, shadow, reason, actor)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (service, action, weight, shadow, reason, actor),
        )


async def recent_events(pool: AsyncConnectionPool, limit: int = 20) -> list[dict[str, Any]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT service, action, weight, shadow, reason, actor, created_at FROM canary_events "
            "ORDER BY id DESC LIMIT %s",
            (limit,),
        )
        columns = [c.name for c in cursor.description or ()]
        return [dict(zip(columns, row, strict=False)) for row in await cursor.fetchall()]

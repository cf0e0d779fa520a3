"""Staged canary rollouts shared by every gateway replica (Redis, beside the traffic state).

One record per service: its latest rollout, running or ended. A change is written only if
the record is still the one the writer read (optimistic, WATCH/MULTI), so that replicas
judging the same stage at once advance it once, and an operator's abort is never
overwritten by a replica's judgement made before it.
"""

from __future__ import annotations

import json
from typing import Any, cast

from recfleet_runtime.rollout import Rollout
from redis.asyncio import Redis
from redis.exceptions import WatchError

KEY_PREFIX = "rf:rollout:"


def _decode(raw: bytes | str | None) -> Rollout | None:
    return None if raw is None else Rollout.from_dict(json.loads(raw))


class RolloutStore:
    def __init__(self, redis: Redis):
        self.redis = redis

    async def get(self, service: str) -> Rollout | None:
        return _decode(await self.redis.get(KEY_PREFIX + service))

    async def all(self, services: list[str]) -> dict[str, Rollout]:
        """The latest rollout of each service that has one, in one round trip."""
        rows = await self.redis.mget([KEY_PREFIX + service for service in services])
        found = {service: _decode(raw) for service, raw in zip(services, rows, strict=True)}
        return {service: rollout for service, rollout in found.items() if rollout is not None}

    async def replace(self, expected: Rollout | None, new: Rollout) -> bool:
        """Write `new` if the stored record is still `expected` (None: there is none);
        False, writing nothing, when another writer got there first."""
        key = KEY_PREFIX + new.service
        # Leaving the block unwatches (the pipeline's reset).
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(key)
                current = _decode(await pipe.get(key))
                if not _same(current, expected):
                    return False
                # redis-py leaves `multi` unannotated.
                cast(Any, pipe).multi()
                pipe.set(key, json.dumps(new.as_dict()))
                await pipe.execute()
            except WatchError:
                return False
        return True


def _same(current: Rollout | None, expected: Rollout | None) -> bool:
    """The same rollout at the same point (readings aside: every replica rewrites them)."""
    if current is None or expected is None:
        return current is expected
    return (current.started_at, current.stage, current.status) == (
        expected.started_at,
        expected.stage,
        expected.status,
    )

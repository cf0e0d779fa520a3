"""Wiring: settings -> stores -> feature service -> gRPC server, plus readiness."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable

import psycopg
import redis
import structlog
from psycopg_pool import PoolTimeout
from recfleet_runtime import tracing
from recfleet_runtime.grpcserver import GrpcService
from recfleet_store.features import registry

from .features import FeatureService
from .servicer import SERVICE_NAME, FeatureStoreServicer, add_to_server
from .settings import FeatureSettings
from .stores import open_offline_store, open_online_store

log = structlog.get_logger("recfleet.features")


class FeatureStoreApp:
    """The feature-store process: a gRPC service that turns SERVING once Redis and Postgres
    both answered, and stays SERVING while Redis (the online store) answers."""

    def __init__(self, settings: FeatureSettings, redis_pool_kwargs: dict | None = None):
        self.settings = settings
        tracing.instrument_redis()
        tracing.instrument_psycopg()
        self.online = open_online_store(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            serving_cache_seconds=settings.serving_version_cache_seconds,
            **(redis_pool_kwargs or {}),
        )
        self.offline = open_offline_store(settings.postgres_dsn, pool_size=settings.postgres_pool_size)
        self.features = FeatureService(
            registry.load(settings.registry_path),
            self.online,
            self.offline,
            max_items_per_read=settings.max_items_per_read,
            item_row_cache_size=settings.item_row_cache_size,
        )
        # A read that cannot reach Redis or Postgres is UNAVAILABLE to the caller.
        unavailable = (redis.ConnectionError, redis.TimeoutError, psycopg.OperationalError, PoolTimeout)
        self.service = GrpcService("feature-store", settings, [SERVICE_NAME], unavailable=unavailable)
        add_to_server(FeatureStoreServicer(self.features), self.service.server)
        self._ready = False

    async def stores_answer(self) -> bool:
        try:
            await asyncio.wait_for(asyncio.gather(self.online.ping(), self.offline.ping()), timeout=2)
            return True
        except (OSError, TimeoutError, redis.RedisError, psycopg.Error) as error:
            log.warning("store check failed", error=repr(error))
            return False

    async def warm_up(self) -> bool:
        """Wait (up to startup_timeout_seconds) until both stores answer, then warm the
        online read paths."""
        await self.offline.open()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.startup_timeout_seconds
        while not await self.stores_answer():
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.5)
        await self.online.warm_up()
        # Everything allocated so far (modules, pools, registry) lives as long as the
        # process: move it out of the collector's sight. Otherwise the first full
        # collection, triggered by the first large read, walks it all and stalls that
        # read by 100 ms or more.
        gc.collect()
        gc.freeze()
        self._ready = True
        return True

    async def watch_stores(self) -> None:
        """After warm-up, report NOT_SERVING while the online store (Redis) stops answering.

        Postgres (the offline store) serves no online read: while it is away the service
        stays SERVING, so reads go on, and only the calls that write or read it (profiles,
        export, erasure) fail with UNAVAILABLE."""
        offline_up = True
        while True:
            await asyncio.sleep(self.settings.store_check_seconds)
            if not self._ready:
                continue
            healthy = await self.online_answers()
            if healthy != self.service.health.serving:
                log.warning("online store changed", serving=healthy)
                await self.service.health.set_serving(healthy)
            if await self.offline_answers() != offline_up:
                offline_up = not offline_up
                log.warning("offline store changed", reachable=offline_up)

    async def online_answers(self) -> bool:
        return await self._answers(self.online.ping(), "online")

    async def offline_answers(self) -> bool:
        return await self._answers(self.offline.ping(), "offline")

    async def _answers(self, ping: Awaitable[object], store: str) -> bool:
        try:
            await asyncio.wait_for(ping, timeout=2)
            return True
        except (OSError, TimeoutError, redis.RedisError, psycopg.Error) as error:
            log.warning("store check failed", store=store, error=repr(error))
            return False

    async def close(self) -> None:
        await self.online.close()
        await self.offline.close()

"""Wiring: settings -> stores -> feature service -> gRPC server, plus readiness."""

from __future__ import annotations

import asyncio
import gc

import psycopg
import redis
import structlog
from recfleet_runtime import tracing
from recfleet_runtime.grpcserver import GrpcService
from recfleet_store.features import registry

from .features import FeatureService
from .servicer import SERVICE_NAME, FeatureStoreServicer, add_to_server
from .settings import FeatureSettings
from .stores import open_offline_store, open_online_store

log = structlog.get_logger("recfleet.features")


class FeatureStoreApp:
    """The feature-store process: a gRPC service that turns SERVING only while Redis and
    Postgres both answer."""

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
        self.service = GrpcService("feature-store", settings, [SERVICE_NAME])
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
        """After warm-up, report NOT_SERVING while a store stops answering."""
        while True:
            await asyncio.sleep(self.settings.store_check_seconds)
            if not self._ready:
                continue
            healthy = await self.stores_answer()
            if healthy != self.service.health.serving:
                log.warning("stores changed", serving=healthy)
                await self.service.health.set_serving(healthy)

    async def close(self) -> None:
        await self.online.close()
        await self.offline.close()

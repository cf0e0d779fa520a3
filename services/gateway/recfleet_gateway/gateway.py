"""`Gateway`: everything the routes use, built once per process at start-up."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, cast

from psycopg_pool import AsyncConnectionPool
from recfleet_runtime.canary import Gates
from recfleet_runtime.rollout import KpiGates, ListWindow, Schedule
from recfleet_store.postgres import open_pool
from recfleet_store.registry import PromotionGates
from recfleet_store.rollouts import RolloutStore
from recfleet_store.traffic import TrafficStore
from redis.asyncio import Redis

from .adapters.api_keys import ApiKeyTable
from .adapters.audit import AuditTable
from .adapters.erasures import ErasureTable
from .adapters.experiments import ExperimentStore
from .adapters.exposures import ExposureLog
from .adapters.jobs import JobTable
from .adapters.model_registry import Registry
from .control.audit import AuditTrail
from .control.jobs import JobRunner
from .control.traffic import TrafficController
from .downstream.fleet import Fleet
from .rest.auth import ApiKeyStore
from .rest.ratelimit import RateLimiter, bounded_pool
from .serving.cache import CursorCodec, ResultCache
from .serving.erasure import ErasureService
from .serving.experiment_book import ExperimentBook
from .serving.recommender import Recommender
from .serving.served_lists import ServedLists
from .settings import GatewaySettings

# A Redis that stops answering must cost a request a fraction of its budget, not hang
# it: the cache and the limits fail open (see serving/cache.py and rest/ratelimit.py).
REDIS_WAIT_SECONDS = 0.25


@dataclass
class Gateway:
    """Everything the routes use, built once per process."""

    settings: GatewaySettings
    fleet: Fleet
    redis: Redis
    pool: AsyncConnectionPool
    keys: ApiKeyStore
    limiter: RateLimiter
    cache: ResultCache
    recommender: Recommender
    erasures: ErasureService
    jobs: JobRunner
    registry: Registry
    traffic: TrafficController
    experiments: ExperimentBook
    audit: AuditTrail
    # The lists served and their clicks, for the KPI gates of staged rollouts.
    served_lists: ServedLists

    @classmethod
    async def open(cls, settings: GatewaySettings) -> Gateway:
        # Each pool serves at most two commands at once per request in flight.
        connections = 2 * ((settings.max_in_flight or 64) + (settings.max_in_flight_writes or 32))
        redis = Redis.from_pool(bounded_pool(settings.redis_url, connections, REDIS_WAIT_SECONDS))
        pool = await open_pool(settings.postgres_dsn, min_size=1, max_size=8)
        fleet = Fleet(settings)
        cache = ResultCache(
            redis, settings.cache_ttl_seconds, max(settings.cursor_ttl_seconds, settings.cache_ttl_seconds)
        )
        limiter = RateLimiter(
            settings.redis_url,
            settings.rate_limit_per_key,
            settings.rate_limit_per_user,
            settings.rate_limits_per_scope,
            timeout_seconds=REDIS_WAIT_SECONDS,
            max_connections=connections,
        )
        default_gates = Gates(
            max_error_rate=settings.canary_max_error_rate,
            max_p99_seconds=settings.canary_max_p99_seconds,
            window_seconds=settings.canary_window_seconds,
            min_requests=settings.canary_min_requests,
        )
        # One window of served lists: the request path writes it, the rollout judges it.
        lists = ListWindow(settings.canary_kpi_window_seconds, settings.canary_kpi_max_lists)
        traffic = TrafficController(
            fleet,
            TrafficStore(redis),
            pool,
            settings.routing_file,
            settings.canary_weights,
            gates={
                service: dataclasses.replace(default_gates, **cast(dict[str, Any], overrides))
                for service, overrides in settings.canary_gates.items()
            },
            default_gates=default_gates,
            refresh_seconds=settings.traffic_refresh_seconds,
            analysis_seconds=settings.canary_analysis_seconds,
            rollouts=RolloutStore(redis),
            lists=lists,
            kpi_gates=KpiGates(
                min_lists=settings.canary_kpi_min_lists,
                max_ctr_drop=settings.canary_kpi_max_ctr_drop,
                max_empty_rate_increase=settings.canary_kpi_max_empty_rate_increase,
                min_coverage_ratio=settings.canary_kpi_min_coverage_ratio,
                alpha=settings.canary_kpi_alpha,
            ),
            schedule=Schedule(tuple(settings.canary_rollout_stages), settings.canary_rollout_hold_seconds),
        )
        await traffic.start()
        experiments = ExperimentBook(
            ExperimentStore(pool),
            ExposureLog(
                pool,
                settings.exposure_flush_seconds,
                settings.exposure_buffer_limit,
                settings.erasure_hash_key.get_secret_value(),
            ),
            settings.experiments_refresh_seconds,
        )
        await experiments.start()
        keys = ApiKeyStore(ApiKeyTable(pool), settings.bootstrap_admin_key, settings.api_key_cache_seconds)
        await keys.prime()
        recommender = Recommender(
            settings, fleet, cache, CursorCodec(settings.cursor_secret), traffic.shadow, experiments
        )
        await recommender.start()
        return cls(
            settings=settings,
            fleet=fleet,
            redis=redis,
            pool=pool,
            keys=keys,
            limiter=limiter,
            cache=cache,
            recommender=recommender,
            erasures=ErasureService(ErasureTable(pool), fleet, cache, limiter, experiments.exposures),
            jobs=JobRunner(JobTable(pool), settings.jobs_command or None, settings.job_output_limit_bytes),
            registry=Registry(
                settings.postgres_dsn,
                settings.redis_url,
                PromotionGates(fleet.candidate_gen.shard_count, settings.promotion_max_regression),
            ),
            traffic=traffic,
            experiments=experiments,
            audit=AuditTrail(AuditTable(pool)),
            served_lists=ServedLists(lists, fleet.router),
        )

    async def close(self) -> None:
        await self.recommender.stop()
        await self.traffic.stop()
        await self.experiments.stop()
        await self.erasures.drain()
        await self.fleet.close()
        await self.pool.close()
        await self.redis.aclose()

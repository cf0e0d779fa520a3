"""`python -m recfleet_ranking`: load settings, build dependencies, serve."""

from __future__ import annotations

from recfleet.ranking.v1 import ranking_pb2, ranking_pb2_grpc
from recfleet_models.ranking.cold_start import ColdStartPolicy
from recfleet_models.ranking.diversity import DiversityPolicy
from recfleet_models.ranking.rules import RuleWeights
from recfleet_runtime.grpcserver import GrpcService, run_service, serve
from recfleet_runtime.logging import configure_logging
from recfleet_runtime.resilience import CircuitBreaker
from recfleet_runtime.tracing import configure_tracing
from recfleet_store.artifacts import open_artifact_store
from recfleet_store.catalog_changes import follow_until_cancelled

from .adapters.feature_store import feature_store_client
from .adapters.models import RankerVersions
from .item_cache import ItemFeatureCache
from .pipeline import RankingPipeline
from .servicer import RankingServicer
from .settings import RankingSettings

SERVICE_NAME = ranking_pb2.DESCRIPTOR.services_by_name["RankingService"].full_name


def build(settings: RankingSettings) -> tuple[GrpcService, RankingServicer]:
    """The server and servicer for these settings (tests start them on port 0)."""
    pipeline = RankingPipeline(
        weights=RuleWeights(
            settings.rule_weight_candidate,
            settings.rule_weight_popularity,
            settings.rule_weight_freshness,
            settings.freshness_half_life_days,
        ),
        diversity=DiversityPolicy(settings.max_per_category, settings.diversity_window, settings.max_creator_share),
        exploration_share=settings.exploration_share,
        model_budget_seconds=settings.model_budget_ms / 1000.0,
        breaker=CircuitBreaker("ranking-model", settings.model_breaker_failures, settings.model_breaker_reset_seconds),
        cold_start=ColdStartPolicy(settings.cold_start_threshold, settings.cold_start_preferred_share),
    )
    versions = RankerVersions(
        open_artifact_store(settings.artifact_url),
        settings.postgres_dsn,
        pinned=settings.ranker_version,
        cache_size=settings.ranker_cache_size,
    )
    servicer = RankingServicer(
        pipeline,
        versions,
        feature_store_client(settings.feature_store_target, settings.feature_store_timeout),
        max_candidates=settings.max_candidates,
        inject_error_rate=settings.inject_error_rate,
        item_cache=ItemFeatureCache(settings.item_cache_seconds, settings.item_cache_max_items),
    )
    service = GrpcService("ranking", settings, [SERVICE_NAME])
    ranking_pb2_grpc.add_RankingServiceServicer_to_server(servicer, service.server)
    return service, servicer


async def main() -> None:
    settings = RankingSettings()
    configure_logging("ranking", settings.log_level, settings.track)
    configure_tracing("ranking")
    service, servicer = build(settings)

    async def warm_up() -> bool:
        # Rules serve without a model, so the service is ready once the registry was asked.
        await servicer.versions.refresh()
        return True

    async def poll() -> None:
        await servicer.versions.poll(settings.registry_poll_seconds)

    async def catalog_changes() -> None:
        await follow_until_cancelled(settings.redis_url, servicer.item_cache)

    async def close() -> None:
        await servicer.versions.close()
        await servicer.feature_store.close()

    background = [poll, catalog_changes] if settings.follow_catalog_changes else [poll]
    await serve(service, warm_up, background=background, close=close)


if __name__ == "__main__":
    run_service(main)

"""ranking settings (env prefix RECFLEET_RANKING_)."""

from pydantic_settings import SettingsConfigDict
from recfleet_runtime.settings import ArtifactSettings, PostgresSettings, RedisSettings, ServiceSettings


class RankingSettings(ServiceSettings, PostgresSettings, RedisSettings, ArtifactSettings):
    model_config = SettingsConfigDict(env_prefix="RECFLEET_RANKING_", extra="ignore", populate_by_name=True)

    grpc_port: int = 50071
    metrics_port: int = 9103
    feature_store_target: str = "127.0.0.1:50061"
    feature_store_timeout: float = 0.02
    # Serve this ranker version instead of the registry's serving one (canaries).
    ranker_version: str = ""
    registry_poll_seconds: float = 10.0
    # Rule formula weights (spec: 0.5 candidate + 0.3 popularity + 0.2 freshness).
    rule_weight_candidate: float = 0.5
    rule_weight_popularity: float = 0.3
    rule_weight_freshness: float = 0.2
    freshness_half_life_days: float = 365.0
    max_per_category: int = 3
    diversity_window: int = 20
    max_creator_share: float = 0.15
    exploration_share: float = 0.0
    # Cold start: a user with fewer interactions than this (or a request saying cold_start)
    # who has preferred categories gets this share of every 10 consecutive positions from
    # those categories while such candidates remain (0 = off); it comes before diversity.
    cold_start_threshold: int = 5
    cold_start_preferred_share: float = 0.5
    # Fault injection for canary drills: share of calls answered with INTERNAL.
    inject_error_rate: float = 0.0
    # Most candidates one Rank call may carry (one GetItemFeatures batch).
    max_candidates: int = 1000
    # Seconds item features read from the feature store are reused (0 = read every call).
    # Catalog upserts are announced on Redis and drop their items at once; this bounds
    # staleness when an announcement is missed. follow_catalog_changes off = TTL only.
    item_cache_seconds: float = 5.0
    item_cache_max_items: int = 200_000
    follow_catalog_changes: bool = True
    # Time the learned ranker may take per call before rules take over.
    model_budget_ms: float = 20.0
    # Consecutive model failures that open its breaker, and the seconds it stays open.
    model_breaker_failures: int = 3
    model_breaker_reset_seconds: float = 10.0
    # Ranker versions kept loaded besides the serving one (experiments ask for them).
    ranker_cache_size: int = 3

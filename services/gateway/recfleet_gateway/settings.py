"""Gateway settings (env prefix RECFLEET_GATEWAY_)."""

from pydantic_settings import SettingsConfigDict

from recfleet_runtime.settings import PostgresSettings, RedisSettings, ServiceSettings, shared


class GatewaySettings(ServiceSettings, PostgresSettings, RedisSettings):
    model_config = SettingsConfigDict(env_prefix="RECFLEET_GATEWAY_", extra="ignore", populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    # Downstream gRPC addresses. candidate-gen: one address per shard, comma-separated,
    # in shard order.
    feature_store_target: str = "127.0.0.1:50061"
    ranking_target: str = "127.0.0.1:50071"
    event_ingest_target: str = "127.0.0.1:50081"
    candidate_gen_targets: str = "127.0.0.1:50051,127.0.0.1:50052"
    # Per-hop budgets in seconds; each is also capped by what is left of the request.
    feature_store_timeout: float = 0.02
    candidate_gen_timeout: float = 0.05
    ranking_timeout: float = 0.08
    event_ingest_timeout: float = 10.0
    request_timeout: float = 0.5
    candidates_per_shard: int = 200
    cold_start_threshold: int = 5
    bootstrap_admin_key: str = shared("RECFLEET_BOOTSTRAP_ADMIN_KEY", "", "accepted with every scope")
    rate_limit_per_user: str = shared("RECFLEET_GATEWAY_RATE_LIMIT_PER_USER", "100/minute")
    rate_limit_per_key: str = shared("RECFLEET_GATEWAY_RATE_LIMIT_PER_KEY", "10000/second")
    cache_ttl_seconds: int = 300
    max_body_bytes: int = 1_048_576

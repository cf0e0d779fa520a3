"""feature-store settings (env prefix RECFLEET_FEATURES_)."""

from pydantic_settings import SettingsConfigDict
from recfleet_runtime.settings import PostgresSettings, RedisSettings, ServiceSettings


class FeatureSettings(ServiceSettings, PostgresSettings, RedisSettings):
    model_config = SettingsConfigDict(env_prefix="RECFLEET_FEATURES_", extra="ignore", populate_by_name=True)

    grpc_port: int = 50061
    metrics_port: int = 9102
    # Feature registry: empty means the one bundled with the service.
    registry_path: str = ""
    max_items_per_read: int = 1000
    # Item rows built from unchanged stored values are reused; at most this many are kept.
    item_row_cache_size: int = 20000
    # Reads that name no model version use the serving one, re-read at most this often.
    serving_version_cache_seconds: float = 1.0
    redis_max_connections: int = 64
    postgres_pool_size: int = 10
    # Seconds warm-up waits for Redis and Postgres before giving up (staying NOT_SERVING).
    startup_timeout_seconds: float = 120.0
    # Seconds between store checks once serving; NOT_SERVING while one fails.
    store_check_seconds: float = 5.0

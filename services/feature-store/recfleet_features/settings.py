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

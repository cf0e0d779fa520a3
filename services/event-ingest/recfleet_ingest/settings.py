"""event-ingest settings (env prefix RECFLEET_INGEST_), for the API and both consumers."""

from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict
from recfleet_runtime.settings import KafkaSettings, PostgresSettings, RedisSettings, ServiceSettings
from recfleet_store import suppression


class IngestSettings(ServiceSettings, PostgresSettings, RedisSettings, KafkaSettings):
    model_config = SettingsConfigDict(env_prefix="RECFLEET_INGEST_", extra="ignore", populate_by_name=True)

    grpc_port: int = 50081
    metrics_port: int = 9104
    max_batch_events: int = 500
    produce_timeout_seconds: float = 10.0
    sink_group: str = "recfleet-sink"
    realtime_group: str = "recfleet-realtime"
    sink_batch_size: int = 2000
    sink_max_wait_ms: int = 200
    recent_items: int = 50
    # Seconds between reloads of the erased-users list (API and consumers).
    erased_refresh_seconds: float = 3.0
    # Key of the erased-users list's hashes (RECFLEET_ERASURE_HASH_KEY, fleet-wide).
    erasure_hash_key: SecretStr = suppression.key_setting()
    # Consumers: /healthz/live fails once the poll loop has not gone round for this long.
    liveness_seconds: float = 60.0

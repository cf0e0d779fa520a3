"""Typed settings: one pydantic-settings class per service, one env prefix per service.

Connection settings that every service shares (Postgres, Redis, Kafka, artifacts) keep
one name across the fleet through an explicit alias, so the Helm chart sets them once.
"""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def shared(name: str, default: Any, description: str = "") -> Any:
    """A field read from one fleet-wide variable, whatever the service's prefix."""
    return Field(default, validation_alias=AliasChoices(name), description=description)


class ServiceSettings(BaseSettings):
    """Settings every gRPC service has."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    grpc_port: int = 50051
    metrics_port: int = 9090
    log_level: str = "INFO"
    # Seconds between health going NOT_SERVING on SIGTERM and the server stopping, so
    # load balancers see the change before connections close.
    drain_seconds: float = 1.0
    # Seconds in-flight RPCs get to finish once the server stops.
    grace_seconds: float = 5.0
    # An RPC's access line is written at INFO when its trace is sampled, when it failed,
    # or when it took at least this long; every other call's line is DEBUG.
    access_log_slow_ms: float = Field(100.0, ge=0)
    # A client connection is closed (GOAWAY) after this age, +/-10% jitter, so clients
    # re-resolve the headless Service's name and spread calls over pods added since.
    max_connection_age_seconds: float = 30.0
    # Seconds calls still in flight on an aged-out connection get to finish.
    max_connection_age_grace_seconds: float = 10.0
    track: str = shared("RECFLEET_TRACK", "stable", "stable or canary; labels metrics and logs")


class PostgresSettings(BaseSettings):
    postgres_dsn: str = shared("RECFLEET_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/recfleet")


class RedisSettings(BaseSettings):
    redis_url: str = shared("RECFLEET_REDIS_URL", "redis://127.0.0.1:6379/0")


class KafkaSettings(BaseSettings):
    kafka_bootstrap_servers: str = shared("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    events_topic: str = shared("RECFLEET_EVENTS_TOPIC", "recfleet.events.v1")
    dead_letter_topic: str = shared("RECFLEET_DEAD_LETTER_TOPIC", "recfleet.events.dlq.v1")
    users_topic: str = shared("RECFLEET_USERS_TOPIC", "recfleet.users.v1")


class TopicSettings(BaseSettings):
    """How the fleet's topics are made on the cluster; read only by `recfleet-jobs
    create-topics` (services never create topics). Partitions bound how many consumer
    replicas get work; production runs replication 3 with min.insync.replicas 2."""

    kafka_topic_partitions: int = Field(12, ge=1, validation_alias=AliasChoices("RECFLEET_KAFKA_TOPIC_PARTITIONS"))
    kafka_replication_factor: int = Field(1, ge=1, validation_alias=AliasChoices("RECFLEET_KAFKA_REPLICATION_FACTOR"))
    kafka_min_insync_replicas: int = Field(1, ge=1, validation_alias=AliasChoices("RECFLEET_KAFKA_MIN_INSYNC_REPLICAS"))

    @model_validator(mode="after")
    def _min_isr_within_replication(self) -> TopicSettings:
        if self.kafka_min_insync_replicas > self.kafka_replication_factor:
            raise ValueError(
                f"kafka_min_insync_replicas ({self.kafka_min_insync_replicas}) above kafka_replication_factor "
                f"({self.kafka_replication_factor}): no write could ever be acknowledged"
            )
        return self


class ArtifactSettings(BaseSettings):
    artifact_url: str = shared("RECFLEET_ARTIFACT_URL", "file://.state/artifacts")


def env_names(settings_cls: type[BaseSettings]) -> set[str]:
    """Every environment variable a settings class reads (the chart test compares these)."""
    prefix = settings_cls.model_config.get("env_prefix", "")
    names: set[str] = set()
    for name, field in settings_cls.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice) for choice in alias.choices)
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{prefix}{name}".upper())
    return names

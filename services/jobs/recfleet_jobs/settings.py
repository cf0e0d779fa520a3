"""Batch job settings (env prefix RECFLEET_JOBS_)."""

from pydantic_settings import BaseSettings, SettingsConfigDict
from recfleet_runtime.settings import ArtifactSettings, KafkaSettings, PostgresSettings, RedisSettings, TopicSettings


class JobSettings(PostgresSettings, RedisSettings, ArtifactSettings, KafkaSettings, TopicSettings, BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECFLEET_JOBS_", extra="ignore", populate_by_name=True)

    log_level: str = "INFO"
    data_dir: str = "data/ml-latest-small"
    # ALS hyper-parameters.
    als_factors: int = 64
    als_iterations: int = 15
    als_regularization: float = 30.0
    als_alpha: float = 2.0
    # Rating weight = max(0, stars - offset) + 1; see recfleet_models.als.
    als_rating_offset: float = 2.5
    # none, bm25 or tfidf re-weighting of the interaction matrix.
    als_weighting: str = "none"
    # FAISS shards.
    shard_count: int = 2
    index_type: str = "flat"
    ivf_nlist: int = 1024
    ivf_nprobe: int = 32
    hnsw_m: int = 32
    hnsw_ef_search: int = 128

"""Batch job settings (env prefix RECFLEET_JOBS_)."""

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from recfleet_models.ranking.training import DEFAULT_MIN_GAIN, DEFAULT_MIN_GAIN_SE
from recfleet_runtime.settings import ArtifactSettings, KafkaSettings, PostgresSettings, RedisSettings, TopicSettings
from recfleet_store import registry, suppression


class JobSettings(PostgresSettings, RedisSettings, ArtifactSettings, KafkaSettings, TopicSettings, BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECFLEET_JOBS_", extra="ignore", populate_by_name=True)

    log_level: str = "INFO"
    data_dir: str = "data/ml-latest-small"
    # Key of the erased-users list's hashes (RECFLEET_ERASURE_HASH_KEY, fleet-wide): the
    # jobs leave out users on the list.
    erasure_hash_key: SecretStr = suppression.key_setting()
    # ALS hyper-parameters.
    als_factors: int = 64
    als_iterations: int = 15
    als_regularization: float = 30.0
    als_alpha: float = 2.0
    # Rating weight = max(0, stars - offset) + 1; see recfleet_models.als.
    als_rating_offset: float = 2.5
    # none, bm25, tfidf or log1p re-weighting of the interaction matrix.
    als_weighting: str = "none"
    # Event type -> none, log1p or rating: how an event's `value` scales its type's weight
    # (merged over recfleet_models.als.DEFAULT_VALUE_TRANSFORMS), JSON, e.g. {"purchase": "log1p"}.
    als_value_transforms: dict[str, str] = {}
    # train-als / evaluate search ALS hyper-parameters for this long (0 = use the settings
    # above as they are), at most this many points, on each user's most recent (`recent`)
    # or a random (`random`) 20% of items; see recfleet_models.tuning.
    als_tune_seconds: float = 120.0
    als_tune_max_trials: int = 40
    als_tune_holdout: str = "recent"
    # A point replaces the given setting only when it beats it by this many standard errors.
    als_tune_min_gain_se: float = 2.0
    # EASE, the item-to-item source fused with ALS (recfleet_models.ease, docs/evaluation.md):
    # train-als searches its l2 and ALS weight for `ease_tune_seconds` after the ALS search
    # and publishes it with the version when it beats ALS alone by more than
    # `als_tune_min_gain_se` standard errors; `--tune-seconds 0` (or a budget of 0 here)
    # uses `ease_l2` and `ease_als_weight` as they are (weight 1 = ALS alone, EASE off).
    ease_enabled: bool = True
    # B is max_items^2 float32 (8000 items: 256 MB in the job, split over the shards when
    # served); the most interacted items with at least `ease_min_users` users.
    ease_max_items: int = Field(8000, ge=1)
    ease_min_users: int = Field(10, ge=1)
    ease_l2: float = Field(500.0, gt=0)
    ease_als_weight: float = Field(1.0, ge=0, le=1)
    # The fused score less this many times the item's standardised log user count
    # (`recfleet_models.ease.popularity`); searched with l2 and the weight.
    ease_popularity_penalty: float = Field(0.0, ge=0, allow_inf_nan=False)
    ease_tune_seconds: float = Field(60.0, ge=0)
    # The search only adopts points whose validation catalog coverage is at least this many
    # times ALS alone's (0 = no coverage rule).
    ease_min_coverage_ratio: float = Field(1.0, ge=0, allow_inf_nan=False)
    # FAISS shards.
    shard_count: int = 2
    # train-ranker proposes each user the candidates the gateway sends ranking: the ALS
    # top `ranker_candidates_per_shard` of every shard (keep it equal to the gateway's
    # RECFLEET_GATEWAY_CANDIDATES_PER_SHARD).
    ranker_candidates_per_shard: int = Field(100, ge=1)
    # A ranker is promoted only when its held-out NDCG@10 beats the better of the candidate
    # order and the rule formula by at least `ranker_min_gain` (absolute) and by more than
    # `ranker_min_gain_se` standard errors of that gain (per user); see docs/ranking.md.
    ranker_min_gain: float = Field(DEFAULT_MIN_GAIN, ge=0)
    ranker_min_gain_se: float = Field(DEFAULT_MIN_GAIN_SE, ge=0)
    index_type: str = "flat"
    ivf_nlist: int = 1024
    ivf_nprobe: int = 32
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    # Promotion refuses a version whose main validation metric is more than this much
    # (absolute) below the serving version's, unless forced (RECFLEET_PROMOTION_MAX_REGRESSION,
    # the gateway's too).
    promotion_max_regression: float = registry.max_regression_setting()

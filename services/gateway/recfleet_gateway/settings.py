"""Gateway settings (env prefix RECFLEET_GATEWAY_)."""

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict
from recfleet_runtime.rollout import schedule_problem
from recfleet_runtime.settings import PostgresSettings, RedisSettings, ServiceSettings, shared
from recfleet_store import registry, suppression


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
    # Requests one process works on at once before it answers 503 + Retry-After (load
    # shedding; probes, /metrics and /admin are never shed). 0 = no bound.
    max_in_flight: int = 64
    # Writes (POST, PUT, PATCH, DELETE: events, catalog, profiles) count against a bound of
    # their own, so a write path that hangs (event-ingest frozen) never takes the slots of
    # recommendations, and a read storm never those of writes. 0 = no bound.
    max_in_flight_writes: int = 32
    # Concurrent recommendation requests share their feature-store, candidate-gen and
    # ranking calls: at most this many requests per batched call (1 = a unary call per
    # request), and at most coalesce_max_in_flight batched calls out per endpoint at once
    # (a request waits only while that many are out; raise it to spread a burst over more
    # pods of one service).
    coalesce_max_batch: int = Field(32, ge=1, le=256)
    coalesce_max_in_flight: int = Field(2, ge=1, le=64)
    # Each shard's best candidates by its score (fused ALS + EASE for a version with EASE).
    # 100 a shard keeps the diversity cap on the bundled sample with EASE's candidates in
    # the mix; a version without EASE may want 200 (docs/operations.md, "Capacity").
    candidates_per_shard: int = 100
    cold_start_threshold: int = 5
    bootstrap_admin_key: str = shared("RECFLEET_BOOTSTRAP_ADMIN_KEY", "", "accepted with every scope")
    rate_limit_per_user: str = shared("RECFLEET_GATEWAY_RATE_LIMIT_PER_USER", "100/minute")
    rate_limit_per_key: str = shared("RECFLEET_GATEWAY_RATE_LIMIT_PER_KEY", "10000/second")
    cache_ttl_seconds: int = 300
    max_body_bytes: int = 1_048_576
    # Seconds each part of a request body may take to arrive; a client slower than that
    # is answered 408 and its connection closed, so it cannot hold a request slot.
    body_timeout_seconds: float = Field(10.0, gt=0)
    # Seconds a request's line and headers may take to arrive, counted from its first byte
    # (a connection's first request: from the connection); a client slower than that is
    # answered 408 and its connection closed, so it cannot hold a connection open.
    header_timeout_seconds: float = Field(10.0, gt=0)
    # Canary tracks (issue 7): empty targets mean no canary; the weight is the percent of
    # users (sticky by user id) routed to the canary.
    feature_store_canary_target: str = ""
    ranking_canary_target: str = ""
    event_ingest_canary_target: str = ""
    candidate_gen_canary_targets: str = ""
    canary_weights: dict[str, int] = Field(default_factory=dict)
    # Per-key limits by scope, e.g. {"events:write": "2000/second"}; others use rate_limit_per_key.
    rate_limits_per_scope: dict[str, str] = Field(default_factory=dict)
    # Seconds a verified API key stays in the in-process cache: a revocation applies at
    # once in the worker that revoked it, within this long in other workers and replicas.
    api_key_cache_seconds: float = 5.0
    readiness_cache_seconds: float = 1.0
    # Secret for signing pagination cursors; empty means one random secret per replica,
    # shared by its workers (cursors then only work on the replica that issued them).
    cursor_secret: str = ""
    cursor_ttl_seconds: int = 1800
    # How many ranked items one recommendation snapshot keeps for pagination.
    snapshot_size: int = 100
    similar_candidates_per_liked_item: int = 20
    popular_candidates_per_category: int = 50
    # Command that runs a batch job; the job name is appended.
    jobs_command: list[str] = Field(default_factory=list)
    job_output_limit_bytes: int = 65_536
    # Budget for catalog, profile and export calls (writes to Postgres behind the feature store).
    write_timeout: float = 5.0
    # Canary weights per service from the chart's recfleet-routing ConfigMap (mounted as a
    # file so that weight changes arrive without a restart); empty means none.
    routing_file: str = ""
    # Canary traffic (issue 7): how often every replica re-reads the shared weights, and
    # how often the canary analysis runs.
    traffic_refresh_seconds: float = 1.0
    canary_analysis_seconds: float = 5.0
    # Canary gates (spec: error rate > 1% or p99 > 200 ms over the window rolls back),
    # and per-service overrides, e.g. {"ranking": {"max_p99_seconds": 0.1}}.
    canary_max_error_rate: float = 0.01
    canary_max_p99_seconds: float = 0.2
    canary_window_seconds: float = 60.0
    canary_min_requests: int = 50
    canary_gates: dict[str, dict[str, float]] = Field(default_factory=dict)
    # Staged rollouts (`POST /admin/v1/traffic/{service}/rollout`): the default weights to
    # move through and the least time each is held, e.g. [1, 10, 50, 100] (JSON).
    canary_rollout_stages: list[int] = Field(default_factory=lambda: [1, 10, 50, 100])
    canary_rollout_hold_seconds: float = Field(300.0, ge=0)
    # A rollout's recommendation KPI gates, the canary track against stable over the
    # stage's lists (at most the last kpi_window_seconds, at most kpi_max_lists lists per
    # worker): judged once each track has kpi_min_lists lists; CTR may drop this much
    # (relative) and the empty-list rate rise this much (absolute) before a difference
    # significant at kpi_alpha (one-sided, per judgement: a stage is judged every analysis
    # interval) breaches; coverage must reach this share of stable's distinct items.
    canary_kpi_window_seconds: float = Field(600.0, gt=0)
    canary_kpi_max_lists: int = Field(20_000, ge=1)
    canary_kpi_min_lists: int = Field(200, ge=1)
    canary_kpi_max_ctr_drop: float = Field(0.1, ge=0, le=1)
    canary_kpi_max_empty_rate_increase: float = Field(0.02, ge=0, le=1)
    canary_kpi_min_coverage_ratio: float = Field(0.8, ge=0, le=1)
    canary_kpi_alpha: float = Field(0.001, gt=0, lt=0.5)
    # Experiments (issue 7): how often every replica re-reads the running experiments,
    # how often buffered exposures are written to Postgres, and how many may wait in
    # memory when Postgres is away (the oldest are dropped beyond that).
    experiments_refresh_seconds: float = 5.0
    exposure_flush_seconds: float = 1.0
    exposure_buffer_limit: int = 100_000
    # Key of the erased-users list's hashes (RECFLEET_ERASURE_HASH_KEY, fleet-wide): the
    # exposure log leaves out users on the list.
    erasure_hash_key: SecretStr = suppression.key_setting()
    # Promotion refuses a version whose main validation metric is more than this much
    # (absolute) below the serving version's, unless forced (RECFLEET_PROMOTION_MAX_REGRESSION,
    # the jobs' too). The index gate uses the shard count of candidate_gen_targets.
    promotion_max_regression: float = registry.max_regression_setting()

    @field_validator("canary_rollout_stages")
    @classmethod
    def _stages_rise(cls, stages: list[int]) -> list[int]:
        problem = schedule_problem(stages, 0.0)
        if problem:
            raise ValueError(problem)
        return stages

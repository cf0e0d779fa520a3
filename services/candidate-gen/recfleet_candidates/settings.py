"""candidate-gen settings (env prefix RECFLEET_CANDIDATES_)."""

from pydantic_settings import SettingsConfigDict
from recfleet_runtime.settings import ArtifactSettings, PostgresSettings, ServiceSettings, shared


class CandidateSettings(ServiceSettings, PostgresSettings, ArtifactSettings):
    model_config = SettingsConfigDict(env_prefix="RECFLEET_CANDIDATES_", extra="ignore", populate_by_name=True)

    grpc_port: int = 50051
    metrics_port: int = 9101
    # This process's shard. When unset it comes from the StatefulSet pod name's ordinal.
    shard: int | None = None
    pod_name: str = shared("POD_NAME", "", "StatefulSet pod name, e.g. candidate-gen-2")
    shard_count: int = 2
    # Serve this model version instead of the registry's serving one (canaries).
    model_version: str = ""
    registry_poll_seconds: float = 5.0
    # Sanity checks before a hot swap.
    sanity_sample: int = 50
    min_sanity_recall: float = 0.9
    search_threads: int = 1
    # Flat (exact) shards up to this many items are searched on the event loop (well under
    # a millisecond); larger ones in a worker thread.
    inline_search_max_flat_items: int = 50_000
    # Seconds the version swapped out keeps answering requests pinned to it, while the
    # other shards of the fleet finish their own swap.
    keep_previous_seconds: float = 30.0
    # Cold-start items: tags carried by fewer of the version's items than this are not
    # used to place new items (categories need one item).
    metadata_min_tag_items: int = 5

"""candidate-gen's own metrics (the grpc_server_* families come from the runtime)."""

from prometheus_client import Counter, Gauge, Histogram
from recfleet_runtime.metrics import LATENCY_BUCKETS

RELOADS = Counter(
    "recfleet_candidates_reload_total",
    "Index reload attempts by outcome: ok (swapped in) or refused (last good version kept).",
    ["shard", "outcome"],
)
INDEX_VERSION = Gauge(
    "recfleet_candidates_index_version_info",
    "1 for the model version, index type and item count this shard serves.",
    ["shard", "version", "index_type"],
)
INDEX_ITEMS = Gauge("recfleet_candidates_index_items", "Items in the served shard.", ["shard"])
INDEX_BUILT = Gauge(
    "recfleet_candidates_index_built_timestamp_seconds",
    "When the served shard's index was built (Unix time): the index-stale alert reads its age.",
    ["shard"],
)
METADATA_ITEMS = Gauge(
    "recfleet_candidates_metadata_items",
    "New items the shard serves from metadata vectors (not yet in the served model version).",
    ["shard"],
)
SEARCH_SECONDS = Histogram(
    "recfleet_candidates_search_seconds",
    "FAISS search time per request, by RPC.",
    ["shard", "rpc"],
    buckets=(0.0001, 0.00025, *LATENCY_BUCKETS),
)

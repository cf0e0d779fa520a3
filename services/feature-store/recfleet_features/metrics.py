"""The feature store's own metrics (`recfleet_features_*`), next to the standard gRPC ones."""

from prometheus_client import Counter, Histogram

ITEMS_PER_READ = Histogram(
    "recfleet_features_items_per_read",
    "Items asked for per GetItemFeatures call.",
    buckets=(1, 10, 50, 100, 200, 500, 1000),
)
ITEM_ROWS = Counter(
    "recfleet_features_item_rows_total",
    "Item rows served, by whether the row came from the row cache or was built.",
    ["result"],
)
USER_READS = Counter(
    "recfleet_features_user_reads_total",
    "GetUserFeatures answers by vector status (ok, missing, version-mismatch).",
    ["vector_status"],
)
DEFAULTED = Counter(
    "recfleet_features_defaulted_values_total",
    "Feature values served as the registry default (missing, stale or mistyped), by entity.",
    ["entity"],
)

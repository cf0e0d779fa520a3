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

# Children resolved once: `labels()` takes a lock and builds a key on every call, and a
# user read counts on every request.
USER_DEFAULTED = DEFAULTED.labels("user")
_USER_READS_BY_KIND: dict[str, Counter] = {}


def count_user_read(vector_status: str) -> None:
    """Count one user read under its vector status's kind (`version-mismatch:a,b` counts
    as `version-mismatch`, the empty status as `ok`)."""
    kind = vector_status.split(":", 1)[0]
    child = _USER_READS_BY_KIND.get(kind)
    if child is None:
        child = _USER_READS_BY_KIND[kind] = USER_READS.labels(kind or "ok")
    child.inc()

"""The ranking service's own metrics (`recfleet_ranking_*`)."""

from prometheus_client import Counter, Histogram
from recfleet_runtime.metrics import LATENCY_BUCKETS

RANK_CALLS = Counter("recfleet_ranking_rank_total", "Rank calls answered, by what scored them.", ["served_by"])
DEGRADED = Counter("recfleet_ranking_degraded_total", "Fallbacks taken by Rank calls, by reason.", ["reason"])
FILTERED = Counter("recfleet_ranking_filtered_items_total", "Candidates removed by filters, by reason.", ["reason"])
CORE_SECONDS = Histogram(
    "recfleet_ranking_core_seconds",
    "Time to filter, score, re-rank and explain one Rank call (feature fetch excluded).",
    buckets=LATENCY_BUCKETS,
)

"""Sanity queries a freshly loaded shard must pass before it may serve."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from recfleet_models.index import LoadedShard, ShardRejected

TOP = 10


@dataclass(frozen=True)
class SanityReport:
    sampled: int
    # Sampled items that exact search places in their own top 10, and how many of those
    # the index found there too.
    self_expected: int
    self_found: int
    recall_at_10: float


def check_shard(shard: LoadedShard, sample: int, min_recall: float, seed: int = 0) -> SanityReport:
    """Known items must find themselves; recall@10 against exact search must reach `min_recall`.

    With inner product an item of small norm need not be in its own top 10 even under
    exact search, so "finds itself" is demanded only where exact search says it should.
    Raises ShardRejected with the figures when a check fails.
    """
    if shard.item_count == 0:
        return SanityReport(0, 0, 0, 1.0)
    rng = np.random.default_rng(seed)
    rows = rng.choice(shard.item_count, size=min(sample, shard.item_count), replace=False)
    queries = shard.vectors[rows]
    k = min(TOP, shard.item_count)
    _, approx = shard.search(queries, k)
    _, exact = shard.exact_search(queries, k)
    expected = [row for row, truth in zip(rows, exact, strict=True) if row in truth]
    missed = [int(row) for row, got, truth in zip(rows, approx, exact, strict=True) if row in truth and row not in got]
    recall = float(np.mean([len(set(got) & set(truth)) / k for got, truth in zip(approx, exact, strict=True)]))
    report = SanityReport(len(rows), len(expected), len(expected) - len(missed), recall)
    if missed:
        names = ", ".join(shard.item_ids[row] for row in missed[:5])
        raise ShardRejected(f"sanity: {len(missed)} of {len(expected)} sampled items did not find themselves ({names})")
    if recall < min_recall:
        raise ShardRejected(f"sanity: recall@10 {recall:.3f} vs exact is below {min_recall}")
    return report

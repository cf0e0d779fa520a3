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
    exact_scores, exact = shard.exact_search(queries, k)
    # Items with equal vectors (rarely rated items often have them) tie exactly, so an
    # answer counts by its true score: any returned row whose own vector scores at least
    # the exact k-th score (within float tolerance) is correct, whichever tied id it is.
    # Scores are recomputed from the rows' vectors, so an index whose rows point at the
    # wrong items fails even though its internal scores look right.
    approx_scores = np.einsum("ij,ikj->ik", queries, shard.vectors[np.maximum(approx, 0)])
    tolerance = 1e-4 * np.maximum(1.0, np.abs(exact_scores[:, -1:]))
    kth = exact_scores[:, -1:] - tolerance
    correct = (approx_scores >= kth) & (approx >= 0)
    recall = float(correct.sum(axis=1).mean() / k)
    self_scores = np.einsum("ij,ij->i", queries, queries)
    expected = [i for i, (row, truth) in enumerate(zip(rows, exact, strict=True)) if row in truth]
    missed = [
        int(rows[i])
        for i in expected
        if rows[i] not in approx[i] and not np.any(np.abs(approx_scores[i] - self_scores[i]) <= tolerance[i])
    ]
    report = SanityReport(len(rows), len(expected), len(expected) - len(missed), recall)
    if missed:
        names = ", ".join(shard.item_ids[row] for row in missed[:5])
        raise ShardRejected(f"sanity: {len(missed)} of {len(expected)} sampled items did not find themselves ({names})")
    if recall < min_recall:
        raise ShardRejected(f"sanity: recall@10 {recall:.3f} vs exact is below {min_recall}")
    return report

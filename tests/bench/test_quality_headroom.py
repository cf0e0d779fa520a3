"""The headroom bench's other model families score by their textbook definitions, on
matrices small enough to work out by hand."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
from bench_support import bench_script


@pytest.fixture(scope="module")
def headroom():
    with bench_script("quality_headroom") as module:
        yield module


def bench_of(rows: list[list[int]]) -> SimpleNamespace:
    binary = sp.csr_matrix(np.array(rows, dtype=np.float32))
    return SimpleNamespace(binary=binary, matrix=binary)


def test_user_knn_sums_the_items_of_the_most_similar_users(headroom):
    # Users 1 and 2 each share one of user 0's two items: cosine 1/2 each.
    bench = bench_of([[1, 1, 0], [1, 0, 1], [0, 1, 1]])
    scores = headroom.user_knn(bench, neighbours=2)
    np.testing.assert_allclose(scores[0], [0.5, 0.5, 1.0], rtol=1e-6)


def test_rp3beta_is_the_three_step_walk_divided_by_popularity(headroom):
    bench = bench_of([[1, 1, 0], [1, 0, 1], [0, 1, 1]])
    # Every user and item has degree 2: item -> user -> item is X^T X / 4, diagonal dropped.
    np.testing.assert_allclose(headroom.rp3beta(bench, 1.0, 0.0)[0], [0.25, 0.25, 0.5], rtol=1e-6)
    uneven = bench_of([[1, 1, 0], [1, 0, 1], [1, 1, 1], [0, 0, 1]])
    degrees = np.asarray(uneven.binary.sum(axis=0)).ravel()
    plain, divided = headroom.rp3beta(uneven, 1.0, 0.0), headroom.rp3beta(uneven, 1.0, 1.0)
    np.testing.assert_allclose(divided * degrees, plain, rtol=1e-5)


def test_item_knn_ranks_the_item_seen_with_the_history_first(headroom):
    # Items 0 and 1 come together; items 2 and 3 never with item 0.
    bench = bench_of([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 1, 1], [1, 0, 0, 0]])
    scores = headroom.item_knn_bm25(bench, neighbours=3)
    assert scores.shape == (7, 4)
    assert scores[6, 1] > 0
    assert scores[6, 1] > max(scores[6, 2], scores[6, 3])

from collections import Counter

import pytest

from recfleet_models.sharding import shard_of


def test_assignment_is_stable_and_known():
    # Known answers: a change of hash would silently move every item to another shard.
    assert [shard_of(str(i), 4) for i in range(1, 9)] == [2, 0, 1, 2, 0, 0, 2, 2]
    assert shard_of("50", 1) == 0


def test_assignment_is_balanced():
    counts = Counter(shard_of(str(i), 4) for i in range(10_000))
    assert set(counts) == {0, 1, 2, 3}
    assert max(counts.values()) / min(counts.values()) < 1.15


def test_rejects_zero_shards():
    with pytest.raises(ValueError):
        shard_of("1", 0)

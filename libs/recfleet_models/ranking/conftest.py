"""Fixtures for the ranking tests (here and in services/ranking/tests): a small lambdarank
model trained on a known signal."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from recfleet_models.ranking.features import Candidate, UserContext, assign_ranks
from recfleet_models.ranking.learned import FEATURE_NAMES, LearnedRanker, feature_matrix, model_meta

NOW = 1_800_000_000.0


def popularity_groups(groups: int = 60, size: int = 20, seed: int = 7):
    """Groups where the relevant items are exactly the most popular ones."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for g in range(groups):
        candidates = [
            Candidate(
                f"i{g}-{k}",
                float(rng.random()),
                "als",
                categories=("c",),
                age_rating=0,
                popularity=float(rng.random()),
                published_at=NOW - float(rng.integers(1, 900)) * 86_400,
            )
            for k in range(size)
        ]
        assign_ranks(candidates)
        user = UserContext(f"u{g}", features={"interaction_count": float(rng.integers(1, 50))})
        rows.append(feature_matrix(candidates, user, NOW))
        labels.append((np.array([c.popularity for c in candidates]) > 0.7).astype(int))
    return np.vstack(rows), np.concatenate(labels), [size] * groups


@pytest.fixture(scope="session")
def popularity_model() -> tuple[str, str]:
    """(model text, meta.json) of a ranker that learned 'popular first'."""
    x, y, group = popularity_groups()
    dataset = lgb.Dataset(x, y, group=group, feature_name=list(FEATURE_NAMES))
    booster = lgb.train(
        {"objective": "lambdarank", "num_threads": 1, "verbosity": -1, "min_data_in_leaf": 5, "num_leaves": 7},
        dataset,
        num_boost_round=20,
    )
    return booster.model_to_string(), model_meta("ranker-test-1", FEATURE_NAMES)


@pytest.fixture(scope="session")
def popularity_ranker(popularity_model) -> LearnedRanker:
    import json

    text, meta = popularity_model
    return LearnedRanker.from_text("ranker-test-1", text, json.loads(meta))

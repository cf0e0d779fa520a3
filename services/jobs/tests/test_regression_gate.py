"""Offline regression gate: plain ALS, and ALS fused with EASE, on the bundled
ml-latest-small must not get worse, and the fusion must keep its lead over ALS alone
without showing less of the catalog than ALS alone does.

The recorded figures live in libs/recfleet_models/baselines.json; raise them there when a
change improves the model, so that later changes are held to the new level.
"""

import json
from pathlib import Path

import pytest
from recfleet_models.als import ALSParams
from recfleet_models.data import read_ml_latest_small
from recfleet_models.evaluation import AlsRecommender, FusedRecommender, evaluate
from recfleet_models.protocols import Split, make_split

ROOT = Path(__file__).resolve().parents[3]
BASELINES = json.loads((ROOT / "libs" / "recfleet_models" / "baselines.json").read_text())


@pytest.fixture(scope="module")
def split() -> Split:
    return make_split(read_ml_latest_small(ROOT / "data" / "ml-latest-small").ratings, "recbole")


def _als() -> AlsRecommender:
    return AlsRecommender(ALSParams(**BASELINES["ml-latest-small/recbole/als"]["params"]))


def _assert_held(ndcg: float, recorded: dict) -> None:
    assert ndcg >= recorded["ndcg@10"] - BASELINES["tolerance"], (
        f"NDCG@10 {ndcg:.4f} fell below the recorded {recorded['ndcg@10']} - {BASELINES['tolerance']}"
    )


@pytest.mark.slow
def test_plain_als_ndcg_does_not_regress(split):
    metrics = evaluate(split, _als(), k=10)
    assert metrics.users_evaluated == 609
    _assert_held(metrics.ndcg, BASELINES["ml-latest-small/recbole/als"])


@pytest.mark.slow
def test_als_fused_with_ease_does_not_regress_and_keeps_its_lead(split):
    recorded = BASELINES["ml-latest-small/recbole/als+ease"]
    ease = recorded["ease"]
    recommender = FusedRecommender(
        _als(), ease["l2"], ease["als_weight"], ease["max_items"], ease["min_users"], ease["popularity_penalty"]
    )
    fused = evaluate(split, recommender, k=10)
    assert fused.users_evaluated == 609
    _assert_held(fused.ndcg, recorded)
    als = evaluate(split, _als(), k=10)
    assert fused.ndcg >= recorded["min_ratio_to_als"] * als.ndcg, (
        f"ALS + EASE {fused.ndcg:.4f} is less than {recorded['min_ratio_to_als']} x ALS alone {als.ndcg:.4f}"
    )
    assert fused.coverage >= recorded["min_coverage_ratio_to_als"] * als.coverage, (
        f"ALS + EASE covers {fused.coverage:.4f} of the catalog, less than"
        f" {recorded['min_coverage_ratio_to_als']} x ALS alone's {als.coverage:.4f}"
    )

"""Offline regression gate: plain ALS on the bundled ml-latest-small must not get worse.

The recorded figure lives in libs/recfleet_models/baselines.json; raise it there when a
change improves the model, so that later changes are held to the new level.
"""

import json
from pathlib import Path

import pytest
from recfleet_models.als import ALSParams
from recfleet_models.data import read_ml_latest_small
from recfleet_models.evaluation import AlsRecommender, evaluate
from recfleet_models.protocols import make_split

ROOT = Path(__file__).resolve().parents[3]
BASELINES = json.loads((ROOT / "libs" / "recfleet_models" / "baselines.json").read_text())


@pytest.mark.slow
def test_plain_als_ndcg_does_not_regress():
    recorded = BASELINES["ml-latest-small/recbole/als"]
    split = make_split(read_ml_latest_small(ROOT / "data" / "ml-latest-small").ratings, "recbole")
    metrics = evaluate(split, AlsRecommender(ALSParams(**recorded["params"])), k=10)
    assert metrics.users_evaluated == 609
    assert metrics.ndcg >= recorded["ndcg@10"] - BASELINES["tolerance"], (
        f"NDCG@10 {metrics.ndcg:.4f} fell below the recorded {recorded['ndcg@10']} - {BASELINES['tolerance']}"
    )

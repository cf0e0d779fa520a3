"""`evaluate --model als+ranker` from the command line on the bundled data."""

import json
from pathlib import Path

import pytest
import typer
from recfleet_jobs import evaluate
from typer.testing import CliRunner

BUNDLED = Path(__file__).resolve().parents[3] / "data" / "ml-latest-small"
COMMON = ["--dataset", str(BUNDLED), "--format", "ml-latest-small", "--protocol", "recbole"]
FAST = [
    "--factors",
    "16",
    "--iterations",
    "5",
    "--ranker-candidates",
    "30",
    "--ranker-folds",
    "1",
    "--tune-seconds",
    "0",
]


def _app() -> typer.Typer:
    app = typer.Typer()
    evaluate.register(app)
    return app


def test_ranker_pipeline_is_measured_with_its_training_summary():
    result = CliRunner().invoke(_app(), ["evaluate", *COMMON, "--model", "als+ranker", *FAST])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert metrics["model"] == "als+ranker" and metrics["users_evaluated"] == 609
    assert 0 < metrics["ndcg@10"] < 1
    ranker = metrics["ranker"]
    assert ranker["training_groups"] > ranker["validation_groups"] > 0
    assert ranker["params"]["als_candidates"] == 30 and ranker["params"]["folds"] == 1
    assert "candidate_score" in ranker["feature_names"]
    # The lists are the ranker's only if it passed train-ranker's gate on its held-out users.
    gate = ranker["gate"]
    assert ranker["ordered_by"] == gate["serves"] and gate["min_gain"] == 0.002
    assert gate["passed"] == (gate["serves"] == "ranker")
    for name in ("validation_ndcg@10", "validation_ndcg@10_candidate_order", "validation_ndcg@10_rules"):
        assert 0 < ranker[name] <= 1


def test_without_the_gate_the_ranker_orders_the_lists(monkeypatch):
    monkeypatch.setenv("RECFLEET_JOBS_RANKER_MIN_GAIN", "1")
    gated = CliRunner().invoke(_app(), ["evaluate", *COMMON, "--model", "als+ranker", *FAST])
    assert gated.exit_code == 0, gated.output
    ranker = json.loads(gated.output)["ranker"]
    assert ranker["gate"]["passed"] is False and ranker["ordered_by"] != "ranker"
    ungated = CliRunner().invoke(_app(), ["evaluate", *COMMON, "--model", "als+ranker", *FAST, "--no-ranker-gate"])
    assert ungated.exit_code == 0, ungated.output
    assert json.loads(ungated.output)["ranker"]["ordered_by"] == "ranker"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ranker-features", "everything"], "everything"),
        (["--ranker-preset", "fastest"], "fastest"),
        (["--ranker-preset", "production", "--ranker-folds", "4"], "unless carve is random"),
        (["--version", "als-20260101T000000Z-0000"], "trains its own models"),
    ],
)
def test_bad_ranker_arguments_are_named(args, message):
    result = CliRunner().invoke(_app(), ["evaluate", *COMMON, "--model", "als+ranker", *args], env={"COLUMNS": "500"})
    assert result.exit_code == 2
    assert message in result.output

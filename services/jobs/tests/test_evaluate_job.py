"""evaluate and tune-als from the command line on the bundled data."""

import json
from pathlib import Path

import pytest
import typer
import yaml
from recfleet_jobs import evaluate
from recfleet_models.ranking.diversity import DiversityPolicy
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[3]
BUNDLED = ROOT / "data" / "ml-latest-small"
COMMON = ["--dataset", str(BUNDLED), "--format", "ml-latest-small"]


def _app() -> typer.Typer:
    app = typer.Typer()
    evaluate.register(app)
    return app


def test_evaluate_prints_json_metrics():
    result = CliRunner().invoke(
        _app(), ["evaluate", *COMMON, "--protocol", "recommenders-ml100k", "--model", "popular", "--k", "5"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert {"precision@5", "recall@5", "ndcg@5", "map@5", "catalog_coverage", "users_evaluated"} <= set(metrics)
    assert metrics["users_evaluated"] == 610
    assert 0 < metrics["ndcg@5"] < 1 and 0 < metrics["catalog_coverage"] < 0.01


def test_als_beats_popular_on_recbole():
    runner = CliRunner()
    scores = {}
    for model in ("popular", "als"):
        result = runner.invoke(
            _app(),
            [
                "evaluate",
                *COMMON,
                "--protocol",
                "recbole",
                "--model",
                model,
                "--factors",
                "16",
                "--iterations",
                "5",
                "--tune-seconds",
                "0",
            ],
        )
        assert result.exit_code == 0, result.output
        scores[model] = json.loads(result.output)["ndcg@10"]
    assert scores["als"] > scores["popular"]


def test_tune_als_prints_a_table_and_the_best_setting():
    result = CliRunner().invoke(
        _app(),
        [
            "tune-als",
            *COMMON,
            "--protocol",
            "recbole",
            "--factors",
            "8",
            "--regularization",
            "1,30",
            "--alpha",
            "2",
            "--iterations",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "ndcg@10" in result.output
    best = json.loads(result.output.strip().splitlines()[-1])
    assert best["best"]["factors"] == 8 and best["best"]["regularization"] in (1.0, 30.0)
    assert "test" not in best


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--protocol", "leave-one-out"], "leave-one-out"),
        (["--protocol", "recbole", "--model", "svd"], "svd"),
    ],
)
def test_bad_arguments_are_named(args, message):
    result = CliRunner().invoke(_app(), ["evaluate", *COMMON, *args], env={"COLUMNS": "500"})
    assert result.exit_code == 2
    assert message in result.output


def test_missing_dataset_directory(tmp_path):
    result = CliRunner().invoke(
        _app(),
        ["evaluate", "--dataset", str(tmp_path / "nope"), "--format", "ml-100k", "--protocol", "recbole"],
        env={"COLUMNS": "500"},
    )
    assert result.exit_code == 2
    assert "not a directory" in result.output


def test_rule_formula_pipeline_is_measured():
    result = CliRunner().invoke(
        _app(),
        ["evaluate", *COMMON, "--protocol", "recbole", "--model", "als+rules", "--factors", "16", "--iterations", "5"],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert metrics["model"] == "als+rules" and metrics["users_evaluated"] == 609
    assert 0 < metrics["ndcg@10"] < 1


def test_defaults_evaluate_the_configured_data_dir(monkeypatch):
    # The admin API and the CronJob may start `evaluate` with no dataset arguments.
    monkeypatch.setenv("RECFLEET_JOBS_DATA_DIR", str(BUNDLED))
    result = CliRunner().invoke(_app(), ["evaluate", "--model", "popular"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert (metrics["dataset"], metrics["protocol"], metrics["users_evaluated"]) == ("ml-latest-small", "recbole", 609)


def test_evaluate_tunes_als_as_train_als_does():
    result = CliRunner().invoke(
        _app(),
        ["evaluate", *COMMON, "--protocol", "recbole", "--model", "als", "--iterations", "3", "--tune-trials", "3"],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    tuning = metrics["tuning"]
    assert tuning["stopped"] == "max-trials" and [t["phase"] for t in tuning["trials"]] == ["seed", "seed", "coarse"]
    assert tuning["validation"].startswith("each user's most recent 20% of items")
    assert {key: metrics["params"][key] for key in tuning["chosen"]} == tuning["chosen"]
    assert metrics["users_evaluated"] == 609


def _metrics(*args: str) -> dict:
    result = CliRunner().invoke(
        _app(), ["evaluate", *COMMON, "--protocol", "recbole", "--factors", "16", "--iterations", "5", *args]
    )
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.output))


def test_the_serving_diversity_rule_is_measured_only_when_asked():
    plain = _metrics()
    served = _metrics("--max-per-category", "3")
    assert "diversity" not in plain
    assert served["diversity"] == {"max_per_category": 3, "window": 20, "candidates": 100}
    # Genres lead with Action, Adventure, Comedy, Drama: capping them moves other films up.
    assert served["ndcg@10"] != plain["ndcg@10"]
    # A cap as large as the window caps nothing.
    uncapped = _metrics("--max-per-category", "20")
    assert {name: uncapped[name] for name in ("ndcg@10", "recall@10")} == {
        name: plain[name] for name in ("ndcg@10", "recall@10")
    }


def test_the_rule_defaults_to_what_the_chart_sets_for_ranking():
    env = yaml.safe_load((ROOT / "deploy" / "helm" / "recfleet" / "values.yaml").read_text())["ranking"]["env"]
    assert int(env["RECFLEET_RANKING_DIVERSITY_WINDOW"]) == DiversityPolicy().window
    assert float(env["RECFLEET_RANKING_MAX_CREATOR_SHARE"]) == DiversityPolicy().max_creator_share
    assert int(env["RECFLEET_RANKING_MAX_PER_CATEGORY"]) == DiversityPolicy().max_per_category


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["--max-per-category", "-1"], "--max-per-category"),
        (["--max-per-category", "3", "--diversity-window", "0"], "--diversity-window"),
    ],
)
def test_bad_diversity_arguments_are_named(args, hint):
    result = CliRunner().invoke(_app(), ["evaluate", *COMMON, "--model", "popular", *args], env={"COLUMNS": "500"})
    assert result.exit_code == 2
    assert hint in result.output


QUICK_ALS = ["--factors", "16", "--iterations", "5", "--tune-seconds", "0"]


def _evaluate(*args: str) -> dict:
    result = CliRunner().invoke(_app(), ["evaluate", *COMMON, "--protocol", "recbole", *QUICK_ALS, *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_als_with_ease_beats_als_alone_and_weight_one_is_als():
    als = _evaluate("--model", "als")
    fused = _evaluate("--model", "als+ease", "--ease-l2", "200", "--ease-als-weight", "0.5")
    alone = _evaluate("--model", "als+ease", "--ease-l2", "200", "--ease-als-weight", "1")
    assert fused["model"] == "als+ease" and fused["users_evaluated"] == als["users_evaluated"] == 609
    assert fused["ease"]["l2"] == 200 and fused["ease"]["als_weight"] == 0.5 and fused["ease"]["tuning"] is None
    # Items with two or more train users, at most RECFLEET_JOBS_EASE_MAX_ITEMS of them.
    assert 1000 < fused["ease"]["vocabulary_size"] <= 8000
    assert fused["ease"]["weights_bytes"] == 4 * fused["ease"]["vocabulary_size"] ** 2
    assert fused["ndcg@10"] > als["ndcg@10"] + 0.005
    assert alone["ndcg@10"] == als["ndcg@10"]


def test_als_with_ease_searches_its_setting_and_serves_through_the_diversity_rule():
    result = CliRunner().invoke(
        _app(),
        [
            "evaluate",
            *COMMON,
            "--protocol",
            "recbole",
            *QUICK_ALS,
            "--model",
            "als+ease",
            "--ease-tune-seconds",
            "1",
            "--max-per-category",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    # ALS alone and the given l2's six weights by seven penalties.
    assert "ease: 43 points" in result.stderr
    out = json.loads(result.stdout)
    tuning = out["ease"]["tuning"]
    assert tuning["validation"] == "the recbole/validation split" and tuning["stopped"] == "budget"
    assert {t["l2"] for t in tuning["trials"]} == {None, 500.0}
    chosen = ("l2", "als_weight", "popularity_penalty")
    assert tuple(out["ease"][key] for key in chosen) == tuple(tuning[key] for key in chosen)
    # The chosen point covers at least as much of the catalog as ALS alone on validation.
    assert tuning["best_coverage"] >= tuning["als_coverage"] > 0
    assert out["diversity"]["max_per_category"] == 3 and 0 < out["ndcg@10"] < 1


def test_als_with_ease_refuses_a_stored_version():
    result = CliRunner().invoke(
        _app(), ["evaluate", *COMMON, "--model", "als+ease", "--version", "als-x"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 2 and "als+ease trains its own models" in result.output

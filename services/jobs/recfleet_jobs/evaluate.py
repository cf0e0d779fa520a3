"""`recfleet-jobs evaluate` and `recfleet-jobs tune-als`: the offline evaluation harness.

`evaluate` splits a MovieLens directory with a named protocol (recfleet_models.protocols),
fits a model on the train part (or loads an ALS version from the artifact store) and
prints the metrics as JSON; `--model als+ranker` is the full pipeline, ALS retrieval
re-ranked by a LightGBM ranker trained on the train part only by the one ranker trainer
(recfleet_models.ranking.training, the one `train-ranker` runs) with a named preset of
its settings (recfleet_models.pipeline_eval), used only when it passes the gate
`train-ranker --promote` applies (RECFLEET_JOBS_RANKER_MIN_GAIN and _MIN_GAIN_SE;
`--no-ranker-gate` measures it regardless), otherwise the order the gate chose instead.
`--model als+ease` fuses ALS with the EASE item-to-item source (recfleet_models.ease,
`evaluation.FusedRecommender`): its l2, ALS weight and popularity penalty are searched by
`tune_ease` (the search train-als runs, with its coverage rule) on the protocol's tuning
split (`protocols.tuning_split`, never the test part) within
RECFLEET_JOBS_EASE_TUNE_SECONDS, unless `--ease-l2` and `--ease-als-weight` are both given
(the penalty then `--ease-popularity-penalty`, default the setting); the JSON's `ease`
block says what was used.
`--max-per-category N` measures what serves rather than the model alone: every model's
lists pass through the ranking service's diversity rule (at most N items of one primary
category, the first genre listed, within the first `--diversity-window` positions) before
the top k is cut; off by default, so the default figures leave diversity out.
The ALS models are trained as `train-als` trains them: hyper-parameters searched first
within the same budget by the same code (recfleet_models.tuning) on a validation split
carved from the train part, then fitted on the whole train part. `tune-als`
grid-searches ALS hyper-parameters on the protocol's validation split (carved from the
train part only; the test part is never looked at) and prints a table; `--report-test`
then scores the best setting once on the test part.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from recfleet_models.als import WEIGHTINGS, ALSParams, event_weights
from recfleet_models.data import FORMATS, Movie, Ratings, read_movielens
from recfleet_models.evaluation import (
    SERVED_SNAPSHOT,
    AlsRecommender,
    DiversifiedRecommender,
    FusedRecommender,
    PopularRecommender,
    Recommender,
    SarRecommender,
    evaluate,
    primary_categories,
)
from recfleet_models.pipeline_eval import EVALUATION_PRESET, FEATURE_SETS, RankerPipelineRecommender
from recfleet_models.popularity import normalise, window_scores
from recfleet_models.protocols import PROTOCOLS, Split, make_split, tuning_split
from recfleet_models.ranking.diversity import DiversityPolicy
from recfleet_models.ranking.features import Candidate
from recfleet_models.ranking.rules import RuleWeights, rule_scores
from recfleet_models.ranking.training import PRESETS, Fusion
from recfleet_models.tuning import HOLDOUTS, tune_ease_on_split, tune_on_ratings
from recfleet_store.artifacts import open_artifact_store
from rich.console import Console
from rich.table import Table

from .als import ease_progress, ease_summary, load_model, settings_params, tuning_plan, tuning_progress
from .settings import JobSettings

# Candidates per user that the rule formula re-ranks (the gateway asks retrieval for a
# few hundred; 100 keeps evaluation quick).
RULE_CANDIDATES = 100


class RulePipelineRecommender:
    """Plain ALS retrieval re-ranked by the ranking service's rule formula.

    Offline stand-ins for the online features: `popularity` is the normalised weighted
    count of train ratings (as the popularity job computes it), `published_at` Jan 1 of
    the title's year, "now" the newest train rating.
    """

    name = "als+rules"

    def __init__(self, retrieval: AlsRecommender, movies: Sequence[Movie], candidates: int = RULE_CANDIDATES):
        self.retrieval = retrieval
        self.published = {
            m.movie_id: datetime(m.year, 1, 1, tzinfo=UTC).timestamp() for m in movies if m.year and m.year > 1
        }
        self.candidates = candidates

    def fit(self, train: Ratings) -> None:
        self.retrieval.fit(train)
        weights = event_weights(["rating"] * len(train), train.ratings, ALSParams())
        scores = window_scores(train.movie_ids.astype(str).tolist(), weights, train.timestamps)["all"]
        self.popularity = {int(item): value for item, value in normalise(scores).items()}
        self.now = float(train.timestamps.max())

    def recommend(self, users: Sequence[int], k: int, seen: Ratings) -> dict[int, list[int]]:
        model = self.retrieval.model
        if model is None:
            raise RuntimeError("fit() first")
        rules = RuleWeights()
        lists = self.retrieval.recommend(users, max(k, self.candidates), seen)
        out: dict[int, list[int]] = {}
        for user, items in lists.items():
            if not items:
                continue
            row = model.user_row(str(user))
            found = [model.item_row(str(item)) for item in items]
            columns = [c for c in found if c is not None]
            if row is None or len(columns) != len(found):
                continue
            retrieval_scores = model.item_factors[columns] @ model.user_factors[row]
            candidates = [
                Candidate(
                    item_id=str(item),
                    score=float(score),
                    popularity=self.popularity.get(item, 0.0),
                    published_at=self.published.get(item, 0.0),
                )
                for item, score in zip(items, retrieval_scores.tolist(), strict=False)
            ]
            ranked, _ = rule_scores(candidates, self.now, rules)
            order = sorted(range(len(items)), key=lambda i: -ranked[i])
            out[user] = [items[i] for i in order[:k]]
        return out


MODELS = ("popular", "sar", "als", "als+rules", "als+ranker", "als+ease", "als+ease+ranker")
# The documented search space of tune-als (docs/evaluation.md).
GRID = {
    "factors": (64, 128),
    "regularization": (10.0, 30.0, 60.0),
    "alpha": (1.0, 2.0, 4.0),
    "iterations": (15,),
}


def _choice(value: str, allowed: tuple[str, ...], hint: str) -> str:
    if value not in allowed:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(allowed)}", param_hint=hint)
    return value


def _load_data(dataset: str, fmt: str):
    _choice(fmt, FORMATS, "--format")
    if not Path(dataset).is_dir():
        raise typer.BadParameter(f"{dataset} is not a directory", param_hint="--dataset")
    try:
        return read_movielens(dataset, fmt)
    except (FileNotFoundError, ValueError) as error:
        raise typer.BadParameter(str(error), param_hint="--dataset") from error


def _load_split(dataset: str, fmt: str, protocol: str):
    data = _load_data(dataset, fmt)
    _choice(protocol, PROTOCOLS, "--protocol")
    return data, make_split(data.ratings, protocol)


def evaluate_command(
    dataset: str = typer.Option(
        "", help="MovieLens directory, e.g. ../shared/datasets/ml-100k; default RECFLEET_JOBS_DATA_DIR"
    ),
    fmt: str = typer.Option("ml-latest-small", "--format", help=f"one of {', '.join(FORMATS)}"),
    protocol: str = typer.Option("recbole", help=f"one of {', '.join(PROTOCOLS)}"),
    model: str = typer.Option("als", help=f"one of {', '.join(MODELS)}"),
    version: str = typer.Option("", help="als: evaluate this version from the artifact store instead of training"),
    k: int = typer.Option(10, min=1, help="list length"),
    factors: int | None = typer.Option(None, min=1),
    iterations: int | None = typer.Option(None, min=1),
    regularization: float | None = typer.Option(None, min=0.0),
    alpha: float | None = typer.Option(None),
    rating_offset: float | None = typer.Option(None),
    weighting: str | None = typer.Option(None, help=f"one of {', '.join(WEIGHTINGS)}"),
    ranker_preset: str = typer.Option(
        EVALUATION_PRESET, help=f"als+ranker: the trainer's settings, one of {', '.join(PRESETS)}"
    ),
    ranker_candidates: int | None = typer.Option(
        None, min=1, help="als+ranker: ALS candidates per user the ranker orders (default: the preset's)"
    ),
    ranker_features: str = typer.Option(
        "service", help=f"als+ranker: one of {', '.join(FEATURE_SETS)} (extended = offline-only extras)"
    ),
    ranker_folds: int | None = typer.Option(
        None, min=1, help="als+ranker: random label folds carved from train (default: the preset's)"
    ),
    ranker_gate: bool = typer.Option(
        True,
        help="als+ranker: order by the ranker only if it passes train-ranker's promotion gate"
        " (RECFLEET_JOBS_RANKER_MIN_GAIN, _MIN_GAIN_SE), else by what the gate chose;"
        " --no-ranker-gate: always by the ranker",
    ),
    tune_seconds: float | None = typer.Option(
        None,
        min=0.0,
        help="search ALS parameters this long as train-als does, 0 = off; default RECFLEET_JOBS_ALS_TUNE_SECONDS",
    ),
    tune_trials: int | None = typer.Option(
        None, min=0, help="at most this many points; default RECFLEET_JOBS_ALS_TUNE_MAX_TRIALS"
    ),
    tune_holdout: str | None = typer.Option(
        None, help=f"validation items: {' or '.join(HOLDOUTS)}; default RECFLEET_JOBS_ALS_TUNE_HOLDOUT"
    ),
    ease_l2: float | None = typer.Option(
        None, min=1e-9, help="als+ease: EASE's l2, > 0 (with --ease-als-weight: no search)"
    ),
    ease_als_weight: float | None = typer.Option(
        None, min=0.0, max=1.0, help="als+ease: the ALS share of the fused score, 1 = ALS alone"
    ),
    ease_popularity_penalty: float | None = typer.Option(
        None,
        min=0.0,
        help="als+ease: subtract this many times the item's standardised log user count (with l2 and"
        " weight given: default RECFLEET_JOBS_EASE_POPULARITY_PENALTY)",
    ),
    ease_tune_seconds: float | None = typer.Option(
        None, min=0.0, help="als+ease: search l2, weight and penalty this long; default RECFLEET_JOBS_EASE_TUNE_SECONDS"
    ),
    max_per_category: int = typer.Option(
        0,
        min=0,
        help="apply ranking's diversity rule: at most this many items of one primary category"
        " (ranking serves 3, RECFLEET_RANKING_MAX_PER_CATEGORY); 0 = off",
    ),
    diversity_window: int = typer.Option(
        DiversityPolicy().window,
        min=1,
        help="with --max-per-category: the first positions the cap covers (RECFLEET_RANKING_DIVERSITY_WINDOW)",
    ),
) -> None:
    """Evaluate a model on a MovieLens dataset with a named protocol; prints JSON metrics."""
    _choice(model, MODELS, "--model")
    if ease_popularity_penalty is not None and not math.isfinite(ease_popularity_penalty):
        raise typer.BadParameter("must be a finite number", param_hint="--ease-popularity-penalty")
    _choice(ranker_features, FEATURE_SETS, "--ranker-features")
    _choice(ranker_preset, tuple(PRESETS), "--ranker-preset")
    if model in ("als+ranker", "als+ease", "als+ease+ranker") and version:
        raise typer.BadParameter(f"{model} trains its own models on the train part", param_hint="--version")
    preset = PRESETS[ranker_preset]
    changes: dict[str, Any] = {}
    if ranker_candidates is not None:
        changes["als_candidates"] = ranker_candidates
    if ranker_folds is not None:
        changes.update(folds=ranker_folds, label_share=min(preset.label_share, 1.0 / ranker_folds))
    try:
        ranker_params = replace(preset, **changes)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    settings = JobSettings()
    data, split = _load_split(dataset or settings.data_dir, fmt, protocol)
    started = time.perf_counter()
    details: dict[str, Any] = {}
    recommender: Recommender
    pipeline: RankerPipelineRecommender | None = None
    als: AlsRecommender | None = None
    if model == "popular":
        recommender = PopularRecommender()
    elif model == "sar":
        recommender = SarRecommender()
    elif version:
        try:
            loaded = load_model(open_artifact_store(settings.artifact_url), version)
        except (FileNotFoundError, ValueError) as error:
            raise typer.BadParameter(str(error), param_hint="--version") from error
        if not all(item.isdigit() for item in loaded.item_ids):
            raise typer.BadParameter(f"version {version!r} was not trained on MovieLens ids", param_hint="--version")
        recommender = als = AlsRecommender(loaded.params, loaded)
        details = {"version": version, "params": loaded.params.as_dict()}
    else:
        try:
            params = settings_params(
                settings,
                factors=factors,
                iterations=iterations,
                regularization=regularization,
                alpha=alpha,
                rating_offset=rating_offset,
                weighting=weighting,
            )
            plan = tuning_plan(
                settings,
                tune_seconds,
                tune_trials,
                tune_holdout,
                factors=factors,
                regularization=regularization,
                alpha=alpha,
                weighting=weighting,
            )
        except ValueError as error:
            raise typer.BadParameter(str(error)) from error
        with tuning_progress(plan) as on_trial:
            tuned = tune_on_ratings(
                split.train, params, plan.seconds, plan.holdout, on_trial=on_trial, **plan.options()
            )
        recommender = als = AlsRecommender(tuned.chosen)
        details = {"params": tuned.chosen.as_dict(), "tuning": tuned.as_dict()}
    if model == "als+rules" and als is not None:
        recommender = RulePipelineRecommender(als, data.movies)
    fusion: Fusion | None = None
    if model == "als+ease+ranker" and als is not None:
        # The ranker over the fused candidates a version with EASE serves.
        _, details["ease"] = _fused(
            split, als, settings, (ease_l2, ease_als_weight, ease_popularity_penalty), ease_tune_seconds
        )
        fusion = Fusion.of(details["ease"])
    if model in ("als+ranker", "als+ease+ranker") and als is not None:
        recommender = pipeline = RankerPipelineRecommender(
            data.movies,
            als.params,
            ranker_params,
            ranker_features,
            settings.ranker_min_gain,
            ranker_gate,
            settings.ranker_min_gain_se,
            fusion,
        )
    if model == "als+ease" and als is not None:
        recommender, details["ease"] = _fused(
            split, als, settings, (ease_l2, ease_als_weight, ease_popularity_penalty), ease_tune_seconds
        )
    if max_per_category:
        policy = DiversityPolicy(max_per_category, diversity_window)
        recommender = DiversifiedRecommender(recommender, primary_categories(data.movies), policy)
        details["diversity"] = {
            "max_per_category": policy.max_per_category,
            "window": policy.window,
            "candidates": max(k, SERVED_SNAPSHOT),
        }
    metrics = evaluate(split, recommender, k)
    fused = recommender.inner if isinstance(recommender, DiversifiedRecommender) else recommender
    if isinstance(fused, FusedRecommender) and fused.ease is not None:
        details["ease"].update(vocabulary_size=len(fused.ease.item_ids), weights_bytes=int(fused.ease.weights.nbytes))
    if pipeline is not None:
        details.update(pipeline.details())
    out = {
        "dataset": fmt,
        "protocol": protocol,
        "model": model,
        **metrics.as_dict(),
        "train_ratings": len(split.train),
        "test_ratings": len(split.test),
        "seconds": round(time.perf_counter() - started, 2),
        **details,
    }
    typer.echo(json.dumps(out, indent=2))


def _fused(
    split: Split,
    als: AlsRecommender,
    settings: JobSettings,
    given: tuple[float | None, float | None, float | None],
    tune_seconds: float | None,
) -> tuple[FusedRecommender, dict[str, Any]]:
    """ALS fused with EASE: l2 and weight as given (the popularity penalty as given or
    configured), or all three searched on the tuning split."""
    l2, als_weight, penalty = given
    tuning: dict[str, Any] | None = None
    if l2 is None or als_weight is None:
        budget = settings.ease_tune_seconds if tune_seconds is None else tune_seconds
        with ease_progress(budget) as on_trial:
            result = tune_ease_on_split(
                tuning_split(split),
                als.params,
                budget,
                l2=settings.ease_l2 if l2 is None else l2,
                als_weight=settings.ease_als_weight if als_weight is None else als_weight,
                popularity_penalty=settings.ease_popularity_penalty if penalty is None else penalty,
                max_items=settings.ease_max_items,
                min_users=settings.ease_min_users,
                min_gain_se=settings.als_tune_min_gain_se,
                min_coverage_ratio=settings.ease_min_coverage_ratio,
                on_trial=on_trial,
            )
        typer.echo(ease_summary(result), err=True)
        l2, als_weight, penalty, tuning = result.l2, result.als_weight, result.popularity_penalty, result.as_dict()
    penalty = settings.ease_popularity_penalty if penalty is None else penalty
    fused = FusedRecommender(als, l2, als_weight, settings.ease_max_items, settings.ease_min_users, penalty)
    # The vocabulary size is known once fitted; `details` holds this dict until printed.
    block: dict[str, Any] = {"l2": l2, "als_weight": als_weight, "max_items": settings.ease_max_items}
    block["popularity_penalty"] = penalty if als_weight < 1.0 else 0.0
    block.update(min_users=settings.ease_min_users, vocabulary_size=None, weights_bytes=None, tuning=tuning)
    return fused, block


def _floats(text: str, hint: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise typer.BadParameter(f"{text!r}: expected comma-separated numbers", param_hint=hint) from error
    if not values:
        raise typer.BadParameter("at least one value is needed", param_hint=hint)
    return values


def tune_als_command(
    dataset: str = typer.Option(..., help="MovieLens directory"),
    fmt: str = typer.Option(..., "--format", help=f"one of {', '.join(FORMATS)}"),
    protocol: str = typer.Option("recommenders-ml100k", help=f"one of {', '.join(PROTOCOLS)}"),
    factors: str = typer.Option(",".join(map(str, GRID["factors"])), help="comma-separated grid"),
    regularization: str = typer.Option(",".join(map(str, GRID["regularization"])), help="comma-separated grid"),
    alpha: str = typer.Option(",".join(map(str, GRID["alpha"])), help="comma-separated grid"),
    iterations: str = typer.Option(",".join(map(str, GRID["iterations"])), help="comma-separated grid"),
    weighting: str = typer.Option("none", help=f"one of {', '.join(WEIGHTINGS)}"),
    k: int = typer.Option(10, min=1),
    report_test: bool = typer.Option(False, "--report-test", help="score the best setting once on the test part"),
) -> None:
    """Grid-search ALS on a validation split carved from the train part; prints a table."""
    _choice(weighting, WEIGHTINGS, "--weighting")
    _, split = _load_split(dataset, fmt, protocol)
    validation = tuning_split(split)
    grid = list(
        itertools.product(
            [int(v) for v in _floats(factors, "--factors")],
            _floats(regularization, "--regularization"),
            _floats(alpha, "--alpha"),
            [int(v) for v in _floats(iterations, "--iterations")],
        )
    )
    console = Console(file=sys.stderr)
    rows = []
    with console.status("tuning") as status:
        for n, (f, reg, a, it) in enumerate(grid, start=1):
            status.update(f"tuning {n}/{len(grid)}: factors={f} regularization={reg} alpha={a} iterations={it}")
            params = ALSParams(factors=f, regularization=reg, alpha=a, iterations=it, weighting=weighting)
            started = time.perf_counter()
            metrics = evaluate(validation, AlsRecommender(params), k)
            rows.append((params, metrics, time.perf_counter() - started))
    rows.sort(key=lambda row: row[1].ndcg, reverse=True)
    table = Table(title=f"ALS grid on {fmt} / {validation.protocol} (k={k}), best first")
    for column in (
        "factors",
        "regularization",
        "alpha",
        "iterations",
        f"ndcg@{k}",
        f"precision@{k}",
        f"recall@{k}",
        f"map@{k}",
        "seconds",
    ):
        table.add_column(column, justify="right")
    for params, metrics, seconds in rows:
        table.add_row(
            str(params.factors),
            f"{params.regularization:g}",
            f"{params.alpha:g}",
            str(params.iterations),
            f"{metrics.ndcg:.4f}",
            f"{metrics.precision:.4f}",
            f"{metrics.recall:.4f}",
            f"{metrics.map:.4f}",
            f"{seconds:.1f}",
        )
    Console(width=140).print(table)
    best = rows[0][0]
    summary = {
        "best": {
            "factors": best.factors,
            "regularization": best.regularization,
            "alpha": best.alpha,
            "iterations": best.iterations,
            "weighting": best.weighting,
        },
        "validation": rows[0][1].as_dict(),
    }
    if report_test:
        summary["test"] = evaluate(split, AlsRecommender(best), k).as_dict()
    typer.echo(json.dumps(summary))


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)
    app.command("tune-als")(tune_als_command)

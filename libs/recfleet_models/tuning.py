"""ALS hyper-parameter search on a validation split carved from the training data.

`tune_als` hides part of each user's items (`evaluation.holdout_split`: with `holdout=
"recent"` the items each user came to last, with `"random"` a seeded random share),
fits ALS on the rest for each point it tries and scores top-k lists against the hidden
items with the harness's metrics. Nothing outside the matrix it is given (the test part
of an offline protocol, for one) is looked at.

The search is ordered so that a short budget is spent where it matters:

1. **Seeds**: the given setting (the defaults were chosen on MovieLens star ratings)
   and the textbook implicit-feedback one (`TEXTBOOK`: BM25 weighting, 64 factors,
   implicit's regularization 0.01 and alpha 1).
2. **Coarse**: one point per weighting and third of the regularization grid (0.01-0.3,
   1-10, 30-300: implicit does not scale the penalty by a user's interaction count, so
   star ratings want tens where sparse play counts may want hundredths), alpha drawn
   from its grid, seeded.
3. **Refine**: from the best point so far, its neighbours one grid step away in
   regularization, alpha and factors and the other weightings; move to the best
   neighbour while one improves, stop when none does (`converged`).

A point starts only while the time used plus its expected length (the slowest seconds
per factor seen so far, times its factors) fits in the budget, and at most `max_trials`
points are tried; the first always runs. An axis given a single value (a command-line
option, say) is not searched.

The given setting is kept unless the best point beats it on the validation users by
more than `min_gain_se` standard errors of the per-user NDCG difference (paired, same
users): the best of some thirty noisy scores is expected to look better than it is,
and the given setting has earned its place elsewhere (on MovieLens the search finds
nothing significantly better than today's defaults).

`tune_ease` then decides whether the EASE source (`recfleet_models.ease`) joins ALS and
with which l2, mixing weight and popularity penalty: on the same kind of validation
split it fits ALS with the chosen setting once and X^T X once, solves B for each l2 of
its grid (nearest the given l2 first, while the budget allows) and scores the fused
lists of every ALS weight and penalty. Only points whose catalog coverage is at least
`min_coverage_ratio` times ALS alone's compete (EASE alone favours popular items; the
penalty buys the coverage back), and the best of them is adopted only when it beats
ALS alone (weight 1) by more than `min_gain_se` standard errors of the paired per-user
NDCG difference; otherwise EASE stays off.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import scipy.sparse as sp

from .als import (
    WEIGHTINGS,
    AlsModel,
    ALSParams,
    build_interaction_matrix,
    build_interaction_times,
    fit_als,
    top_k_batch,
)
from .data import Ratings
from .ease import gram, mix, penalty_term, popularity, solve, standardise, valid_penalty, vocabulary
from .evaluation import MatrixHoldout, holdout_lists, holdout_split, ranking_metrics, user_ndcg
from .protocols import Split

# What a reference implicit-ALS run looks like without tuning (implicit's examples
# weight play counts with BM25, K1 100 / B 0.8; its default regularization and alpha).
TEXTBOOK: dict[str, Any] = {"factors": 64, "regularization": 0.01, "alpha": 1.0, "weighting": "bm25"}
HOLDOUTS = ("recent", "random")
# Why a search ended: not run, no neighbour improved, the time budget, the point cap,
# or no user with enough interactions to hold any out.
STOP_REASONS = ("off", "converged", "budget", "max-trials", "no-validation-users")


@dataclass(frozen=True)
class SearchSpace:
    """The grids the search moves on (iterations, BM25's K1 / B, event weights and value
    transforms stay as given)."""

    factors: tuple[int, ...] = (32, 64, 128)
    regularization: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
    alpha: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
    weighting: tuple[str, ...] = ("none", "bm25", "log1p")

    def __post_init__(self) -> None:
        for name in ("factors", "regularization", "alpha", "weighting"):
            if not getattr(self, name):
                raise ValueError(f"the search space needs at least one {name} value")
        if any(w not in WEIGHTINGS for w in self.weighting):
            raise ValueError(f"weightings must be among {', '.join(WEIGHTINGS)}")
        if min(self.factors) < 1 or min(self.regularization) < 0 or min(self.alpha) <= 0:
            raise ValueError("factors must be >= 1, regularization >= 0 and alpha > 0")

    def pinned(self, **values: Any) -> SearchSpace:
        """This space with the given axes fixed to one value each (None leaves an axis)."""
        return replace(self, **{axis: (value,) for axis, value in values.items() if value is not None})


@dataclass(frozen=True)
class Trial:
    """One point tried: its setting, validation NDCG@k / recall@k, seconds for fit and
    scoring, and the phase that proposed it."""

    params: ALSParams
    ndcg: float
    recall: float
    seconds: float
    phase: str
    # NDCG@k of each validation user, users in row order (for paired comparisons).
    per_user: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)

    def as_dict(self, k: int) -> dict[str, Any]:
        return {
            **_axes(self.params),
            f"ndcg@{k}": round(self.ndcg, 5),
            f"recall@{k}": round(self.recall, 5),
            "seconds": round(self.seconds, 2),
            "phase": self.phase,
        }


@dataclass(frozen=True)
class TuningResult:
    """What the search chose, from what, and everything it tried in order."""

    chosen: ALSParams
    given: ALSParams
    trials: tuple[Trial, ...] = ()
    stopped: str = "off"
    seconds: float = 0.0
    budget_seconds: float = 0.0
    validation: str = ""
    validation_users: int = 0
    k: int = 10
    min_gain_se: float = 0.0

    @property
    def best(self) -> Trial | None:
        return max(self.trials, key=lambda t: t.ndcg) if self.trials else None

    def trial_of(self, params: ALSParams) -> Trial | None:
        return next((t for t in self.trials if _key(t.params) == _key(params)), None)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (what `train-als` stores with a version)."""
        chosen, given, best = self.trial_of(self.chosen), self.trial_of(self.given), self.best
        gain = improvement(best, given) if best is not None and given is not None else (0.0, 0.0)
        return {
            "budget_seconds": self.budget_seconds,
            "seconds": round(self.seconds, 2),
            "stopped": self.stopped,
            "validation": self.validation,
            "validation_users": self.validation_users,
            "min_gain_se": self.min_gain_se,
            "chosen": _axes(self.chosen),
            "kept_given": _key(self.chosen) == _key(self.given),
            f"chosen_ndcg@{self.k}": round(chosen.ndcg, 5) if chosen else None,
            f"given_ndcg@{self.k}": round(given.ndcg, 5) if given else None,
            f"best_gain_ndcg@{self.k}": round(gain[0], 5),
            "best_gain_se": round(gain[1], 5) if np.isfinite(gain[1]) else None,
            "trials": [t.as_dict(self.k) for t in self.trials],
        }


def _key(params: ALSParams) -> tuple[int, float, float, str]:
    return (params.factors, float(params.regularization), float(params.alpha), params.weighting)


def _axes(params: ALSParams) -> dict[str, Any]:
    return {
        "factors": params.factors,
        "regularization": params.regularization,
        "alpha": params.alpha,
        "weighting": params.weighting,
    }


def _neighbours(value: float, grid: tuple[float, ...] | tuple[int, ...]) -> list[float]:
    """The grid values next to `value` on either side (it need not be on the grid)."""
    below = [g for g in grid if g < value]
    above = [g for g in grid if g > value]
    return ([max(below)] if below else []) + ([min(above)] if above else [])


def textbook_point(base: ALSParams, space: SearchSpace) -> ALSParams:
    """`TEXTBOOK` on the axes the space searches; pinned axes keep their value."""
    changes = {axis: value for axis, value in TEXTBOOK.items() if len(getattr(space, axis)) > 1}
    pinned = {axis: getattr(space, axis)[0] for axis in TEXTBOOK if len(getattr(space, axis)) == 1}
    return replace(base, **changes, **pinned)


def coarse_points(base: ALSParams, space: SearchSpace, seed: int) -> list[ALSParams]:
    """One point per weighting and third of the regularization grid, alpha at random."""
    rng = np.random.default_rng(seed)
    regs = sorted(space.regularization)
    bands = [band.tolist() for band in np.array_split(np.array(regs), min(3, len(regs)))]
    factors = base.factors if base.factors in space.factors else space.factors[0]
    points = []
    for band in bands:
        for weighting in space.weighting:
            points.append(
                replace(
                    base,
                    factors=factors,
                    regularization=float(band[int(rng.integers(len(band)))]),
                    alpha=float(space.alpha[int(rng.integers(len(space.alpha)))]),
                    weighting=weighting,
                )
            )
    return points


def refine_points(best: ALSParams, space: SearchSpace) -> list[ALSParams]:
    """Points one step away from `best` along each axis of the search space."""
    points = [replace(best, regularization=float(r)) for r in _neighbours(best.regularization, space.regularization)]
    points += [replace(best, alpha=float(a)) for a in _neighbours(best.alpha, space.alpha)]
    points += [replace(best, weighting=w) for w in space.weighting if w != best.weighting]
    points += [replace(best, factors=int(f)) for f in _neighbours(best.factors, space.factors)]
    return points


def improvement(challenger: Trial | EaseTrial, incumbent: Trial | EaseTrial) -> tuple[float, float]:
    """Mean per-user NDCG gain of `challenger` over `incumbent` on the same validation
    users, and its standard error (inf with fewer than two users)."""
    diff = challenger.per_user - incumbent.per_user
    if len(diff) < 2:
        return (float(diff.mean()) if len(diff) else 0.0), float("inf")
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))


class _Stop(Exception):
    def __init__(self, reason: str):
        self.reason = reason


def tune_als(
    matrix: sp.csr_matrix,
    base: ALSParams,
    budget_seconds: float,
    *,
    times: sp.csr_matrix | None = None,
    space: SearchSpace | None = None,
    max_trials: int = 40,
    k: int = 10,
    fraction: float = 0.2,
    min_interactions: int = 5,
    min_gain_se: float = 2.0,
    seed: int = 42,
    on_trial: Callable[[Trial, int], None] | None = None,
) -> TuningResult:
    """Search ALS settings on a validation split of `matrix` within `budget_seconds`.

    `base` is the given setting, tried first and kept unless beaten significantly (see
    the module docstring). With `times` (`als.build_interaction_times` of the same
    events) the validation items are each user's most recent, otherwise random. A budget
    of 0 or `max_trials` 0 tries nothing and returns `base`. `on_trial(trial, number)` is
    called after each point, for progress.
    """
    if budget_seconds < 0:
        raise ValueError("the tuning budget must be >= 0 seconds")
    if max_trials < 0:
        raise ValueError("max_trials must be >= 0")
    if min_gain_se < 0:
        raise ValueError("min_gain_se must be >= 0")
    space = space or SearchSpace()
    off = TuningResult(base, base, budget_seconds=budget_seconds, k=k, min_gain_se=min_gain_se)
    if budget_seconds == 0 or max_trials == 0:
        return off
    started = time.perf_counter()
    validation = (
        f"each user's most recent {fraction:.0%} of items" if times is not None else f"a random {fraction:.0%} per user"
    ) + f", users with {min_interactions}+ items"
    try:
        holdout = holdout_split(matrix, fraction, min_interactions, seed, times)
    except ValueError:
        return replace(off, stopped="no-validation-users", validation=validation)
    trials: list[Trial] = []
    tried: dict[tuple[int, float, float, str], Trial] = {}
    seconds_per_factor = 0.0

    def attempt(params: ALSParams, phase: str) -> None:
        nonlocal seconds_per_factor
        if _key(params) in tried:
            return
        if len(trials) >= max_trials:
            raise _Stop("max-trials")
        expected = seconds_per_factor * params.factors
        if trials and time.perf_counter() - started + expected > budget_seconds:
            raise _Stop("budget")
        trial = _score(holdout, params, k, phase)
        seconds_per_factor = max(seconds_per_factor, trial.seconds / params.factors)
        trials.append(trial)
        tried[_key(params)] = trial
        if on_trial is not None:
            on_trial(trial, len(trials))

    stopped = "converged"
    try:
        for params in (base, textbook_point(base, space)):
            attempt(params, "seed")
        for params in coarse_points(base, space, seed):
            attempt(params, "coarse")
        while True:
            current = max(trials, key=lambda t: t.ndcg)
            for params in refine_points(current.params, space):
                attempt(params, "refine")
            if max(trials, key=lambda t: t.ndcg) is current:
                break
    except _Stop as stop:
        stopped = stop.reason
    given = tried[_key(base)]
    best = max(trials, key=lambda t: t.ndcg)
    gain, se = improvement(best, given)
    chosen = best.params if best is not given and gain > min_gain_se * se else base
    return TuningResult(
        chosen,
        base,
        tuple(trials),
        stopped,
        time.perf_counter() - started,
        budget_seconds,
        validation,
        len(holdout.truth),
        k,
        min_gain_se,
    )


def tune_on_ratings(
    train: Ratings, base: ALSParams, budget_seconds: float, holdout: str = "recent", **options: Any
) -> TuningResult:
    """`tune_als` on MovieLens ratings as `evaluation.AlsRecommender` weights them (every
    rating an event of type `rating`); `holdout` is "recent" or "random"."""
    if holdout not in HOLDOUTS:
        raise ValueError(f"holdout must be one of {', '.join(HOLDOUTS)}, got {holdout!r}")
    events = (train.user_ids, train.movie_ids, ["rating"] * len(train), train.ratings)
    matrix, _, _ = build_interaction_matrix(*events, base)
    times = build_interaction_times(*events, train.timestamps, base) if holdout == "recent" else None
    return tune_als(matrix, base, budget_seconds, times=times, **options)


def _score(holdout: MatrixHoldout, params: ALSParams, k: int, phase: str) -> Trial:
    started = time.perf_counter()
    lists = holdout_lists(fit_als(holdout.train, params), holdout, k)
    metrics = ranking_metrics(lists, holdout.truth, k, int(np.unique(holdout.train.indices).size))
    per_user = user_ndcg(lists, holdout.truth, k)
    return Trial(
        params,
        metrics.ndcg,
        metrics.recall,
        time.perf_counter() - started,
        phase,
        np.array([per_user[user] for user in sorted(per_user)]),
    )


# tune_ease's grids: l2 of EASE, the ALS share of the fused score (1 = ALS alone) and the
# popularity penalty (`ease.fused`; 0 = none).
EASE_L2_GRID: tuple[float, ...] = (100.0, 200.0, 500.0, 1000.0, 2000.0)
EASE_ALS_WEIGHTS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)
EASE_PENALTIES: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
# The EASE search scores at most this many validation users (a seeded sample beyond it):
# every point scores each of them over the whole catalog, so this bounds a point's time
# on a large data set while keeping the standard error of a gain near 1% of NDCG.
EASE_MAX_VALIDATION_USERS = 10_000
# Why EASE is on or off: adopted; the best point is ALS alone or not significantly
# better; no budget; no user to hold items out of; no item with enough users.
EASE_REASONS = ("adopted", "no-gain", "off", "no-validation-users", "no-vocabulary")
# Users scored at once: about this many catalog scores per block.
_SCORE_BLOCK = 1 << 24


@dataclass(frozen=True)
class EaseTrial:
    """One (l2, ALS weight, popularity penalty) point: validation NDCG@k / recall@k, the
    catalog coverage of its lists and the seconds it took (its share of the l2's solve
    plus its scoring). ALS alone (weight 1) reads no l2 and has no penalty."""

    l2: float | None
    als_weight: float
    ndcg: float
    recall: float
    seconds: float
    per_user: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)
    popularity_penalty: float = 0.0
    coverage: float = 0.0

    def as_dict(self, k: int) -> dict[str, Any]:
        return {
            "l2": self.l2,
            "als_weight": self.als_weight,
            "popularity_penalty": self.popularity_penalty,
            f"ndcg@{k}": round(self.ndcg, 5),
            f"recall@{k}": round(self.recall, 5),
            "coverage": round(self.coverage, 5),
            "seconds": round(self.seconds, 2),
        }


@dataclass(frozen=True)
class EaseTuningResult:
    """Whether EASE joins ALS (`als_weight` < 1), with which l2 and popularity penalty, and
    every point tried."""

    l2: float
    als_weight: float
    reason: str
    popularity_penalty: float = 0.0
    trials: tuple[EaseTrial, ...] = ()
    stopped: str = "off"
    seconds: float = 0.0
    budget_seconds: float = 0.0
    validation: str = ""
    validation_users: int = 0
    vocabulary_size: int = 0
    max_items: int = 0
    min_users: int = 0
    k: int = 10
    min_gain_se: float = 0.0
    min_coverage_ratio: float = 0.0

    @property
    def adopted(self) -> bool:
        return self.als_weight < 1.0

    @property
    def eligible(self) -> tuple[EaseTrial, ...]:
        """The points that compete: ALS alone and every point whose coverage is at least
        `min_coverage_ratio` times ALS alone's."""
        alone = self.als_alone
        floor = self.min_coverage_ratio * alone.coverage if alone is not None else 0.0
        return tuple(t for t in self.trials if t is alone or t.coverage >= floor)

    @property
    def best(self) -> EaseTrial | None:
        """The eligible point with the best NDCG."""
        return max(self.eligible, key=lambda t: t.ndcg) if self.trials else None

    @property
    def best_ignoring_coverage(self) -> EaseTrial | None:
        return max(self.trials, key=lambda t: t.ndcg) if self.trials else None

    @property
    def als_alone(self) -> EaseTrial | None:
        return next((t for t in self.trials if t.als_weight == 1.0), None)

    def gain(self) -> tuple[float, float]:
        """The best point's mean per-user NDCG gain over ALS alone and its standard error."""
        best, alone = self.best, self.als_alone
        return improvement(best, alone) if best is not None and alone is not None else (0.0, math.inf)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (what `train-als` stores with a version)."""
        best, alone, unconstrained = self.best, self.als_alone, self.best_ignoring_coverage
        gain, se = self.gain()
        return {
            "adopted": self.adopted,
            "reason": self.reason,
            "l2": self.l2,
            "als_weight": self.als_weight,
            "popularity_penalty": self.popularity_penalty,
            "budget_seconds": self.budget_seconds,
            "seconds": round(self.seconds, 2),
            "stopped": self.stopped,
            "validation": self.validation,
            "validation_users": self.validation_users,
            "vocabulary_size": self.vocabulary_size,
            "max_items": self.max_items,
            "min_users": self.min_users,
            "min_gain_se": self.min_gain_se,
            "min_coverage_ratio": self.min_coverage_ratio,
            f"als_ndcg@{self.k}": round(alone.ndcg, 5) if alone else None,
            "als_coverage": round(alone.coverage, 5) if alone else None,
            f"best_ndcg@{self.k}": round(best.ndcg, 5) if best else None,
            "best_coverage": round(best.coverage, 5) if best else None,
            f"best_ndcg@{self.k}_ignoring_coverage": round(unconstrained.ndcg, 5) if unconstrained else None,
            f"best_gain_ndcg@{self.k}": round(gain, 5),
            "best_gain_se": round(se, 5) if math.isfinite(se) else None,
            "trials": [t.as_dict(self.k) for t in self.trials],
        }


def ease_trial_count(
    l2_grid: tuple[float, ...] = EASE_L2_GRID,
    weights: tuple[float, ...] = EASE_ALS_WEIGHTS,
    penalties: tuple[float, ...] = EASE_PENALTIES,
) -> int:
    """Points a search without a budget limit tries (ALS alone once, then every l2,
    weight and penalty)."""
    return 1 + len(l2_grid) * len([w for w in weights if w != 1.0]) * len(penalties)


def tune_ease(
    matrix: sp.csr_matrix,
    params: ALSParams,
    budget_seconds: float,
    *,
    times: sp.csr_matrix | None = None,
    fraction: float = 0.2,
    min_interactions: int = 5,
    seed: int = 42,
    **options: Any,
) -> EaseTuningResult:
    """Search EASE's l2 and ALS weight on a validation split of `matrix` (users x items,
    as train-als builds it), ALS fitted with `params` (the setting tune_als chose).

    The split is tune_als's: with `times` each user's most recent `fraction` of items,
    otherwise a seeded random share, of the users with `min_interactions`. A budget of 0
    tries nothing and returns the given `l2` / `als_weight`. Other options: see
    `tune_ease_holdout`.
    """
    _check_ease_options(budget_seconds, **options)
    validation = (
        f"each user's most recent {fraction:.0%} of items" if times is not None else f"a random {fraction:.0%} per user"
    ) + f", users with {min_interactions}+ items"
    if budget_seconds == 0:
        return tune_ease_holdout(None, params, 0, validation=validation, **options)
    try:
        holdout = holdout_split(matrix, fraction, min_interactions, seed, times)
    except ValueError:
        holdout = None
    return tune_ease_holdout(holdout, params, budget_seconds, validation=validation, **options)


def tune_ease_on_split(split: Split, params: ALSParams, budget_seconds: float, **options: Any) -> EaseTuningResult:
    """`tune_ease_holdout` on an offline protocol's tuning split (`protocols.tuning_split`):
    ALS and EASE are fitted on its train ratings (weighted as `evaluation.AlsRecommender`
    weights them) and scored against its test ratings."""
    _check_ease_options(budget_seconds, **options)
    train = split.train
    matrix, users, items = build_interaction_matrix(
        train.user_ids, train.movie_ids, ["rating"] * len(train), train.ratings, params
    )
    user_rows = {int(user): row for row, user in enumerate(users)}
    item_cols = {int(item): col for col, item in enumerate(items)}
    truth: dict[int, set[int]] = {}
    for user, item in zip(split.test.user_ids.tolist(), split.test.movie_ids.tolist(), strict=True):
        row, col = user_rows.get(user), item_cols.get(item)
        if row is not None and col is not None:
            truth.setdefault(row, set()).add(col)
    holdout = MatrixHoldout(matrix, truth) if truth else None
    return tune_ease_holdout(holdout, params, budget_seconds, validation=f"the {split.protocol} split", **options)


def _check_ease_options(budget_seconds: float, **options: Any) -> None:
    if budget_seconds < 0:
        raise ValueError("the tuning budget must be >= 0 seconds")
    if options.get("min_gain_se", 0.0) < 0:
        raise ValueError("min_gain_se must be >= 0")
    if options.get("max_items", 1) < 1 or options.get("min_users", 1) < 1:
        raise ValueError("max_items and min_users must be at least 1")
    if any(not 0.0 <= w <= 1.0 for w in options.get("weights", ())) or 1.0 not in options.get("weights", (1.0,)):
        raise ValueError("ALS weights must be within [0, 1] and include 1 (ALS alone)")
    if any(v <= 0 for v in options.get("l2_grid", (1.0,))) or options.get("l2", 1.0) <= 0:
        raise ValueError("l2 values must be positive")
    penalties = (*options.get("penalties", ()), options.get("popularity_penalty", 0.0))
    if not all(valid_penalty(v) for v in penalties):
        raise ValueError("popularity penalties must be finite values >= 0")
    if options.get("min_coverage_ratio", 0.0) < 0:
        raise ValueError("min_coverage_ratio must be >= 0")
    if options.get("max_validation_users", 1) < 1:
        raise ValueError("max_validation_users must be at least 1")


def tune_ease_holdout(
    holdout: MatrixHoldout | None,
    params: ALSParams,
    budget_seconds: float,
    *,
    l2: float = 500.0,
    als_weight: float = 1.0,
    popularity_penalty: float = 0.0,
    max_items: int = 8000,
    min_users: int = 2,
    l2_grid: tuple[float, ...] = EASE_L2_GRID,
    weights: tuple[float, ...] = EASE_ALS_WEIGHTS,
    penalties: tuple[float, ...] = EASE_PENALTIES,
    k: int = 10,
    min_gain_se: float = 2.0,
    min_coverage_ratio: float = 1.0,
    max_validation_users: int = EASE_MAX_VALIDATION_USERS,
    validation: str = "",
    on_trial: Callable[[EaseTrial, int], None] | None = None,
) -> EaseTuningResult:
    """The EASE search on a prepared split (None: no validation user).

    `l2` / `als_weight` / `popularity_penalty` are the given point, returned as they are
    when the budget is 0; `l2` also orders the grid (nearest first, on a log scale). ALS
    is fitted on `holdout.train` once and X^T X built once over the EASE vocabulary
    (`max_items`, `min_users`: `ease.vocabulary`); each l2 is solved while the seconds used
    plus the slowest l2 so far fit in the budget (the first always runs) and every weight
    and penalty scored: top-k of `ease.fused` scores (each source standardised per user
    over the whole catalog, items outside the vocabulary at EASE score 0, the items'
    popularity from `holdout.train`), training items excluded. The best point among those
    covering at least `min_coverage_ratio` times ALS alone's catalog (`eligible`) is
    adopted when its gain over ALS alone exceeds `min_gain_se` standard errors. At most
    `max_validation_users` users are scored (a seeded sample of them beyond that).
    `on_trial(trial, number)` follows every point, for progress.
    """
    _check_ease_options(
        budget_seconds,
        min_gain_se=min_gain_se,
        max_items=max_items,
        min_users=min_users,
        weights=weights,
        l2=l2,
        penalties=penalties,
        popularity_penalty=popularity_penalty,
        min_coverage_ratio=min_coverage_ratio,
        max_validation_users=max_validation_users,
    )
    if not 0.0 <= als_weight <= 1.0:
        raise ValueError(f"als_weight must be within [0, 1], got {als_weight}")
    result = EaseTuningResult(
        float(l2),
        float(als_weight),
        "off",
        popularity_penalty=float(popularity_penalty) if als_weight < 1.0 else 0.0,
        min_coverage_ratio=min_coverage_ratio,
        budget_seconds=budget_seconds,
        validation=validation,
        max_items=max_items,
        min_users=min_users,
        k=k,
        min_gain_se=min_gain_se,
    )
    if budget_seconds == 0:
        return result
    off = replace(result, l2=float(l2), als_weight=1.0, popularity_penalty=0.0)
    if holdout is None:
        return replace(off, reason="no-validation-users", stopped="no-validation-users")
    started = time.perf_counter()
    columns = vocabulary(holdout.train, max_items, min_users)
    users = np.array(sorted(holdout.truth), dtype=np.int64)
    if len(users) > max_validation_users:
        users = np.sort(np.random.default_rng(0).choice(users, max_validation_users, replace=False))
        holdout = MatrixHoldout(holdout.train, {int(user): holdout.truth[int(user)] for user in users})
    off = replace(off, validation_users=len(users), vocabulary_size=int(columns.size))
    if columns.size == 0:
        return replace(off, reason="no-vocabulary", stopped="no-vocabulary", seconds=time.perf_counter() - started)
    als = fit_als(holdout.train, params)
    gram_matrix = gram(holdout.train, columns)
    history = holdout.train[users]
    ease_history = history[:, columns].astype(bool).astype(np.float32)
    catalog = int(np.unique(holdout.train.indices).size)
    item_popularity = popularity(holdout.train)
    trials: list[EaseTrial] = []

    def record(trial: EaseTrial) -> None:
        trials.append(trial)
        if on_trial is not None:
            on_trial(trial, len(trials))

    mixes = [(float(w), float(g)) for w in weights if w != 1.0 for g in penalties]
    lists, scoring = _fused_lists(als, None, ease_history, columns, history, users, [(1.0, 0.0)], k, item_popularity)
    record(_ease_trial(None, (1.0, 0.0), lists[0], holdout, catalog, k, time.perf_counter() - started))
    stopped = "done"
    slowest = 0.0
    for value in sorted(l2_grid, key=lambda v: (abs(math.log(v / l2)), v)):
        if slowest and time.perf_counter() - started + slowest > budget_seconds:
            stopped = "budget"
            break
        begun = time.perf_counter()
        weights_b = solve(gram_matrix, value)
        solved = time.perf_counter() - begun
        lists, scoring = _fused_lists(als, weights_b, ease_history, columns, history, users, mixes, k, item_popularity)
        for setting, found, seconds in zip(mixes, lists, scoring, strict=True):
            share = solved / len(mixes) + seconds
            record(_ease_trial(float(value), setting, found, holdout, catalog, k, share))
        slowest = max(slowest, time.perf_counter() - begun)
    done = replace(off, trials=tuple(trials), stopped=stopped, seconds=time.perf_counter() - started)
    best = done.best
    gain, se = done.gain()
    if best is None or best.als_weight == 1.0 or not gain > min_gain_se * se:
        return replace(done, reason="no-gain")
    assert best.l2 is not None
    return replace(
        done, l2=best.l2, als_weight=best.als_weight, popularity_penalty=best.popularity_penalty, reason="adopted"
    )


def _fused_lists(
    als: AlsModel,
    ease_weights: np.ndarray | None,
    ease_history: sp.csr_matrix,
    columns: np.ndarray,
    history: sp.csr_matrix,
    users: np.ndarray,
    mixes: list[tuple[float, float]],
    k: int,
    item_popularity: np.ndarray,
) -> tuple[list[dict[int, list[int]]], list[float]]:
    """Top-k columns per user for each (ALS weight, popularity penalty) (`ease.fused` of
    the whole catalog, training items excluded), and the seconds each one's scoring took."""
    n_items = als.item_factors.shape[0]
    block = max(1, _SCORE_BLOCK // max(1, n_items))
    lists: list[dict[int, list[int]]] = [{} for _ in mixes]
    seconds = [0.0] * len(mixes)
    penalties = [penalty_term(penalty, item_popularity) for _, penalty in mixes]
    for start in range(0, len(users), block):
        rows = users[start : start + block]
        als_scores = als.user_factors[rows] @ als.item_factors.T
        z_als = standardise(als_scores)
        z_ease = np.zeros_like(z_als)
        if ease_weights is not None:
            ease_scores = np.zeros_like(als_scores)
            ease_scores[:, columns] = np.asarray(ease_history[start : start + block] @ ease_weights)
            z_ease = standardise(ease_scores)
        exclude = history[start : start + block]
        for n, ((weight, _), penalty) in enumerate(zip(mixes, penalties, strict=True)):
            begun = time.perf_counter()
            # ease.fused: ALS alone is its raw scores, a mix the sum of the z-scores less the penalty.
            scores = als_scores if weight == 1.0 else mix(z_als, z_ease, weight, penalty)
            best = top_k_batch(scores, k, exclude)
            for user, found in zip(rows.tolist(), best, strict=True):
                lists[n][user] = [int(c) for c in found if c >= 0]
            seconds[n] += time.perf_counter() - begun
    return lists, seconds


def _ease_trial(
    l2: float | None,
    setting: tuple[float, float],
    lists: dict[int, list[int]],
    holdout: MatrixHoldout,
    catalog: int,
    k: int,
    seconds: float,
) -> EaseTrial:
    metrics = ranking_metrics(lists, holdout.truth, k, catalog)
    per_user = user_ndcg(lists, holdout.truth, k)
    als_weight, penalty = setting
    return EaseTrial(
        l2,
        als_weight,
        metrics.ndcg,
        metrics.recall,
        seconds,
        np.array([per_user[u] for u in sorted(per_user)]),
        popularity_penalty=penalty,
        coverage=metrics.coverage,
    )

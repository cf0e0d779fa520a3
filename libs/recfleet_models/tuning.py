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
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import scipy.sparse as sp

from .als import WEIGHTINGS, ALSParams, build_interaction_matrix, build_interaction_times, fit_als
from .data import Ratings
from .evaluation import MatrixHoldout, holdout_lists, holdout_split, ranking_metrics, user_ndcg

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


def improvement(challenger: Trial, incumbent: Trial) -> tuple[float, float]:
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

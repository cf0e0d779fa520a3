"""Staged canary rollouts gated on recommendation KPIs.

A rollout moves a service's canary through a schedule of weights (1% -> 10% -> 50% ->
100%), holding each stage until the stage's traffic passes every gate: error rate and p99
of the calls (`canary.call_readings`), and the recommendation KPIs of the canary track
against stable over the same window:

- CTR: the share of lists shown (responses with at least one item) that got a click, a
  click being attributed to the list through its `request_id`. A breach needs both a
  drop beyond `max_ctr_drop` (relative) and significance (one-sided pooled two-proportion
  z-test at `alpha`), so noise does not roll a good model back.
- Empty-list rate: the share of responses with no item; a breach is a rate above
  stable's plus `max_empty_rate_increase` (absolute), significant at `alpha`.
- Catalog coverage: distinct items shown over the same number of lists on each track
  (the most recent lists of each), since a track with more traffic shows more items; a
  breach is fewer than `min_coverage_ratio` times stable's.

Every KPI waits for `min_lists` lists on each track before it judges. Reaching the last
stage completes the rollout. Pure and clock-injectable: the gateway records every list it
serves and every click it receives in a `ListWindow`, and acts on the verdicts of `judge`.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from statistics import NormalDist
from types import MappingProxyType
from typing import Any

from .canary import BREACH, HOLD, PASS, Gates, OutcomeWindow, Reading, TrackStats, call_readings

CANARY = "canary"
STABLE = "stable"

# A rollout's status: moving through its stages, at its last stage, or stopped by a
# breach (or a manual rollback) or by an operator.
RUNNING = "running"
COMPLETE = "complete"
ROLLED_BACK = "rolled-back"
ABORTED = "aborted"

# What a judgement asks for.
ADVANCE = "advance"
ROLLBACK = "rollback"

MAX_STAGES = 20
# The longest a stage may be held: a week.
MAX_HOLD_SECONDS = 7 * 24 * 3600.0


@dataclass(frozen=True)
class KpiGates:
    # Lists (responses) each track must have served in the stage's window before a KPI
    # is judged; CTR counts only lists that showed items.
    min_lists: int = 200
    # Canary CTR may be this much (relative) below stable's before it can breach.
    max_ctr_drop: float = 0.1
    # Canary empty-list rate may be this much (absolute) above stable's.
    max_empty_rate_increase: float = 0.02
    # Canary must show at least this share of the distinct items stable shows.
    min_coverage_ratio: float = 0.8
    # One-sided significance level of the CTR and empty-list tests, per judgement: a stage
    # is judged again every analysis interval, so the level is stricter than one test's.
    alpha: float = 0.001


@dataclass(frozen=True)
class ListStats:
    """One track's lists over a window: how many were served, how many were empty, how
    many of those shown got a click, and the distinct items over `sample` lists."""

    lists: int = 0
    empty: int = 0
    clicked: int = 0
    distinct_items: int = 0
    sample: int = 0

    @property
    def shown(self) -> int:
        return self.lists - self.empty

    @property
    def ctr(self) -> float:
        return self.clicked / self.shown if self.shown else 0.0

    @property
    def empty_rate(self) -> float:
        return self.empty / self.lists if self.lists else 0.0


class _Served:
    __slots__ = ("at", "clicked", "items", "tracks")

    def __init__(self, at: float, tracks: Mapping[str, str], items: tuple[str, ...]):
        self.at = at
        self.tracks = tracks
        self.items = items
        self.clicked = False


class ListWindow:
    """The recommendation lists served over the last `window_seconds` (at most
    `max_lists`, the oldest dropped first), keyed by request id, each with the track of
    every service that made it and whether it was clicked."""

    def __init__(
        self, window_seconds: float = 600.0, max_lists: int = 20_000, clock: Callable[[], float] = time.monotonic
    ):
        self.window_seconds = window_seconds
        self.max_lists = max_lists
        self._clock = clock
        self._lists: OrderedDict[str, _Served] = OrderedDict()
        # One mapping per combination of tracks, shared by every list it made.
        self._combinations: dict[tuple[tuple[str, str], ...], Mapping[str, str]] = {}

    def __len__(self) -> int:
        return len(self._lists)

    def served(self, request_id: str, tracks: Mapping[str, str], item_ids: Iterable[str]) -> None:
        """A list answered under `request_id`; `tracks`: service -> track that served it."""
        key = tuple(tracks.items())
        combination = self._combinations.get(key)
        if combination is None:
            combination = self._combinations[key] = MappingProxyType(dict(tracks))
        # Interned: lists of one user repeat the same ids, and the window outlives responses.
        items = tuple(sys.intern(item_id) for item_id in item_ids)
        now = self._clock()
        self._lists[request_id] = _Served(now, combination, items)
        self._lists.move_to_end(request_id)
        self._expire(now)

    def clicked(self, request_id: str, item_id: str) -> bool:
        """Attribute a click on `item_id` to the list served under `request_id`; False when
        the list is not in the window (or not on this replica) or did not show the item."""
        served = self._lists.get(request_id)
        if served is None or item_id not in served.items:
            return False
        served.clicked = True
        return True

    def _expire(self, now: float) -> None:
        horizon = now - self.window_seconds
        lists = self._lists
        while lists and (len(lists) > self.max_lists or next(iter(lists.values())).at < horizon):
            lists.popitem(last=False)

    def compare(self, service: str, max_age_seconds: float | None = None) -> tuple[ListStats, ListStats]:
        """(canary, stable) stats of the lists `service` took part in over the window, or
        its last `max_age_seconds`. Coverage counts the distinct items of the most recent
        lists of each track, as many on both as the track with fewer has."""
        now = self._clock()
        self._expire(now)
        age = self.window_seconds if max_age_seconds is None else min(max_age_seconds, self.window_seconds)
        since = now - age
        # track -> [lists, empty, clicked], and the items of its lists, newest first
        counts = {CANARY: [0, 0, 0], STABLE: [0, 0, 0]}
        newest_first: dict[str, list[tuple[str, ...]]] = {CANARY: [], STABLE: []}
        for served in reversed(self._lists.values()):
            if served.at < since:
                break
            track = served.tracks.get(service, "")
            count = counts.get(track)
            if count is None:
                continue
            count[0] += 1
            if not served.items:
                count[1] += 1
            elif served.clicked:
                count[2] += 1
            newest_first[track].append(served.items)
        sample = min(len(newest_first[CANARY]), len(newest_first[STABLE]))

        def stats(track: str) -> ListStats:
            lists, empty, clicked = counts[track]
            distinct = {item for items in newest_first[track][:sample] for item in items}
            return ListStats(lists, empty, clicked, len(distinct), sample)

        return stats(CANARY), stats(STABLE)


def z_two_proportions(successes_a: int, trials_a: int, successes_b: int, trials_b: int) -> float:
    """Pooled two-proportion z statistic of a - b (0 when either has no trials or the
    pooled proportion is 0 or 1)."""
    if trials_a <= 0 or trials_b <= 0:
        return 0.0
    pooled = (successes_a + successes_b) / (trials_a + trials_b)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / trials_a + 1 / trials_b))
    if spread == 0:
        return 0.0
    return (successes_a / trials_a - successes_b / trials_b) / spread


def kpi_readings(canary: ListStats, stable: ListStats, gates: KpiGates) -> list[Reading]:
    """CTR, empty-list rate and coverage of the canary against stable."""
    critical = NormalDist().inv_cdf(1 - gates.alpha)
    need = gates.min_lists
    readings = []

    if canary.shown < need or stable.shown < need:
        readings.append(
            Reading(
                "ctr",
                canary.ctr,
                stable.ctr,
                HOLD,
                f"ctr: {canary.shown}/{need} canary and {stable.shown}/{need} stable lists shown",
            )
        )
    else:
        z = z_two_proportions(canary.clicked, canary.shown, stable.clicked, stable.shown)
        floor = stable.ctr * (1 - gates.max_ctr_drop)
        if canary.ctr >= floor:
            verdict, detail = PASS, f"ctr {canary.ctr:.3f} vs stable {stable.ctr:.3f} (z={z:.1f})"
        elif z <= -critical:
            verdict = BREACH
            detail = f"ctr {canary.ctr:.3f} < stable {stable.ctr:.3f} (z={z:.1f}) over {canary.shown} canary lists"
        else:
            verdict, detail = HOLD, f"ctr {canary.ctr:.3f} < stable {stable.ctr:.3f} (z={z:.1f}), not significant yet"
        readings.append(Reading("ctr", canary.ctr, stable.ctr, verdict, detail))

    if canary.lists < need or stable.lists < need:
        readings.append(
            Reading(
                "empty_rate",
                canary.empty_rate,
                stable.empty_rate,
                HOLD,
                f"empty-list rate: {canary.lists}/{need} canary and {stable.lists}/{need} stable lists",
            )
        )
    else:
        z = z_two_proportions(canary.empty, canary.lists, stable.empty, stable.lists)
        margin = gates.max_empty_rate_increase
        if canary.empty_rate <= stable.empty_rate + margin:
            verdict = PASS
            detail = f"empty-list rate {canary.empty_rate:.3f} vs stable {stable.empty_rate:.3f}"
        elif z >= critical:
            verdict = BREACH
            detail = (
                f"empty-list rate {canary.empty_rate:.3f} > stable {stable.empty_rate:.3f} + {margin:.3f} "
                f"(z={z:.1f}) over {canary.lists} canary lists"
            )
        else:
            verdict = HOLD
            detail = (
                f"empty-list rate {canary.empty_rate:.3f} > stable {stable.empty_rate:.3f} + {margin:.3f} "
                f"(z={z:.1f}), not significant yet"
            )
        readings.append(Reading("empty_rate", canary.empty_rate, stable.empty_rate, verdict, detail))

    if canary.sample < need:
        readings.append(
            Reading(
                "coverage",
                canary.distinct_items,
                stable.distinct_items,
                HOLD,
                f"coverage: {canary.sample}/{need} lists on each track",
            )
        )
    else:
        ratio = gates.min_coverage_ratio
        short = canary.distinct_items < stable.distinct_items * ratio
        detail = (
            f"coverage {canary.distinct_items} items {'<' if short else '>='} {ratio:g} x stable "
            f"{stable.distinct_items} items over {canary.sample} lists each"
        )
        readings.append(
            Reading("coverage", canary.distinct_items, stable.distinct_items, BREACH if short else PASS, detail)
        )
    return readings


@dataclass(frozen=True)
class Schedule:
    """The canary weights a rollout moves through, and how long each is held at least."""

    stages: tuple[int, ...] = (1, 10, 50, 100)
    hold_seconds: float = 300.0

    def __post_init__(self) -> None:
        problem = schedule_problem(self.stages, self.hold_seconds)
        if problem:
            raise ValueError(problem)

    def describe(self) -> str:
        return f"stages {','.join(map(str, self.stages))}%, hold {self.hold_seconds:g} s"


def schedule_problem(stages: Iterable[Any], hold_seconds: float) -> str:
    """What is wrong with a schedule ("" when nothing)."""
    stages = list(stages)
    if not 1 <= len(stages) <= MAX_STAGES:
        return f"stages: 1 to {MAX_STAGES} weights, not {len(stages)}"
    if any(isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 100 for s in stages):
        return f"stages: each weight is an integer within 1..100, not {stages}"
    if any(later <= earlier for earlier, later in itertools.pairwise(stages)):
        return f"stages: weights must rise from stage to stage, not {stages}"
    if not math.isfinite(hold_seconds) or not 0 <= hold_seconds <= MAX_HOLD_SECONDS:
        return f"hold_seconds: a number of seconds within 0..{MAX_HOLD_SECONDS:g}, not {hold_seconds}"
    return ""


def parse_stages(text: str) -> tuple[int, ...]:
    """`1,10,50,100` -> (1, 10, 50, 100); ValueError naming what is wrong."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"stages: comma-separated integer weights, e.g. 1,10,50,100, not {text!r}") from None


@dataclass(frozen=True)
class Rollout:
    """A service's staged rollout: where it stands, and the readings of its last judgement.
    Times are wall-clock seconds (shared by every gateway replica)."""

    service: str
    schedule: Schedule
    started_at: float
    started_by: str = ""
    stage: int = 0
    stage_started_at: float = 0.0
    status: str = RUNNING
    # The last judgement while running; why it stopped once it has.
    reason: str = ""
    readings: tuple[Reading, ...] = ()
    checked_at: float = 0.0

    @classmethod
    def start(cls, service: str, schedule: Schedule, now: float, actor: str) -> Rollout:
        status = RUNNING if len(schedule.stages) > 1 else COMPLETE
        return cls(service, schedule, now, actor, 0, now, status, f"started: {schedule.describe()}")

    @property
    def weight(self) -> int:
        return self.schedule.stages[self.stage]

    @property
    def running(self) -> bool:
        return self.status == RUNNING

    def stage_label(self) -> str:
        return f"stage {self.stage + 1}/{len(self.schedule.stages)} ({self.weight}%)"

    def advanced(self, now: float, reason: str) -> Rollout:
        """At the next stage from `now` (complete at the last), keeping the last readings."""
        stage = self.stage + 1
        status = COMPLETE if stage == len(self.schedule.stages) - 1 else RUNNING
        return replace(self, stage=stage, stage_started_at=now, status=status, reason=reason)

    def ended(self, status: str, reason: str) -> Rollout:
        return replace(self, status=status, reason=reason)

    def checked(self, verdict: Verdict, now: float) -> Rollout:
        return replace(self, reason=verdict.reason, readings=verdict.readings, checked_at=now)

    def as_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "stages": list(self.schedule.stages),
            "hold_seconds": self.schedule.hold_seconds,
            "started_at": self.started_at,
            "started_by": self.started_by,
            "stage": self.stage,
            "stage_started_at": self.stage_started_at,
            "status": self.status,
            "reason": self.reason,
            "readings": [reading.as_dict() for reading in self.readings],
            "checked_at": self.checked_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rollout:
        return cls(
            service=str(data["service"]),
            schedule=Schedule(tuple(int(s) for s in data["stages"]), float(data["hold_seconds"])),
            started_at=float(data["started_at"]),
            started_by=str(data.get("started_by", "")),
            stage=int(data.get("stage", 0)),
            stage_started_at=float(data.get("stage_started_at", data["started_at"])),
            status=str(data.get("status", RUNNING)),
            reason=str(data.get("reason", "")),
            readings=tuple(
                Reading(str(r["gate"]), float(r["canary"]), float(r["stable"]), str(r["verdict"]), str(r["detail"]))
                for r in data.get("readings", ())
            ),
            checked_at=float(data.get("checked_at", 0.0)),
        )


@dataclass(frozen=True)
class Verdict:
    """What a judgement asks for (`ADVANCE`, `HOLD` or `ROLLBACK`), why, and the readings."""

    action: str
    reason: str
    readings: tuple[Reading, ...]


def verdict(
    rollout: Rollout,
    now: float,
    calls: tuple[TrackStats, TrackStats],
    gates: Gates,
    lists: tuple[ListStats, ListStats] | None,
    kpis: KpiGates,
) -> Verdict:
    """The stage's verdict from its (canary, stable) calls and, for a service that makes
    recommendation lists, its (canary, stable) lists: roll back on any breach (at any
    time), advance once the stage was held long enough and every gate passes, else hold."""
    readings = call_readings(*calls, gates)
    if lists is not None:
        readings += kpi_readings(*lists, kpis)
    found = tuple(readings)
    breaches = [r.detail for r in found if r.verdict == BREACH]
    if breaches:
        return Verdict(ROLLBACK, "; ".join(breaches), found)
    held, hold = now - rollout.stage_started_at, rollout.schedule.hold_seconds
    if held < hold:
        return Verdict(HOLD, f"{rollout.stage_label()} held {held:.0f}/{hold:g} s", found)
    waiting = [r.detail for r in found if r.verdict == HOLD]
    if waiting:
        return Verdict(HOLD, f"{rollout.stage_label()} waiting for " + "; ".join(waiting), found)
    return Verdict(ADVANCE, f"{rollout.stage_label()} passed: " + "; ".join(r.detail for r in found), found)


def judge(
    rollout: Rollout,
    now: float,
    calls: OutcomeWindow,
    lists: ListWindow | None,
    gates: Gates,
    kpis: KpiGates,
) -> Verdict:
    """`verdict` over the traffic of the rollout's current stage (at most the windows)."""
    age = max(0.0, now - rollout.stage_started_at)
    service = rollout.service
    call_stats = (calls.stats(service, CANARY, age), calls.stats(service, STABLE, age))
    list_stats = lists.compare(service, age) if lists is not None else None
    return verdict(rollout, now, call_stats, gates, list_stats, kpis)

"""Canary analysis: per-service, per-track outcomes over a sliding window, and the gates
that decide a rollback (spec: error rate > 1% or p99 > 200 ms over the window).

Pure and clock-injectable; the gateway feeds it from every downstream call and acts on
the breaches it reports.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Gates:
    max_error_rate: float = 0.01
    max_p99_seconds: float = 0.2
    window_seconds: float = 60.0
    # Below this many canary calls in the window the analysis does not judge.
    min_requests: int = 50


@dataclass(frozen=True)
class TrackStats:
    requests: int
    errors: int
    p99_seconds: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


# A gate reading's verdict: the canary passes, the gate cannot judge yet (too little
# traffic, or a difference not yet significant), or the canary breaches it.
PASS = "pass"
HOLD = "hold"
BREACH = "breach"


@dataclass(frozen=True)
class Reading:
    """One gate's reading over a window: the canary's and stable's values and the verdict,
    with `detail` in words (a breach's `detail` is the rollback reason)."""

    gate: str
    canary: float
    stable: float
    verdict: str
    detail: str

    def as_dict(self) -> dict[str, float | str]:
        return {
            "gate": self.gate,
            "canary": self.canary,
            "stable": self.stable,
            "verdict": self.verdict,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Breach:
    service: str
    reason: str
    canary: TrackStats
    stable: TrackStats


def p99(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


class OutcomeWindow:
    """Call outcomes per (service, track), kept for `window_seconds`."""

    def __init__(self, window_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.window_seconds = window_seconds
        self._clock = clock
        self._calls: dict[tuple[str, str], deque[tuple[float, bool, float]]] = {}

    def record(self, service: str, track: str, ok: bool, seconds: float) -> None:
        calls = self._calls.setdefault((service, track), deque())
        now = self._clock()
        calls.append((now, ok, seconds))
        self._expire(calls, now)

    def _expire(self, calls: deque[tuple[float, bool, float]], now: float) -> None:
        horizon = now - self.window_seconds
        while calls and calls[0][0] < horizon:
            calls.popleft()

    def stats(self, service: str, track: str, max_age_seconds: float | None = None) -> TrackStats:
        """The track's calls in the window, or only those of the last `max_age_seconds`."""
        calls = self._calls.get((service, track), deque())
        now = self._clock()
        self._expire(calls, now)
        recent = [(ok, seconds) for at, ok, seconds in calls if max_age_seconds is None or at >= now - max_age_seconds]
        errors = sum(1 for ok, _ in recent if not ok)
        return TrackStats(len(recent), errors, p99([seconds for _, seconds in recent]))

    def reset(self, service: str, track: str) -> None:
        self._calls.pop((service, track), None)


def call_readings(canary: TrackStats, stable: TrackStats, gates: Gates) -> list[Reading]:
    """The error-rate and p99 gates over the canary's and stable's calls. A gate breaches
    when the canary fails it and does worse than stable on it; below `min_requests`
    canary calls nothing is judged."""
    if canary.requests < gates.min_requests:
        return [
            Reading(
                "calls",
                canary.requests,
                stable.requests,
                HOLD,
                f"{canary.requests}/{gates.min_requests} canary calls",
            )
        ]
    failing = canary.error_rate > gates.max_error_rate and canary.error_rate > stable.error_rate
    error_rate = Reading(
        "error_rate",
        canary.error_rate,
        stable.error_rate,
        BREACH if failing else PASS,
        f"error rate {canary.error_rate:.2%} {'>' if failing else '<='} {gates.max_error_rate:.2%} "
        f"(stable {stable.error_rate:.2%}) over {canary.requests} calls",
    )
    slow = canary.p99_seconds > gates.max_p99_seconds and canary.p99_seconds > stable.p99_seconds
    latency = Reading(
        "p99_seconds",
        canary.p99_seconds,
        stable.p99_seconds,
        BREACH if slow else PASS,
        f"p99 {canary.p99_seconds * 1000:.0f} ms {'>' if slow else '<='} {gates.max_p99_seconds * 1000:.0f} ms "
        f"(stable {stable.p99_seconds * 1000:.0f} ms) over {canary.requests} calls",
    )
    return [error_rate, latency]


def evaluate(window: OutcomeWindow, service: str, gates: Gates) -> Breach | None:
    """A breach when the canary fails a gate and does worse than stable on it."""
    canary = window.stats(service, "canary")
    stable = window.stats(service, "stable")
    for reading in call_readings(canary, stable, gates):
        if reading.verdict == BREACH:
            return Breach(service, reading.detail, canary, stable)
    return None

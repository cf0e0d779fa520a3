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

    def stats(self, service: str, track: str) -> TrackStats:
        calls = self._calls.get((service, track), deque())
        self._expire(calls, self._clock())
        errors = sum(1 for _, ok, _ in calls if not ok)
        return TrackStats(len(calls), errors, p99([seconds for _, _, seconds in calls]))

    def reset(self, service: str, track: str) -> None:
        self._calls.pop((service, track), None)


def evaluate(window: OutcomeWindow, service: str, gates: Gates) -> Breach | None:
    """A breach when the canary fails a gate and does worse than stable on it."""
    canary = window.stats(service, "canary")
    stable = window.stats(service, "stable")
    if canary.requests < gates.min_requests:
        return None
    if canary.error_rate > gates.max_error_rate and canary.error_rate > stable.error_rate:
        return Breach(
            service,
            f"error rate {canary.error_rate:.2%} > {gates.max_error_rate:.2%} "
            f"(stable {stable.error_rate:.2%}) over {canary.requests} calls",
            canary,
            stable,
        )
    if canary.p99_seconds > gates.max_p99_seconds and canary.p99_seconds > stable.p99_seconds:
        return Breach(
            service,
            f"p99 {canary.p99_seconds * 1000:.0f} ms > {gates.max_p99_seconds * 1000:.0f} ms "
            f"(stable {stable.p99_seconds * 1000:.0f} ms) over {canary.requests} calls",
            canary,
            stable,
        )
    return None

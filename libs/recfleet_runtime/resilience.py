"""A circuit breaker per dependency: closed -> open after consecutive failures ->
half-open after a cool-down (one trial call) -> closed on success, open on failure."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum

from .metrics import BREAKER_STATE


class BreakerState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpenError(RuntimeError):
    """Raised instead of calling a dependency whose breaker is open."""

    def __init__(self, dependency: str, retry_in: float):
        super().__init__(f"circuit open for {dependency}; next trial in {retry_in:.1f}s")
        self.dependency = dependency
        self.retry_in = retry_in


class CircuitBreaker:
    def __init__(
        self,
        dependency: str,
        failure_threshold: int = 5,
        reset_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.dependency = dependency
        self.failure_threshold = failure_threshold
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._state = BreakerState.CLOSED
        self._trial_in_flight = False

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.reset_seconds:
            self._enter(BreakerState.HALF_OPEN)
        return self._state

    def before_call(self) -> None:
        """Raise CircuitOpenError when the call must not go out."""
        state = self.state
        if state is BreakerState.OPEN:
            raise CircuitOpenError(self.dependency, self.reset_seconds - (self._clock() - self._opened_at))
        if state is BreakerState.HALF_OPEN:
            if self._trial_in_flight:
                raise CircuitOpenError(self.dependency, 0.0)
            self._trial_in_flight = True

    def record_success(self) -> None:
        self._failures = 0
        self._trial_in_flight = False
        if self._state is not BreakerState.CLOSED:
            self._enter(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self._trial_in_flight = False
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
            self._enter(BreakerState.OPEN)

    def _enter(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            BREAKER_STATE.labels(self.dependency, state.value).inc()

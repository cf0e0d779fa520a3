import pytest

from recfleet_runtime.resilience import BreakerState, CircuitBreaker, CircuitOpenError


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_opens_after_threshold_and_recovers_through_half_open():
    clock = Clock()
    breaker = CircuitBreaker("ranking", failure_threshold=3, reset_seconds=5, clock=clock)
    for _ in range(2):
        breaker.before_call()
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.before_call()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpenError) as raised:
        breaker.before_call()
    assert raised.value.dependency == "ranking"

    clock.now = 5.0
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.before_call()  # the one trial call
    with pytest.raises(CircuitOpenError):
        breaker.before_call()  # no second call while the trial is out
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    breaker.before_call()


def test_failed_trial_reopens():
    clock = Clock()
    breaker = CircuitBreaker("fs", failure_threshold=1, reset_seconds=2, clock=clock)
    breaker.before_call()
    breaker.record_failure()
    clock.now = 2.5
    breaker.before_call()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.now = 3.0
    with pytest.raises(CircuitOpenError):
        breaker.before_call()


def test_success_resets_the_failure_count():
    breaker = CircuitBreaker("x", failure_threshold=2)
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED

from recfleet_runtime.canary import Gates, OutcomeWindow, evaluate


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def feed(window, track, n, error_every=0, seconds=0.01):
    for i in range(n):
        window.record("ranking", track, ok=not (error_every and i % error_every == 0), seconds=seconds)


def test_a_canary_with_5_percent_errors_breaches():
    window = OutcomeWindow(60)
    feed(window, "stable", 900)
    feed(window, "canary", 100, error_every=20)
    breach = evaluate(window, "ranking", Gates())
    assert breach is not None and "error rate 5.00%" in breach.reason


def test_a_healthy_canary_passes_and_small_samples_are_not_judged():
    window = OutcomeWindow(60)
    feed(window, "stable", 900)
    feed(window, "canary", 100)
    assert evaluate(window, "ranking", Gates()) is None
    small = OutcomeWindow(60)
    feed(small, "canary", 10, error_every=2)
    assert evaluate(small, "ranking", Gates()) is None


def test_slow_canary_breaches_the_latency_gate():
    window = OutcomeWindow(60)
    feed(window, "stable", 500, seconds=0.02)
    feed(window, "canary", 100, seconds=0.3)
    breach = evaluate(window, "ranking", Gates())
    assert breach is not None and breach.reason.startswith("p99 300 ms")


def test_errors_leave_the_window():
    clock = Clock()
    window = OutcomeWindow(60, clock=clock)
    feed(window, "canary", 100, error_every=2)
    clock.now = 61
    assert window.stats("ranking", "canary").requests == 0
    assert evaluate(window, "ranking", Gates()) is None


def test_a_canary_no_worse_than_stable_is_not_blamed():
    window = OutcomeWindow(60)
    feed(window, "stable", 500, error_every=10)
    feed(window, "canary", 100, error_every=20)
    assert evaluate(window, "ranking", Gates()) is None

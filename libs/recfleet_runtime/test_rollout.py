import pytest

from recfleet_runtime.canary import BREACH, HOLD, PASS, Gates, OutcomeWindow
from recfleet_runtime.rollout import (
    ADVANCE,
    COMPLETE,
    ROLLBACK,
    RUNNING,
    KpiGates,
    ListStats,
    ListWindow,
    Rollout,
    Schedule,
    judge,
    kpi_readings,
    parse_stages,
)


class Clock:
    now = 1000.0

    def __call__(self):
        return self.now


GATES = Gates(min_requests=10)
KPIS = KpiGates(min_lists=100)


def serve(lists, track, n, clicks_every=0, items=("m1", "m2", "m3"), start=0, prefix=""):
    """`n` ranking lists on `track`; every `clicks_every`-th one gets a click on its first item."""
    for i in range(start, start + n):
        request_id = f"{prefix}{track}-{i}"
        shown = tuple(f"{item}-{i % 20}" for item in items) if items else ()
        lists.served(request_id, {"candidate-gen": "stable", "ranking": track}, shown)
        if clicks_every and i % clicks_every == 0 and shown:
            assert lists.clicked(request_id, shown[0])


def call(calls, track, n, ok=True, seconds=0.01):
    for _ in range(n):
        calls.record("ranking", track, ok, seconds)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def windows(clock):
    return OutcomeWindow(60, clock=clock), ListWindow(600, clock=clock)


def test_a_good_canary_holds_for_the_hold_time_then_advances(clock, windows):
    calls, lists = windows
    rollout = Rollout.start("ranking", Schedule((1, 10, 50, 100), hold_seconds=300), clock(), "ops")
    serve(lists, "canary", 200, clicks_every=5)
    serve(lists, "stable", 2000, clicks_every=5)
    clock.now += 100
    call(calls, "canary", 50)
    call(calls, "stable", 500)
    early = judge(rollout, clock(), calls, lists, GATES, KPIS)
    assert early.action == HOLD and "held 100/300 s" in early.reason
    assert {r.gate: r.verdict for r in early.readings} == {
        "error_rate": PASS,
        "p99_seconds": PASS,
        "ctr": PASS,
        "empty_rate": PASS,
        "coverage": PASS,
    }
    clock.now += 200
    call(calls, "canary", 50)  # the call gates look at the last minute
    ready = judge(rollout, clock(), calls, lists, GATES, KPIS)
    assert ready.action == ADVANCE and ready.reason.startswith("stage 1/4 (1%) passed: ")
    advanced = rollout.advanced(clock(), ready.reason)
    assert (advanced.stage, advanced.weight, advanced.status) == (1, 10, RUNNING)


def test_a_stage_waits_for_enough_lists_on_both_tracks(clock, windows):
    calls, lists = windows
    rollout = Rollout.start("ranking", Schedule((1, 100), hold_seconds=0), clock(), "ops")
    call(calls, "canary", 50)
    serve(lists, "canary", 40, clicks_every=5)
    serve(lists, "stable", 2000, clicks_every=5)
    waiting = judge(rollout, clock(), calls, lists, GATES, KPIS)
    assert waiting.action == HOLD
    assert "ctr: 40/100 canary and 2000/100 stable lists shown" in waiting.reason
    serve(lists, "canary", 60, clicks_every=5, start=40)
    assert judge(rollout, clock(), calls, lists, GATES, KPIS).action == ADVANCE


def test_only_the_current_stage_counts(clock, windows):
    calls, lists = windows
    call(calls, "canary", 50)
    serve(lists, "canary", 200, clicks_every=5)
    serve(lists, "stable", 2000, clicks_every=5)
    clock.now += 30
    rollout = Rollout.start("ranking", Schedule((1, 10), hold_seconds=0), clock(), "ops")
    verdict = judge(rollout, clock(), calls, lists, GATES, KPIS)
    assert verdict.action == HOLD and "0/10 canary calls" in verdict.reason


def test_a_canary_with_a_lower_ctr_is_rolled_back_with_the_reason(clock, windows):
    calls, lists = windows
    rollout = Rollout.start("ranking", Schedule((1, 10, 50, 100), hold_seconds=300), clock(), "ops")
    call(calls, "canary", 50)
    serve(lists, "canary", 300, clicks_every=50)  # ctr 0.02
    serve(lists, "stable", 3000, clicks_every=10)  # ctr 0.10
    verdict = judge(rollout, clock(), calls, lists, GATES, KPIS)
    assert verdict.action == ROLLBACK  # at once, before the hold time is up
    assert verdict.reason.startswith("ctr 0.020 < stable 0.100 (z=-4.")
    assert verdict.reason.endswith("over 300 canary lists")


def test_a_small_difference_is_not_significant_and_does_not_roll_back(clock, windows):
    calls, lists = windows
    rollout = Rollout.start("ranking", Schedule((1, 100), hold_seconds=0), clock(), "ops")
    call(calls, "canary", 50)
    serve(lists, "canary", 100, clicks_every=12)  # ctr 0.09: below stable's by more than the margin
    serve(lists, "stable", 1000, clicks_every=9)  # ctr 0.111
    verdict = judge(rollout, clock(), calls, lists, GATES, KPIS)
    ctr = next(r for r in verdict.readings if r.gate == "ctr")
    assert ctr.verdict == HOLD and "not significant yet" in ctr.detail
    assert verdict.action == HOLD


def test_noise_within_the_margin_passes():
    canary = ListStats(lists=500, empty=0, clicked=47, distinct_items=100, sample=500)
    stable = ListStats(lists=5000, empty=0, clicked=500, distinct_items=100, sample=500)
    assert {r.gate: r.verdict for r in kpi_readings(canary, stable, KPIS)} == {
        "ctr": PASS,
        "empty_rate": PASS,
        "coverage": PASS,
    }


def test_more_empty_lists_breach(clock, windows):
    calls, lists = windows
    rollout = Rollout.start("ranking", Schedule((1, 100), hold_seconds=0), clock(), "ops")
    call(calls, "canary", 50)
    serve(lists, "canary", 150, clicks_every=5)
    serve(lists, "canary", 50, items=(), start=150)
    serve(lists, "stable", 2000, clicks_every=5)
    verdict = judge(rollout, clock(), calls, lists, GATES, KPIS)
    assert verdict.action == ROLLBACK
    assert verdict.reason.startswith("empty-list rate 0.250 > stable 0.000 + 0.020")


def test_a_narrower_catalog_breaches_the_coverage_gate():
    canary = ListStats(lists=500, clicked=100, distinct_items=30, sample=500)
    stable = ListStats(lists=5000, clicked=1000, distinct_items=60, sample=500)
    coverage = next(r for r in kpi_readings(canary, stable, KPIS) if r.gate == "coverage")
    assert coverage.verdict == BREACH
    assert coverage.detail == "coverage 30 items < 0.8 x stable 60 items over 500 lists each"


def test_coverage_compares_as_many_lists_on_each_track(clock):
    lists = ListWindow(600, clock=clock)
    serve(lists, "canary", 20, items=("a",))  # 20 distinct items over 20 lists
    serve(lists, "stable", 400, items=("b",))  # 20 distinct items over many more lists
    canary, stable = lists.compare("ranking")
    assert (canary.sample, stable.sample) == (20, 20)
    assert (canary.distinct_items, stable.distinct_items) == (20, 20)


def test_error_gates_still_apply_during_a_rollout(clock, windows):
    calls, _ = windows
    rollout = Rollout.start("ranking", Schedule((1, 100), hold_seconds=0), clock(), "ops")
    call(calls, "canary", 45)
    call(calls, "canary", 5, ok=False)
    call(calls, "stable", 500)
    verdict = judge(rollout, clock(), calls, None, GATES, KPIS)
    assert verdict.action == ROLLBACK and verdict.reason.startswith("error rate 10.00% > 1.00%")


def test_a_service_without_lists_advances_on_its_calls(clock, windows):
    calls, _ = windows
    rollout = Rollout.start("event-ingest", Schedule((5, 100), hold_seconds=0), clock(), "ops")
    for _ in range(20):
        calls.record("event-ingest", "canary", True, 0.01)
    verdict = judge(rollout, clock(), calls, None, GATES, KPIS)
    assert verdict.action == ADVANCE and [r.gate for r in verdict.readings] == ["error_rate", "p99_seconds"]


def test_clicks_attribute_only_to_the_items_a_list_showed(clock):
    lists = ListWindow(60, clock=clock)
    lists.served("r1", {"ranking": "canary"}, ["m1", "m2"])
    assert not lists.clicked("r1", "m9")
    assert not lists.clicked("unknown", "m1")
    assert lists.clicked("r1", "m2")
    canary, _ = lists.compare("ranking")
    assert (canary.lists, canary.clicked) == (1, 1)
    clock.now += 61
    assert lists.compare("ranking")[0].lists == 0
    assert not lists.clicked("r1", "m1")  # left the window


def test_the_window_keeps_at_most_max_lists(clock):
    lists = ListWindow(600, max_lists=100, clock=clock)
    serve(lists, "stable", 250)
    assert len(lists) == 100
    assert lists.compare("ranking")[1].lists == 100


def test_reaching_the_last_stage_completes_the_rollout(clock):
    rollout = Rollout.start("ranking", Schedule((10, 100), hold_seconds=60), clock(), "ops")
    done = rollout.advanced(clock() + 60, "passed")
    assert (done.weight, done.status, done.running) == (100, COMPLETE, False)
    assert Rollout.start("ranking", Schedule((100,), 0), clock(), "ops").status == COMPLETE


def test_a_rollout_survives_its_stored_form(clock, windows):
    calls, lists = windows
    rollout = Rollout.start("ranking", Schedule((1, 10, 100), hold_seconds=30), clock(), "ops")
    call(calls, "canary", 50)
    checked = rollout.checked(judge(rollout, clock(), calls, lists, GATES, KPIS), clock())
    assert Rollout.from_dict(checked.as_dict()) == checked


@pytest.mark.parametrize(
    ("stages", "hold", "problem"),
    [
        ((), 60, "stages: 1 to 20 weights"),
        ((0, 50), 60, "within 1..100"),
        ((10, 150), 60, "within 1..100"),
        ((50, 10), 60, "must rise"),
        ((10, 10, 100), 60, "must rise"),
        ((10, 100), -1, "hold_seconds"),
    ],
)
def test_a_bad_schedule_is_refused_with_the_reason(stages, hold, problem):
    with pytest.raises(ValueError, match=problem):
        Schedule(stages, hold)


def test_stages_parse_from_the_command_line_form():
    assert parse_stages("1, 10,50,100") == (1, 10, 50, 100)
    with pytest.raises(ValueError, match="comma-separated"):
        parse_stages("1,ten")

import random

import pytest

from recfleet_models.experiments import (
    Experiment,
    Variant,
    assign,
    bucket,
    compare,
    readout,
    sample_ratio_mismatch,
)

RANKER = Experiment("ranker-v2", "salt-1", (Variant("control", 0.5), Variant("treatment", 0.5)))


def test_bucketing_is_deterministic_uniform_and_salted():
    assert all(assign(RANKER, "42") == assign(RANKER, "42") for _ in range(10))
    users = [f"u{i}" for i in range(20_000)]
    share = sum(assign(RANKER, u) == "treatment" for u in users) / len(users)
    assert 0.49 < share < 0.51
    other = Experiment("other", "salt-2", RANKER.variants)
    agreement = sum(assign(RANKER, u) == assign(other, u) for u in users) / len(users)
    assert 0.48 < agreement < 0.52  # independent of the first experiment
    assert all(0 <= bucket(u, "s") < 1 for u in users[:100])


def test_shares_must_add_up():
    with pytest.raises(ValueError):
        Experiment("x", "s", (Variant("a", 0.5), Variant("b", 0.4)))


def test_known_two_proportion_figures():
    # 10% vs 12% CTR on 10,000 exposures each: z = 4.52..., p ~ 6e-6.
    diff, relative, (low, high), p_value = compare((10_000, 1_000), (10_000, 1_200))
    assert diff == pytest.approx(0.02)
    assert relative == pytest.approx(0.2)
    assert low == pytest.approx(0.02 - 1.959964 * (0.1 * 0.9 / 1e4 + 0.12 * 0.88 / 1e4) ** 0.5, rel=1e-6)
    assert low < 0.02 < high
    assert p_value == pytest.approx(6.2e-6, rel=0.05)


def test_readout_recovers_a_known_lift_within_its_interval():
    rng = random.Random(7)
    counts = {}
    for name, ctr in (("control", 0.10), ("treatment", 0.13)):
        exposures = 8_000
        clicks = sum(rng.random() < ctr for _ in range(exposures))
        counts[name] = (exposures, clicks)
    rows = readout(RANKER, counts)
    treatment = rows[1]
    assert treatment.ci95[0] < 0.03 < treatment.ci95[1]
    assert treatment.p_value < 0.001
    assert rows[0].lift is None  # the control has no lift against itself


def test_no_difference_is_not_significant():
    rows = readout(RANKER, {"control": (5_000, 500), "treatment": (5_000, 505)})
    assert rows[1].p_value > 0.5


def test_sample_ratio_mismatch_fires_on_a_skewed_split_only():
    assert sample_ratio_mismatch(RANKER, {"control": 5_000, "treatment": 5_050})[0] is False
    mismatch, p_value = sample_ratio_mismatch(RANKER, {"control": 5_000, "treatment": 5_600})
    assert mismatch and p_value < 1e-6

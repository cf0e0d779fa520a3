"""Known-answer tests of the experiment core: validation, which experiment a request
takes part in, what ranking is asked for, and the readout body."""

from __future__ import annotations

import pytest

from .experiments import (
    ExperimentSpec,
    InvalidExperiment,
    VariantSpec,
    assignment,
    choose,
    overlaps,
    ranking_choice,
    readout_body,
    validate,
)

HALVES = [{"name": "control", "share": 0.5, "ranker_version": "rules"}, {"name": "treatment", "share": 0.5}]


def test_validate_defaults_and_errors():
    spec = validate("exp-1", HALVES)
    assert spec.salt == "exp-1" and spec.surface is None
    assert spec.variants == (VariantSpec("control", 0.5, "rules"), VariantSpec("treatment", 0.5, "serving"))
    with pytest.raises(InvalidExperiment) as bad:
        validate("bad name", [{"name": "a", "share": 0.7}, {"name": "a", "share": -1}, {"name": "c", "share": True}])
    assert [e["field"] for e in bad.value.errors] == [
        "body.name",
        "body.variants[1].name",
        "body.variants[1].share",
        "body.variants[2].share",
    ]
    with pytest.raises(InvalidExperiment) as total:
        validate("x", [{"name": "a", "share": 0.3}, {"name": "b", "share": 0.3}])
    assert total.value.errors == [{"field": "body.variants", "message": "shares must add up to 1, not 0.6"}]
    with pytest.raises(InvalidExperiment) as ranker:
        validate("x", [{"name": "a", "share": 0.5, "ranker_version": "no spaces"}, {"name": "b", "share": 0.5}])
    assert ranker.value.errors[0]["field"] == "body.variants[0].ranker_version"


def test_one_experiment_per_request_and_surface():
    everywhere = validate("all", HALVES)
    home = validate("home", HALVES, surface="home")
    assert overlaps(None, "home") and overlaps("home", "home") and not overlaps("home", "search")
    assert choose([home], "home") is home and choose([home], "search") is None and choose([home], "") is None
    assert choose([everywhere], "search") is everywhere


def test_assignment_is_stable_and_ranking_is_told_the_variant():
    spec = validate(
        "exp-1",
        [
            {"name": "control", "share": 0.5, "ranker_version": "rules"},
            {"name": "treatment", "share": 0.5, "ranker_version": "ranker-b"},
        ],
    )
    first = assignment(spec, "user-1")
    assert assignment(spec, "user-1") == first
    assert first.as_response() == {"name": "exp-1", "variant": first.variant}
    assert ranking_choice("rules") == {"force_rules": True}
    assert ranking_choice("serving") == {}
    assert ranking_choice("ranker-b") == {"ranker_version": "ranker-b"}


def test_readout_body_known_answer():
    spec = ExperimentSpec("e", "e", (VariantSpec("control", 0.5), VariantSpec("treatment", 0.5)))
    body = readout_body(spec, {"control": (1000, 100), "treatment": (1000, 150)})
    control, treatment = body["variants"]
    assert control["lift"] is None and control["ctr"] == pytest.approx(0.1)
    assert treatment["lift"] == pytest.approx(0.05) and treatment["relative_lift"] == pytest.approx(0.5)
    assert treatment["ci95"][0] < 0.05 < treatment["ci95"][1]
    assert type(treatment["p_value"]) is float and treatment["p_value"] < 0.01
    assert body["srm"] == {"mismatch": False, "p_value": 1.0}
    # A variant without exposures yet: no comparison, no crash.
    empty = readout_body(spec, {"control": (10, 1)})
    assert empty["variants"][1]["exposures"] == 0 and empty["variants"][1]["lift"] is None

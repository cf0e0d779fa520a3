"""PodDisruptionBudgets that cannot block a drain (issue 11, item 4): each budget sets one
field, lets at least one pod go at the workload's smallest size, and every values
combination that would allow zero disruptions is refused."""

from __future__ import annotations

import math

import helm_python as helm
import pytest
from chart_scenarios import SCENARIOS


def allowed_disruptions(spec: dict, pods: int) -> int:
    """What the disruption controller allows with `pods` healthy pods (percentages round up)."""

    def scaled(value):
        if isinstance(value, str) and value.endswith("%"):
            return math.ceil(int(value[:-1]) * pods / 100)
        return int(value)

    if "maxUnavailable" in spec:
        return min(scaled(spec["maxUnavailable"]), pods)
    return max(pods - scaled(spec["minAvailable"]), 0)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_budget_sets_one_field_and_lets_a_drain_evict_at_the_smallest_size(rendered, scenario):
    objects = rendered[scenario]
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    hpas = {o["spec"]["scaleTargetRef"]["name"]: o for o in objects if o["kind"] == "HorizontalPodAutoscaler"}
    budgets = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    for pdb in budgets:
        spec, name = pdb["spec"], pdb["metadata"]["name"]
        assert len({"minAvailable", "maxUnavailable"} & set(spec)) == 1, f"{name}: {spec}"
        (target,) = [
            w
            for w in workloads
            if spec["selector"]["matchLabels"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        wname = target["metadata"]["name"]
        smallest = hpas[wname]["spec"]["minReplicas"] if wname in hpas else target["spec"]["replicas"]
        assert allowed_disruptions(spec, smallest) >= 1, f"{name} allows no disruption with {smallest} pods: {spec}"
    if scenario in ("default", "production"):
        assert len(budgets) >= 8


def test_the_defaults_are_max_unavailable_one(rendered):
    for pdb in (o for o in rendered["default"] if o["kind"] == "PodDisruptionBudget"):
        assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]


def _budget(objects, name):
    return next(o["spec"] for o in objects if o["kind"] == "PodDisruptionBudget" and o["metadata"]["name"] == name)


def test_min_available_renders_as_given_and_zero_stays_zero(kit):
    """minAvailable: 0 once rendered maxUnavailable: 0 (no disruption at all)."""
    objects = kit.render(
        {
            "ranking": {"pdb": {"minAvailable": 0, "maxUnavailable": None}},
            "gateway": {"pdb": {"minAvailable": "50%", "maxUnavailable": None}},
        }
    )
    assert {k: v for k, v in _budget(objects, "recfleet-ranking").items() if k != "selector"} == {
        "minAvailable": 0,
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }
    assert _budget(objects, "recfleet-gateway")["minAvailable"] == "50%"
    assert "maxUnavailable" not in _budget(objects, "recfleet-gateway")


def _off(key):
    return {key: {"autoscaling": {"enabled": False}}}


def _merge(*parts):
    out: dict = {}
    for part in parts:
        for key, value in part.items():
            out[key] = {**out.get(key, {}), **value}
    return out


ONLY_MIN = {"maxUnavailable": None}
# Each trap allows zero disruptions (or is ambiguous); the message names the field.
TRAPS = [
    ({"gateway": {"pdb": {"maxUnavailable": 0}}}, "/gateway/pdb/maxUnavailable"),
    ({"ranking": {"pdb": {"maxUnavailable": "0%"}}}, "/ranking/pdb/maxUnavailable"),
    ({"featureStore": {"pdb": {"maxUnavailable": -1}}}, "/featureStore/pdb/maxUnavailable"),
    ({"eventIngest": {"pdb": {"minAvailable": "100%", **ONLY_MIN}}}, "/eventIngest/pdb/minAvailable"),
    # The old defaults: both fields set.
    ({"ingestSink": {"pdb": {"minAvailable": 1, "maxUnavailable": 0}}}, "/ingestSink/pdb/maxUnavailable"),
    ({"ranking": {"pdb": {"minAvailable": 1}}}, "ranking.pdb sets both"),
    # minAvailable at or above the smallest size (autoscaling.minReplicas, or replicas).
    ({"ranking": {"pdb": {"minAvailable": 2, **ONLY_MIN}}}, "ranking.pdb.minAvailable 2 keeps 2 of 2 pods"),
    (
        {"gateway": {"autoscaling": {"minReplicas": 1}, "pdb": {"minAvailable": 1, **ONLY_MIN}}},
        "gateway.pdb.minAvailable 1 keeps 1 of 1 pods (its autoscaling.minReplicas)",
    ),
    (
        _merge(_off("candidateGen"), {"candidateGen": {"replicas": 1, "pdb": {"minAvailable": 1, **ONLY_MIN}}}),
        "candidateGen.pdb.minAvailable 1 keeps 1 of 1 pods (its replicas)",
    ),
    (
        _merge(_off("featureStore"), {"featureStore": {"replicas": 3, "pdb": {"minAvailable": 5, **ONLY_MIN}}}),
        "featureStore.pdb.minAvailable 5 keeps 5 of 3 pods",
    ),
    # Percentages round up: 50% of one pod keeps it, 90% of four keeps all four.
    (
        {"ingestSink": {"autoscaling": {"minReplicas": 1}, "pdb": {"minAvailable": "50%", **ONLY_MIN}}},
        "ingestSink.pdb.minAvailable 50% keeps 1 of 1 pods",
    ),
    (
        {"ranking": {"autoscaling": {"minReplicas": 4}, "pdb": {"minAvailable": "90%", **ONLY_MIN}}},
        "ranking.pdb.minAvailable 90% keeps 4 of 4 pods",
    ),
]


@pytest.mark.parametrize("values, message", TRAPS, ids=[m for _, m in TRAPS])
def test_every_budget_that_allows_no_disruption_is_refused(kit, values, message):
    with helm.Chart.load(kit.CHART) as chart, pytest.raises((helm.HelmValuesError, helm.HelmRenderError)) as error:
        chart.render(values, name="recfleet", namespace="recfleet")
    assert message in str(error.value)


ACCEPTED = [
    {"ranking": {"autoscaling": {"minReplicas": 4}, "pdb": {"minAvailable": "50%", **ONLY_MIN}}},
    {"ranking": {"autoscaling": {"minReplicas": 3}, "pdb": {"minAvailable": 2, **ONLY_MIN}}},
    {"gateway": {"pdb": {"maxUnavailable": "10%"}}},
    # A disabled budget is not checked against the replica count.
    {"gateway": {"autoscaling": {"minReplicas": 1}, "pdb": {"enabled": False, "minAvailable": 1, **ONLY_MIN}}},
]


@pytest.mark.parametrize("values", ACCEPTED)
def test_budgets_that_let_a_pod_go_are_accepted(kit, values):
    objects = kit.render(values)
    for pdb in (o for o in objects if o["kind"] == "PodDisruptionBudget"):
        assert len({"minAvailable", "maxUnavailable"} & set(pdb["spec"])) == 1

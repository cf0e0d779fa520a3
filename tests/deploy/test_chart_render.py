"""The chart lints, refuses bad values, and renders objects Kubernetes 1.33 and the CRDs accept."""

from __future__ import annotations

import helm_python as helm
import pytest

from_scenarios = pytest.mark.parametrize(
    "scenario", ["default", "minimal", "production", "canaries-on", "monitoring-off", "shards-4x2"]
)


def test_every_required_scenario_exists(rendered):
    assert {"default", "minimal", "production", "canaries-on", "monitoring-off", "shards-4x2"} <= set(rendered)


@from_scenarios
def test_helm_lint_reports_no_errors_or_warnings(kit, scenario):
    report = helm.lint(str(kit.CHART), kit.scenario_values(scenario), strict=True, kube_version="v1.33.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], problems or report["errors"]


@from_scenarios
def test_every_object_validates_against_kubernetes_1_33_or_its_crd(rendered, kit, scenario):
    errors = {f"{o['kind']}/{o['metadata']['name']}": kit.validation_errors(o) for o in rendered[scenario]}
    assert {k: v for k, v in errors.items() if v} == {}


def test_crd_validation_catches_a_bad_servicemonitor(rendered, kit):
    monitor = next(o for o in rendered["default"] if o["kind"] == "ServiceMonitor")
    broken = kit.strip(monitor) | {"spec": {**monitor["spec"], "endpoints": [{"port": "metrics", "interval": "often"}]}}
    assert kit.validation_errors(broken)


def test_crd_validation_is_strict_about_unknown_fields(rendered, kit):
    monitor = next(o for o in rendered["default"] if o["kind"] == "ServiceMonitor")
    typo = {**monitor["spec"]["endpoints"][0], "scrapeTimout": "5s"}
    broken = kit.strip(monitor) | {"spec": {**monitor["spec"], "endpoints": [typo]}}
    assert any("scrapeTimout" in e for e in kit.validation_errors(broken))


def test_strict_validation_catches_an_unknown_field(rendered, kit):
    deployment = next(o for o in rendered["default"] if o["kind"] == "Deployment")
    broken = kit.strip(deployment) | {"spec": {**deployment["spec"], "replicaCount": 3}}
    assert kit.validation_errors(broken)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"ranking": {"canary": {"weight": 101}}}, "/ranking/canary/weight"),
        ({"ranking": {"canary": {"weight": -1}}}, "/ranking/canary/weight"),
        ({"eventIngest": {"canary": {"shadowPercent": 10}}}, "/eventIngest/canary/shadowPercent"),
        ({"featureStore": {"replicaCount": 3}}, "replicaCount"),
        ({"ranking": {"env": {"RECFLEET_GATEWAY_PORT": "1"}}}, "RECFLEET_GATEWAY_PORT"),
        ({"candidateGen": {"shards": {"count": 0}}}, "/candidateGen/shards/count"),
        ({"kafka": {"bootstrapServers": ""}}, "/kafka/bootstrapServers"),
        ({"jobs": {"cronJobs": {"train-everything": {"enabled": True, "schedule": "0 1 * * *"}}}}, "train-everything"),
    ],
)
def test_values_schema_refuses_bad_values_naming_the_field(kit, values, message):
    with helm.Chart.load(kit.CHART) as chart, pytest.raises(helm.HelmValuesError) as error:
        chart.render(values, name="recfleet", namespace="recfleet")
    assert message in str(error.value)


def test_notes_tell_the_next_commands(kit):
    with helm.Chart.load(kit.CHART) as chart:
        notes = chart.render({"ranking": {"canary": {"enabled": True, "weight": 10}}}, name="rf", namespace="prod")[
            "recfleet/templates/NOTES.txt"
        ]
    assert "helm test rf -n prod" in notes
    assert "ranking: 10%" in notes
    assert "helm rollback rf -n prod" in notes


def test_another_release_name_prefixes_every_object_and_address(kit):
    objects = kit.render({"ranking": {"canary": {"enabled": True, "weight": 5}}}, name="shop", namespace="shop")
    named = [o for o in objects if o["kind"] != "Pod"]
    assert all(o["metadata"]["name"].startswith("shop-recfleet-") for o in named)
    services = {o["metadata"]["name"] for o in objects if o["kind"] == "Service"}
    gateway_env = next(
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "shop-recfleet-gateway-env"
    )
    targets = [v for k, v in gateway_env["data"].items() if k.endswith(("_TARGET", "_TARGETS")) and v]
    assert len(targets) == 5
    for value in targets:
        for target in value.split(","):
            assert target.startswith("dns:///shop-recfleet-"), target
            assert target.removeprefix("dns:///").split(":")[0] in services
    assert any(o["metadata"]["name"] == "shop-recfleet-routing" for o in objects)

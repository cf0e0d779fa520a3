"""Edges, drain and the production example (issue 11, item 7): gateway metrics on a port no
route reaches, pods that outlive their drain, consumers probed on their poll loop, and a
production example pinned by digest with its secrets, labels, networks and storage."""

from __future__ import annotations

import json
import math
import re

import helm_python as helm
import pytest
import yaml
from chart_scenarios import PREFIXES, per_scenario

DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def _get(objects, kind, name):
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def _env(objects, container) -> dict[str, str]:
    """Plain values a container gets: its ConfigMaps, then its own env list (which wins)."""
    maps = {o["metadata"]["name"]: o.get("data") or {} for o in objects if o["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def _containers(obj):
    spec = obj["spec"]
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]["template"]["spec"]
    elif obj["kind"] != "Pod":
        spec = spec["template"]["spec"]
    return spec["containers"]


# --- gateway metrics on their own port -------------------------------------------------------


@per_scenario
def test_gateway_serves_metrics_on_a_port_of_its_own_that_is_scraped_and_never_routed(
    rendered, merged_values, scenario
):
    objects, values = rendered[scenario], merged_values[scenario]
    deployment = _get(objects, "Deployment", "recfleet-gateway")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert set(ports) == {"http", "metrics"} and ports["http"] != ports["metrics"]
    assert _env(objects, container)["RECFLEET_GATEWAY_METRICS_PORT"] == str(ports["metrics"])
    service = _get(objects, "Service", "recfleet-gateway")
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {"http": "http", "metrics": "metrics"}
    if values["monitoring"]["enabled"]:
        monitor = _get(objects, "ServiceMonitor", "recfleet-gateway")
        assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    for route in (o for o in objects if o["kind"] == "HTTPRoute"):
        refs = [ref for rule in route["spec"]["rules"] for ref in rule["backendRefs"]]
        assert refs and all(ref["port"] == values["gateway"]["ports"]["http"] for ref in refs)
    # Prometheus multiprocess files for the workers live under /tmp: a writable emptyDir.
    pod = deployment["spec"]["template"]["spec"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert not mount.get("readOnly") and "emptyDir" in next(v for v in pod["volumes"] if v["name"] == mount["name"])


@pytest.mark.parametrize("scenario", ["default", "production"])
def test_only_the_scraper_reaches_the_gateway_metrics_port(rendered, merged_values, scenario):
    policy = _get(rendered[scenario], "NetworkPolicy", "recfleet-gateway")["spec"]
    rules = {tuple(p["port"] for p in rule["ports"]): rule.get("from") for rule in policy["ingress"]}
    assert set(rules) == {("http",), ("metrics",)}
    assert rules[("metrics",)] == merged_values[scenario]["networkPolicy"]["metricsFrom"]


# --- drain ---------------------------------------------------------------------------------


@per_scenario
def test_every_pod_outlives_its_drain_and_grace(rendered, merged_values, scenario):
    objects = rendered[scenario]
    checked = 0
    for obj in (o for o in objects if o["kind"] in ("Deployment", "StatefulSet")):
        pod = obj["spec"]["template"]["spec"]
        prefix = PREFIXES[obj["metadata"]["labels"]["app.kubernetes.io/component"]]
        env = _env(objects, pod["containers"][0])
        drain, grace = float(env[f"{prefix}DRAIN_SECONDS"]), float(env[f"{prefix}GRACE_SECONDS"])
        assert pod["terminationGracePeriodSeconds"] >= drain + grace + 5, (
            f"{obj['metadata']['name']}: {pod['terminationGracePeriodSeconds']} s < drain {drain} + grace {grace} + 5"
        )
        checked += 1
    assert checked >= 7


def test_the_gateway_drains_by_itself(rendered):
    """SIGTERM: readiness 503 for DRAIN_SECONDS while serving, then stop; no preStop needed."""
    objects = rendered["production"]
    container = _get(objects, "Deployment", "recfleet-gateway")["spec"]["template"]["spec"]["containers"][0]
    assert float(_env(objects, container)["RECFLEET_GATEWAY_DRAIN_SECONDS"]) > 0
    assert "lifecycle" not in container


@pytest.mark.parametrize(
    "values, message",
    [
        ({"gateway": {"terminationGracePeriodSeconds": 15}}, "gateway.terminationGracePeriodSeconds (15)"),
        ({"ingestSink": {"terminationGracePeriodSeconds": 20}}, "ingestSink.terminationGracePeriodSeconds (20)"),
        (
            {"eventIngest": {"env": {"RECFLEET_INGEST_DRAIN_SECONDS": "30"}}},
            "eventIngest.terminationGracePeriodSeconds (30)",
        ),
        (
            {"ranking": {"canary": {"enabled": True, "weight": 1, "env": {"RECFLEET_RANKING_GRACE_SECONDS": "60"}}}},
            "(canary track)",
        ),
    ],
)
def test_a_grace_period_shorter_than_the_drain_is_refused(kit, values, message):
    with helm.Chart.load(kit.CHART) as chart, pytest.raises(helm.HelmRenderError) as error:
        chart.render(values, name="recfleet", namespace="recfleet")
    assert message in str(error.value)


# --- consumers ------------------------------------------------------------------------------


@per_scenario
def test_consumers_are_probed_on_their_poll_loop(rendered, scenario):
    objects = rendered[scenario]
    for name in ("recfleet-ingest-sink", "recfleet-ingest-realtime"):
        container = _get(objects, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
        assert probes["livenessProbe"] == {"path": "/healthz/live", "port": "metrics"}, name
        assert probes["readinessProbe"] == {"path": "/healthz/ready", "port": "metrics"}, name
        assert probes["startupProbe"]["path"] != "/metrics", name
        assert float(_env(objects, container)["RECFLEET_INGEST_LIVENESS_SECONDS"]) > 0


# --- the production example -----------------------------------------------------------------


def test_every_production_image_is_pinned_by_a_marked_placeholder_digest(rendered, kit):
    images = {
        c["image"]
        for o in rendered["production"]
        if o["kind"] in ("Deployment", "StatefulSet", "CronJob", "Job", "Pod")
        for c in _containers(o)
    }
    assert len(images) >= 6
    assert {image for image in images if not DIGEST.search(image)} == set()
    text = (kit.CHART / "ci" / "production-values.yaml").read_text()
    for line in text.splitlines():
        if "digest:" in line:
            assert "# replace" in line, line


def test_production_cursor_secret_release_label_and_networks(rendered, merged_values):
    objects, values = rendered["production"], merged_values["production"]
    container = _get(objects, "Deployment", "recfleet-gateway")["spec"]["template"]["spec"]["containers"][0]
    cursor = next(e for e in container["env"] if e["name"] == "RECFLEET_GATEWAY_CURSOR_SECRET")
    assert cursor["valueFrom"]["secretKeyRef"]["name"] == values["cursorSecret"]["existingSecret"]
    monitoring = [o for o in objects if o["kind"] in ("ServiceMonitor", "PrometheusRule")]
    assert len(monitoring) >= 8
    assert all(o["metadata"]["labels"].get("release") == "kube-prometheus-stack" for o in monitoring)
    for system in ("postgres", "redis", "kafka"):
        policy = _get(objects, "NetworkPolicy", f"recfleet-egress-{system}")["spec"]
        cidrs = [peer["ipBlock"]["cidr"] for rule in policy["egress"] for peer in rule["to"]]
        ports = [p["port"] for rule in policy["egress"] for p in rule["ports"]]
        assert cidrs == values["networkPolicy"]["egress"][system]["cidrs"] and "10.0.0.0/8" not in cidrs
        assert ports == values["networkPolicy"]["egress"][system]["ports"]


def test_production_runs_no_canary_at_weight_zero(merged_values):
    values = merged_values["production"]
    for key in ("gateway", "candidateGen", "ranking", "featureStore", "eventIngest"):
        canary = values[key]["canary"]
        assert not canary["enabled"] or canary["weight"] > 0, key


def test_the_artifacts_volume_binds_on_default_storage_classes_unless_configured(rendered, merged_values):
    default = _get(rendered["default"], "PersistentVolumeClaim", "recfleet-artifacts")["spec"]
    assert default["accessModes"] == ["ReadWriteOnce"] and "storageClassName" not in default
    production = _get(rendered["production"], "PersistentVolumeClaim", "recfleet-artifacts")["spec"]
    assert production["accessModes"] == ["ReadWriteMany"] and production["storageClassName"]


# --- the prod overlay -----------------------------------------------------------------------


def test_the_prod_overlay_is_a_production_example_too(built_overlays, kit):
    objects = built_overlays["prod"]
    images = {
        c["image"]
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet", "CronJob", "Job")
        for c in _containers(o)
    }
    assert {image for image in images if not DIGEST.search(image)} == set()
    kustomization = (kit.KUSTOMIZE / "overlays" / "prod" / "kustomization.yaml").read_text()
    assert all("# replace" in line for line in kustomization.splitlines() if re.search(r"digest:|@sha256:", line))
    gateway = _get(objects, "Deployment", "recfleet-gateway")["spec"]["template"]["spec"]["containers"][0]
    cursor = next(e for e in gateway["env"] if e["name"] == "RECFLEET_GATEWAY_CURSOR_SECRET")
    assert cursor["valueFrom"]["secretKeyRef"] == {"name": "recfleet-gateway-cursor", "key": "cursor-secret"}
    assert "RECFLEET_GATEWAY_CURSOR_SECRET" not in _get(objects, "ConfigMap", "recfleet-gateway-env")["data"]
    monitoring = [o for o in objects if o["kind"] in ("ServiceMonitor", "PrometheusRule")]
    assert monitoring and all(o["metadata"]["labels"].get("release") == "kube-prometheus-stack" for o in monitoring)
    for system in ("postgres", "redis", "kafka"):
        policy = _get(objects, "NetworkPolicy", f"recfleet-egress-{system}")["spec"]
        assert "10.0.0.0/8" not in [peer["ipBlock"]["cidr"] for rule in policy["egress"] for peer in rule["to"]], system
    routing = json.loads(_get(objects, "ConfigMap", "recfleet-routing")["data"]["routing.json"])["services"]
    assert all(state["weight"] > 0 for state in routing.values() if state["canary"])
    claim = _get(objects, "PersistentVolumeClaim", "recfleet-artifacts")["spec"]
    assert claim["accessModes"] == ["ReadWriteMany"] and claim["storageClassName"]


def test_the_kustomize_base_binds_on_default_storage_classes(kit):
    claim = yaml.safe_load((kit.KUSTOMIZE / "base" / "persistentvolumeclaim-recfleet-artifacts.yaml").read_text())
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and "storageClassName" not in claim["spec"]


def test_grace_arithmetic_matches_the_template(kit):
    """The refusal and the test agree at the boundary: drain + grace + 5 exactly is accepted."""
    drain, grace = 7.5, 12
    needed = math.ceil(drain + grace + 5)
    kit.render(
        {
            "gateway": {
                "terminationGracePeriodSeconds": needed,
                "env": {"RECFLEET_GATEWAY_DRAIN_SECONDS": str(drain), "RECFLEET_GATEWAY_GRACE_SECONDS": str(grace)},
            }
        }
    )

"""One owner of the canary split (issue 11, item 6). The gateway process splits the internal
services per user (sticky, recfleet-routing); the HTTPRoute is the only thing that splits
the gateway's own traffic. In every values combination exactly one layer splits each
service: no route or Service splits an internal service, nothing but the HTTPRoute splits
the gateway, and a gateway weight with no HTTPRoute to apply it is refused."""

from __future__ import annotations

import itertools
import json

import helm_python as helm
import pytest

INTERNAL = {
    "candidateGen": "candidate-gen",
    "ranking": "ranking",
    "featureStore": "feature-store",
    "eventIngest": "event-ingest",
}
TRACK = "recfleet.io/track"


def _combinations():
    """gatewayApi on/off x each canary alone, all of them, and the CI scenarios' own."""
    canaries = {
        key: {"canary": {"enabled": True, "weight": weight}}
        for key, weight in zip(["gateway", *INTERNAL], [5, 1, 10, 50, 100], strict=False)
    }
    sets = [[]] + [[key] for key in canaries] + [list(canaries)]
    for api, keys in itertools.product([False, True], sets):
        values = {"gatewayApi": {"enabled": api, "httpRoute": {"parentRefs": [{"name": "public"}]}}}
        values.update({key: canaries[key] for key in keys})
        yield f"api={api}-" + ("+".join(keys) or "none"), values


COMBINATIONS = dict(_combinations())


def _names_of(service_key: str, objects) -> set[str]:
    """Every Service name (both tracks, headless ones too) of one internal service."""
    component = INTERNAL[service_key]
    return {
        o["metadata"]["name"]
        for o in objects
        if o["kind"] == "Service" and o["metadata"]["labels"]["app.kubernetes.io/component"] == component
    }


def assert_one_layer_splits(objects, values):
    routing = json.loads(
        next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "recfleet-routing")["data"][
            "routing.json"
        ]
    )["services"]
    routes = [o for o in objects if o["kind"] in ("HTTPRoute", "GRPCRoute")]
    backends = {
        ref["name"] for route in routes for rule in route["spec"]["rules"] for ref in rule.get("backendRefs", [])
    }
    parents = {ref["name"] for route in routes for ref in route["spec"].get("parentRefs", [])}
    # Internal services: the gateway's routing file is the one splitter.
    for key, service in INTERNAL.items():
        canary = values.get(key, {}).get("canary", {})
        on = canary.get("enabled", False)
        assert routing[service]["weight"] == (canary.get("weight", 0) if on else 0), service
        names = _names_of(key, objects)
        assert not names & (backends | parents), (
            f"a route splits {service} a second time: {names & (backends | parents)}"
        )
    assert "gateway" not in routing, "the gateway does not route to itself"
    assert not [r for r in routes if r["kind"] == "GRPCRoute"]
    # Every Service selects one track: no Service splits by the pods' count.
    for svc in (o for o in objects if o["kind"] == "Service"):
        assert svc["spec"]["selector"].get(TRACK) in ("stable", "canary"), svc["metadata"]["name"]
    # The gateway: only the HTTPRoute, with the gateway canary's weight.
    gateway = values.get("gateway", {}).get("canary", {})
    http = [r for r in routes if r["kind"] == "HTTPRoute"]
    if values["gatewayApi"]["enabled"]:
        (route,) = http
        weights = {ref["name"]: ref["weight"] for rule in route["spec"]["rules"] for ref in rule["backendRefs"]}
        w = gateway.get("weight", 0) if gateway.get("enabled") else 0
        expected = {"recfleet-gateway": 100 - w, **({"recfleet-gateway-canary": w} if gateway.get("enabled") else {})}
        assert weights == expected
    else:
        assert http == []


@pytest.mark.parametrize("name", list(COMBINATIONS))
def test_exactly_one_layer_splits_each_service(kit, name):
    values = COMBINATIONS[name]
    gateway = values.get("gateway", {}).get("canary", {})
    if gateway.get("enabled") and gateway["weight"] > 0 and not values["gatewayApi"]["enabled"]:
        # No layer could apply the gateway's weight: refused rather than silently ignored.
        with helm.Chart.load(kit.CHART) as chart, pytest.raises(helm.HelmRenderError) as error:
            chart.render(values, name="recfleet", namespace="recfleet")
        assert "gateway.canary.weight" in str(error.value)
        return
    assert_one_layer_splits(kit.render(values), values)


@pytest.mark.parametrize(
    "scenario", ["default", "minimal", "production", "canaries-on", "monitoring-off", "shards-4x2"]
)
def test_exactly_one_layer_splits_each_service_in_every_ci_scenario(rendered, merged_values, scenario):
    assert_one_layer_splits(rendered[scenario], merged_values[scenario])


def test_a_gateway_canary_without_weight_needs_no_route(kit):
    """A gateway canary reached only through its own Service (smoke tests) is fine at weight 0."""
    objects = kit.render({"gateway": {"canary": {"enabled": True, "weight": 0}}})
    assert any(o["kind"] == "Deployment" and o["metadata"]["name"] == "recfleet-gateway-canary" for o in objects)

"""NetworkPolicies evaluated like a CNI would, over the rendered pods: each call the fleet
makes is allowed and calls it never makes are denied."""

from __future__ import annotations

import pytest


def matches(selector: dict, labels: dict) -> bool:
    return selector.get("matchLabels", {}).items() <= labels.items() and not selector.get("matchExpressions")


def port_matches(rule_ports, port: int, name: str) -> bool:
    if not rule_ports:
        return True
    return any(p.get("port") in (port, name) and p.get("protocol", "TCP") == "TCP" for p in rule_ports)


def allowed(policies, src: dict, dst: dict, port: int, name: str) -> bool:
    """Same-namespace pod-to-pod TCP: egress from src and ingress to dst must both allow it."""

    def direction(kind, pod, peer_labels, peers_key):
        selecting = [p for p in policies if kind in p["policyTypes"] and matches(p["podSelector"], pod)]
        if not selecting:
            return True
        for policy in selecting:
            for rule in policy.get(kind.lower(), []):
                peers = rule.get(peers_key)
                peer_ok = peers is None or any(
                    "podSelector" in peer
                    and "namespaceSelector" not in peer
                    and matches(peer["podSelector"], peer_labels)
                    for peer in peers
                )
                if peer_ok and port_matches(rule.get("ports"), port, name):
                    return True
        return False

    return direction("Egress", src, dst, "to") and direction("Ingress", dst, src, "from")


@pytest.fixture(scope="module")
def fleet(rendered):
    objects = rendered["canaries-on"]
    policies = [o["spec"] for o in objects if o["kind"] == "NetworkPolicy"]
    pods = {}
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            spec = obj["spec"]["template"]
            ports = {p["name"]: p["containerPort"] for p in spec["spec"]["containers"][0]["ports"]}
            pods[obj["metadata"]["name"]] = (spec["metadata"]["labels"], ports)
        elif obj["kind"] == "Pod":
            pods["test"] = (obj["metadata"]["labels"], {})
    return policies, pods


def call(fleet, src: str, dst: str, port_name: str) -> bool:
    policies, pods = fleet
    dst_labels, dst_ports = pods[dst]
    return allowed(policies, pods[src][0], dst_labels, dst_ports[port_name], port_name)


CALLS = [
    ("recfleet-gateway", "recfleet-feature-store"),
    ("recfleet-gateway", "recfleet-feature-store-canary"),
    ("recfleet-gateway", "recfleet-ranking"),
    ("recfleet-gateway", "recfleet-ranking-canary"),
    ("recfleet-gateway", "recfleet-event-ingest"),
    ("recfleet-gateway", "recfleet-candidate-gen-s0"),
    ("recfleet-gateway", "recfleet-candidate-gen-s1"),
    ("recfleet-gateway", "recfleet-candidate-gen-canary-s1"),
    ("recfleet-gateway-canary", "recfleet-ranking"),
    ("recfleet-ranking", "recfleet-feature-store"),
    ("recfleet-ranking-canary", "recfleet-feature-store-canary"),
    ("test", "recfleet-candidate-gen-s0"),
    ("test", "recfleet-event-ingest-canary"),
]
NEVER = [
    ("recfleet-ranking", "recfleet-candidate-gen-s0"),
    ("recfleet-feature-store", "recfleet-ranking"),
    ("recfleet-candidate-gen-s0", "recfleet-feature-store"),
    ("recfleet-ingest-sink", "recfleet-ranking"),
    ("recfleet-event-ingest", "recfleet-feature-store"),
    ("recfleet-ranking", "recfleet-gateway"),
]


@pytest.mark.parametrize("src, dst", CALLS)
def test_calls_the_fleet_makes_are_allowed(fleet, src, dst):
    assert call(fleet, src, dst, "grpc")


@pytest.mark.parametrize("src, dst", NEVER)
def test_calls_the_fleet_never_makes_are_denied(fleet, src, dst):
    port = "http" if dst == "recfleet-gateway" else "grpc"
    assert not call(fleet, src, dst, port)


def test_metrics_ports_are_closed_to_other_pods(fleet):
    assert not call(fleet, "recfleet-gateway", "recfleet-ranking", "metrics")
    assert not call(fleet, "recfleet-ingest-sink", "recfleet-ingest-realtime", "metrics")
    # The helm test pod reaches the gateway's REST port (below), never its metrics port.
    assert not call(fleet, "recfleet-ranking", "recfleet-gateway", "metrics")
    assert not call(fleet, "test", "recfleet-gateway", "metrics")


def test_the_helm_test_pod_reaches_the_rest_api(fleet):
    assert call(fleet, "test", "recfleet-gateway", "http")

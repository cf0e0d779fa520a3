"""kustomize: the base is the chart's current output, every overlay builds and validates, and
prod differs from dev only where it is meant to."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml


def test_base_and_components_are_up_to_date_with_the_chart(render_module, kit):
    expected = render_module.render_tree()
    on_disk = {str(p.relative_to(kit.KUSTOMIZE)): p.read_text() for p in render_module.generated_paths()}
    stale = sorted(path for path in set(expected) | set(on_disk) if expected.get(path) != on_disk.get(path))
    assert stale == [], f"run `make chart-base`: {stale[:10]}"


def test_base_leaves_out_helm_test_hooks_and_optional_features(built_overlays, render_module):
    base_kinds = {
        o["kind"]
        for o in render_module.render_objects(
            render_module.yaml.safe_load((render_module.HERE / "base-values.yaml").read_text())
        )
    }
    assert "Pod" not in base_kinds
    assert "Job" in base_kinds, "schema migrations run on apply too"
    assert not base_kinds & {"NetworkPolicy", "ServiceMonitor", "PrometheusRule", "HTTPRoute", "GRPCRoute"}


@pytest.mark.parametrize("overlay", ["dev", "staging", "prod"])
def test_overlay_builds_into_valid_objects_in_its_namespace(built_overlays, kit, overlay):
    objects = built_overlays[overlay]
    assert len(objects) > 50
    errors = {f"{o['kind']}/{o['metadata']['name']}": kit.validation_errors(o) for o in objects}
    assert {k: v for k, v in errors.items() if v} == {}
    namespace = {"dev": "recfleet-dev", "staging": "recfleet-staging", "prod": "recfleet"}[overlay]
    assert {o["metadata"].get("namespace") for o in objects} == {namespace}
    for obj in objects:
        assert obj["metadata"]["labels"]["recfleet.io/environment"] == overlay
        selector = obj.get("spec", {}).get("selector", {}) if isinstance(obj.get("spec"), dict) else {}
        assert "recfleet.io/environment" not in selector.get("matchLabels", selector), obj["metadata"]["name"]


def _index(objects):
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def _diff(a, b, path=""):
    """Paths (list items of named things keyed by name) where two objects differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            yield from _diff(a.get(key), b.get(key), f"{path}/{key}")
    elif isinstance(a, list) and isinstance(b, list) and all(isinstance(x, dict) and "name" in x for x in a + b):
        left, right = {x["name"]: x for x in a}, {x["name"]: x for x in b}
        for name in sorted(set(left) | set(right)):
            yield from _diff(left.get(name), right.get(name), f"{path}[{name}]")
    elif a != b:
        yield path


# What prod may change relative to dev (everything else must be identical), by path, and by
# path for some objects only.
INTENDED = [
    r"^/metadata/namespace$",
    r"^/metadata/labels/recfleet\.io/environment$",
    r"^/spec/(replicas|minReplicas|maxReplicas|minAvailable)$",
    r"/containers\[[a-z-]+\]/image$",
    r"/containers\[[a-z-]+\]/resources/.*$",
    r"/containers\[[a-z-]+\]/env\[OTEL_[A-Z_]+\]$",
    r"/template/metadata/labels/recfleet\.io/environment$",
    r"/jobTemplate/metadata/labels/recfleet\.io/environment$",
    r"/template/metadata/annotations/checksum/config$",
    r"^/spec/resources/requests/storage$",
    r"^/data/routing\.json$",
    r"^/data/RECFLEET_GATEWAY_(CANARY_WEIGHTS|[A-Z_]+_CANARY_TARGETS?)$",
]
INTENDED_FOR = {
    # Backing systems' networks.
    ("NetworkPolicy", r"^recfleet-egress-(postgres|redis|kafka)$"): [r"^/spec/egress$"],
    # An RWX volume of a named class: pods on many nodes mount the artifacts.
    ("PersistentVolumeClaim", r"^recfleet-artifacts$"): [r"^/spec/(accessModes|storageClassName)$"],
    # The cursor key from a Secret instead of the (empty) ConfigMap value.
    ("Deployment", r"^recfleet-gateway$"): [r"/containers\[gateway\]/env\[RECFLEET_GATEWAY_CURSOR_SECRET\]$"],
    ("ConfigMap", r"^recfleet-gateway-env$"): [r"^/data/RECFLEET_GATEWAY_CURSOR_SECRET$"],
}
PROD_ONLY = {
    "NetworkPolicy/recfleet-allow-otel",
    "ServiceMonitor",
    "PrometheusRule",
    "ConfigMap/recfleet-dashboard-",
    "canary",
}


def test_prod_differs_from_dev_only_where_intended(built_overlays):
    dev, prod = _index(built_overlays["dev"]), _index(built_overlays["prod"])
    assert set(dev) <= set(prod), f"objects only in dev: {set(dev) - set(prod)}"
    extra = set(prod) - set(dev)
    for kind, name in extra:
        labels = prod[(kind, name)]["metadata"]["labels"]
        assert (
            kind in ("ServiceMonitor", "PrometheusRule")
            or labels.get("recfleet.io/track") == "canary"
            or name.startswith("recfleet-dashboard-")
            or (kind, name) == ("NetworkPolicy", "recfleet-allow-otel")
        ), f"unexpected prod-only object {kind}/{name}"
    assert any(prod[k]["metadata"]["labels"].get("recfleet.io/track") == "canary" for k in extra)
    unexpected = {}
    changed = set()
    for key in dev:
        paths = list(_diff(dev[key], prod[key]))
        allowed = INTENDED + [
            p for (kind, name), ps in INTENDED_FOR.items() if kind == key[0] and re.search(name, key[1]) for p in ps
        ]
        bad = [p for p in paths if not any(re.search(pattern, p) for pattern in allowed)]
        if bad:
            unexpected[f"{key[0]}/{key[1]}"] = bad
        changed.update(p for p in paths if p not in ("/metadata/namespace", "/metadata/labels/recfleet.io/environment"))
    assert unexpected == {}
    # The intended differences are really there.
    assert any(p.endswith("/image") for p in changed)
    assert any("/resources/" in p for p in changed)
    assert any("OTEL_" in p for p in changed)
    assert "/data/routing.json" in changed
    assert "/spec/egress" in changed and "/spec/accessModes" in changed


def test_prod_routes_ten_percent_of_ranking_to_its_canary(built_overlays):
    import json

    prod = _index(built_overlays["prod"])
    routing = json.loads(prod[("ConfigMap", "recfleet-routing")]["data"]["routing.json"])
    assert routing["services"]["ranking"] == {"canary": True, "weight": 10, "shadow_percent": 0}
    canary = prod[("Deployment", "recfleet-ranking-canary")]["spec"]["template"]["spec"]["containers"][0]
    stable = prod[("Deployment", "recfleet-ranking")]["spec"]["template"]["spec"]["containers"][0]
    assert canary["image"].startswith("registry.example.com/recfleet/ranking@sha256:")
    assert stable["image"].startswith("registry.example.com/recfleet/ranking@sha256:")
    assert canary["image"] != stable["image"]
    gateway_env = prod[("ConfigMap", "recfleet-gateway-env")]["data"]
    assert gateway_env["RECFLEET_GATEWAY_RANKING_CANARY_TARGET"] == "dns:///recfleet-ranking-canary-headless:50071"


def test_prod_deploys_only_canaries_that_get_traffic(built_overlays):
    """A canary at weight 0 is a workload nobody reaches: prod deploys exactly the routed ones."""
    prod = _index(built_overlays["prod"])
    routing = json.loads(prod[("ConfigMap", "recfleet-routing")]["data"]["routing.json"])["services"]
    deployed = {
        o["metadata"]["labels"]["app.kubernetes.io/component"]
        for (kind, _), o in prod.items()
        if kind in ("Deployment", "StatefulSet") and o["metadata"]["labels"].get("recfleet.io/track") == "canary"
    }
    routed = {service for service, state in routing.items() if state["canary"]}
    assert deployed == routed == {"ranking"}
    assert all(routing[service]["weight"] > 0 for service in routed)
    gateway_env = prod[("ConfigMap", "recfleet-gateway-env")]["data"]
    assert {k for k, v in gateway_env.items() if "_CANARY_TARGET" in k and v} == {
        "RECFLEET_GATEWAY_RANKING_CANARY_TARGET"
    }


FEATURES = ["network-policies", "service-monitors", "otel"]
CANARIES = [f"canary-{service}" for service in ("candidate-gen", "ranking", "feature-store", "event-ingest")]
# Every subset of the features, each with no canary and with all of them, plus each canary
# alone beside every feature (2^3 x 2 - 1 + 4 builds instead of 2^7 - 1).
COMBINATIONS = [
    list(features) + canaries
    for n in range(len(FEATURES) + 1)
    for features in itertools.combinations(FEATURES, n)
    for canaries in ([], CANARIES)
    if features or canaries
] + [[*FEATURES, canary] for canary in CANARIES]


def test_the_combinations_cover_every_generated_component(render_module):
    assert set(FEATURES + CANARIES) == set(render_module.COMPONENTS)


@pytest.fixture(scope="module")
def combination_builds(kit, tmp_path_factory):
    """Every combination built once, several kustomize processes at a time."""
    root = tmp_path_factory.mktemp("kustomize")
    for part in ("base", "components"):
        shutil.copytree(kit.KUSTOMIZE / part, root / part)

    def build(components):
        overlay = root / "overlays" / "+".join(components)
        overlay.mkdir(parents=True)
        (overlay / "kustomization.yaml").write_text(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            "resources: [../../base]\ncomponents: [" + ", ".join(f"../../components/{c}" for c in components) + "]\n"
        )
        return subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, check=False)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(build, COMBINATIONS)
        return {"+".join(c): r for c, r in zip(COMBINATIONS, results, strict=False)}


VALIDATED: set[str] = set()


@pytest.mark.parametrize("components", COMBINATIONS, ids=lambda c: "+".join(c))
def test_every_combination_of_components_builds_valid_objects(kit, combination_builds, components):
    result = combination_builds["+".join(components)]
    assert result.returncode == 0, result.stderr
    errors = {}
    for obj in (d for d in yaml.safe_load_all(result.stdout) if d):
        digest = json.dumps(obj, sort_keys=True)
        if digest not in VALIDATED:
            errors[f"{obj['kind']}/{obj['metadata']['name']}"] = kit.validation_errors(obj)
            VALIDATED.add(digest)
    assert {k: v for k, v in errors.items() if v} == {}

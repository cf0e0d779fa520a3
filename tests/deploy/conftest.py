"""Fixtures for the delivery tests: the chart rendered once per scenario (helm-python-sdk,
Helm's own Go code, no cluster), the kustomize overlays built once, schema validators."""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import helm_python as helm
import jsonschema
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

from chart_scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "recfleet"
KUSTOMIZE = ROOT / "deploy" / "kustomize"
CRDS = ROOT / "deploy" / "crds"
KUBE_VERSION = "1.33"
OVERLAYS = ["dev", "staging", "prod"]


def scenario_values(scenario: str) -> dict:
    if scenario == "default":
        return {}
    return yaml.safe_load((CHART / "ci" / f"{scenario}-values.yaml").read_text()) or {}


def render(values: dict, name: str = "recfleet", namespace: str = "recfleet") -> list[dict]:
    """Every rendered object (hooks included) with its template path in `_template`."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=name, namespace=namespace)
    objects = []
    for path, text in sorted(manifests.items()):
        if not path.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append({**doc, "_template": path})
    return objects


def strip(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k != "_template"}


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    return {scenario: render(scenario_values(scenario)) for scenario in SCENARIOS}


@pytest.fixture(scope="session")
def merged_values() -> dict[str, dict]:
    with helm.Chart.load(CHART) as chart:
        return {scenario: chart.merge_values(scenario_values(scenario)) for scenario in SCENARIOS}


@pytest.fixture(scope="session")
def built_overlays() -> dict[str, list[dict]]:
    out = {}
    for overlay in OVERLAYS:
        proc = subprocess.run(
            ["kubectl", "kustomize", str(KUSTOMIZE / "overlays" / overlay)], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, f"kubectl kustomize overlays/{overlay} failed:\n{proc.stderr}"
        out[overlay] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return out


@pytest.fixture(scope="session")
def render_module():
    """deploy/kustomize/render.py, the generator behind `make chart-base`."""
    spec = importlib.util.spec_from_file_location("recfleet_kustomize_render", KUSTOMIZE / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- Kubernetes schemas: kubernetes-validate's strict 1.33 schemas, loaded once per kind. ---


@functools.cache
def _kube_definitions() -> dict:
    from kubernetes_validate import utils

    return utils.schema_contents(
        f"kubernetes-json-schema/v{_kube_schema_version()}-local-strict/_definitions.json", KUBE_VERSION
    )


@functools.cache
def _kube_schema_version() -> str:
    from kubernetes_validate import utils

    return [v for v in utils.all_versions() if utils.major_minor(v) <= KUBE_VERSION][-1]


@functools.cache
def _kube_validator(kind: str, api_version: str):
    from kubernetes_validate import utils
    from referencing import Registry, Resource

    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    path = f"kubernetes-json-schema/v{_kube_schema_version()}-local-strict/{kind.lower()}-{group}.json"
    schema = utils.schema_contents(path, KUBE_VERSION)
    registry = Resource.from_contents(_kube_definitions()) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


@functools.cache
def _crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    validators = {}
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = _closed(version["schema"]["openAPIV3Schema"])
            validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return validators


def _closed(schema: dict) -> dict:
    """Strict mode for a CRD schema: the API server prunes unknown fields silently, so a typo
    would vanish on apply; here an unknown field is an error (as kubernetes-validate's
    strict mode does for built-in kinds)."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: _closed(sub) for name, sub in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _closed(out["additionalProperties"])
    if isinstance(out.get("items"), dict):
        out["items"] = _closed(out["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [_closed(sub) for sub in out[key]]
    return out


def validation_errors(obj: dict) -> list[str]:
    """Schema errors of one object: Kubernetes 1.33 strict, or the repo's CRDs."""
    obj = strip(obj)
    key = (obj["apiVersion"], obj["kind"])
    crd = _crd_validators().get(key)
    if crd is not None:
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in crd.iter_errors(obj)]
    try:
        validator = _kube_validator(obj["kind"], obj["apiVersion"])
    except FileNotFoundError:
        return [f"no Kubernetes {KUBE_VERSION} schema and no CRD for {key}"]
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


def pod_spec(obj: dict) -> dict | None:
    kind = obj["kind"]
    if kind in ("Deployment", "StatefulSet"):
        return obj["spec"]["template"]["spec"]
    if kind == "Job":
        return obj["spec"]["template"]["spec"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind == "Pod":
        return obj["spec"]
    return None


def dump(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)


@pytest.fixture(scope="session")
def kit():
    """The helpers above, for the test modules (conftest is not importable under importlib mode)."""
    return types.SimpleNamespace(
        render=render,
        strip=strip,
        pod_spec=pod_spec,
        validation_errors=validation_errors,
        dump=dump,
        scenario_values=scenario_values,
        ROOT=ROOT,
        CHART=CHART,
        KUSTOMIZE=KUSTOMIZE,
    )

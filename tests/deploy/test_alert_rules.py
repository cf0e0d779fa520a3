"""The alert rules and dashboards against a real Prometheus parser and against the code.

promtool (`make tools`, Debian's prometheus package) parses the rendered PrometheusRule
(`check rules`) and runs the cases in alert_rules_test.yaml (`test rules`). Every metric a
rule or a dashboard queries must be one the code registers, and every latency threshold an
alert compares a histogram_quantile with must be a bucket edge of that histogram."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL = ROOT / ".venv-tools" / "bin" / "promtool"
RULE_TESTS = Path(__file__).with_name("alert_rules_test.yaml")
DASHBOARDS = ROOT / "deploy" / "helm" / "recfleet" / "dashboards"
# Scenarios that render a PrometheusRule (minimal and monitoring-off render none).
RULE_SCENARIOS = ["default", "production", "canaries-on", "shards-4x2"]

# Series the rules read that no recfleet code exports, and who exports them.
EXTERNAL_METRICS = {
    "up": "Prometheus itself, one per scrape target",
    "kube_cronjob_status_last_successful_time": "kube-state-metrics",
}


@pytest.fixture(scope="module")
def promtool() -> Path:
    if not os.access(PROMTOOL, os.X_OK):
        pytest.fail(
            f"{PROMTOOL.relative_to(ROOT)} is missing: run `make tools` (`make test` runs it first)", pytrace=False
        )
    return PROMTOOL


def rule_groups(objects: list[dict], annotations: bool = True) -> list[dict]:
    """The groups of every rendered PrometheusRule, as a Prometheus rules file holds them."""
    groups = [g for o in objects if o["kind"] == "PrometheusRule" for g in copy.deepcopy(o["spec"]["groups"])]
    if not annotations:
        for group in groups:
            for rule in group["rules"]:
                rule.pop("annotations", None)
    return groups


def alerts(objects: list[dict]) -> dict[str, str]:
    return {r["alert"]: r["expr"] for g in rule_groups(objects) for r in g["rules"] if "alert" in r}


def run_promtool(promtool: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(promtool), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("scenario", RULE_SCENARIOS)
def test_promtool_checks_the_rendered_rules(rendered, promtool, tmp_path, scenario):
    groups = rule_groups(rendered[scenario])
    assert groups, f"{scenario}: no PrometheusRule rendered"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    proc = run_promtool(promtool, "check", "rules", "rules.yaml", cwd=tmp_path)
    assert proc.returncode == 0, f"promtool check rules ({scenario}):\n{proc.stdout}{proc.stderr}"


def test_promtool_rule_unit_tests_pass(rendered, merged_values, promtool, tmp_path):
    # alert_rules_test.yaml names the default release's jobs and thresholds.
    assert merged_values["default"]["candidateGen"]["shards"]["count"] == 2
    groups = rule_groups(rendered["default"], annotations=False)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    proc = run_promtool(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert proc.returncode == 0, f"promtool test rules:\n{proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("scenario", RULE_SCENARIOS)
def test_shard_down_alert_names_every_shard_of_the_release(rendered, merged_values, scenario):
    expr = alerts(rendered[scenario])["RecfleetCandidateShardDown"]
    count = merged_values[scenario]["candidateGen"]["shards"]["count"]
    jobs = set(re.findall(r'job="([^"]+)"', expr))
    assert jobs == {f"recfleet-candidate-gen-s{shard}" for shard in range(count)}, expr
    for job in jobs:
        assert f'absent(up{{job=~"recfleet-candidate-gen-s[0-9]+"}}), "job", "{job}", "", "")' in expr, (
            f"{job}: no shard scraped anywhere must fire too"
        )
        assert f'unless on (namespace) up{{job="{job}"}}' in expr, f"{job}: missing in one namespace must fire too"


@pytest.mark.parametrize("scenario", RULE_SCENARIOS)
def test_the_rule_carries_the_labels_prometheus_selects_it_by(rendered, merged_values, scenario):
    (rule,) = [o for o in rendered[scenario] if o["kind"] == "PrometheusRule"]
    labels = rule["metadata"]["labels"]
    assert merged_values[scenario]["monitoring"]["labels"].items() <= labels.items()
    assert labels["app.kubernetes.io/instance"] == "recfleet"
    if scenario == "production":
        assert labels["release"] == "kube-prometheus-stack"


# --- What the code exports: every metrics module imported, the registered families listed. ---

_LIST_METRICS = r"""
import gc, importlib, json, pkgutil, sys
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

root = Path(sys.argv[1])
services = {p.parent for p in root.glob("services/*/*/__init__.py")}
packages = sorted(services | {p.parent for p in root.glob("libs/*/__init__.py")})
failed = {}
for package in packages:
    modules = [package.name] + [m.name for m in pkgutil.walk_packages([str(package)], prefix=package.name + ".")]
    for module in modules:
        leaf = module.rsplit(".", 1)[-1]
        if leaf.startswith("test_") or leaf in ("conftest", "__main__", "tests"):
            continue
        try:
            importlib.import_module(module)
        except BaseException as exc:
            failed[module] = repr(exc)
metrics = {}
for obj in gc.get_objects():
    if isinstance(obj, MetricWrapperBase):
        (family,) = obj.describe()
        bounds = [b for b in getattr(obj, "_upper_bounds", []) if b != float("inf")]
        metrics[family.name] = {"type": family.type, "buckets": bounds}
print(json.dumps({"metrics": metrics, "failed": failed}))
"""

SAMPLE_SUFFIXES = {
    "counter": ["_total", "_created"],
    "gauge": [""],
    "histogram": ["_bucket", "_count", "_sum", "_created"],
    "summary": ["", "_count", "_sum", "_created"],
    "info": ["_info"],
    "stateset": [""],
    "enum": [""],
}


@pytest.fixture(scope="module")
def exported() -> dict[str, dict]:
    """Family name -> {type, buckets} for every metric the services' and libraries' modules
    register when imported, in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-c", _LIST_METRICS, str(ROOT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not out["failed"], f"modules that do not import, so their metrics are unknown: {out['failed']}"
    return out["metrics"]


def sample_names(metrics: dict[str, dict]) -> set[str]:
    return {name + suffix for name, m in metrics.items() for suffix in SAMPLE_SUFFIXES[m["type"]]}


# --- What the rules and dashboards query. ---

_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (functions, keywords, labels dropped)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    expr = re.sub(r"#[^\n]*", " ", expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.:$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", expr):
        name, call = match.groups()
        if not call and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def _exprs(node):
    """Every `expr` string in a panel tree (rows nest their panels)."""
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            yield node["expr"]
        for value in node.values():
            yield from _exprs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _exprs(value)


def dashboard_queries() -> dict[str, list[str]]:
    """Every PromQL query of every dashboard file: panel targets (rows included) and
    templating variables (`label_values(metric, label)` reduced to its metric)."""
    out = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        queries = list(_exprs(board.get("panels", [])))
        for variable in board.get("templating", {}).get("list", []):
            if variable.get("type") != "query":
                continue
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            label_values = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query)
            if label_values:
                queries.append(label_values.group(1))
            elif not re.fullmatch(r"\s*label_values\(\s*\w+\s*\)\s*", query):
                queries.append(query)
        out[path.name] = queries
    return out


def test_the_promql_name_extraction_keeps_metrics_only():
    expr = (
        'histogram_quantile(0.99, sum by (le, shard) (rate(recfleet_candidates_search_seconds_bucket{namespace="$ns",'
        'rpc!~"a|b"}[5m] offset 1h))) > 1e-3 and on (shard) group_left max(up) unless absent(x:rec:ratio)'
    )
    assert metric_names(expr) == {"recfleet_candidates_search_seconds_bucket", "up", "x:rec:ratio"}


def test_every_metric_a_rule_or_dashboard_queries_is_exported_by_the_code(rendered, exported):
    emitted = sample_names(exported)
    recorded = {
        r["record"] for s in RULE_SCENARIOS for g in rule_groups(rendered[s]) for r in g["rules"] if "record" in r
    }
    used: dict[str, set[str]] = {}
    for scenario in RULE_SCENARIOS:
        for group in rule_groups(rendered[scenario]):
            for rule in group["rules"]:
                for name in metric_names(rule["expr"]):
                    used.setdefault(name, set()).add(rule.get("alert") or rule["record"])
    for board, queries in dashboard_queries().items():
        for query in queries:
            for name in metric_names(query):
                used.setdefault(name, set()).add(board)
    assert len(used) > 15
    unknown = {
        name: sorted(where)
        for name, where in used.items()
        if name not in emitted and name not in recorded and name not in EXTERNAL_METRICS
    }
    assert not unknown, f"queried but registered by no module under services/ or libs/: {unknown}"


# --- Latency thresholds on bucket edges. ---


def _call_end(expr: str, start: int) -> int:
    """Index just past the parenthesis that closes the call opened at or after `start`."""
    depth = 0
    for i in range(expr.index("(", start), len(expr)):
        depth += {"(": 1, ")": -1}.get(expr[i], 0)
        if depth == 0:
            return i + 1
    raise ValueError(expr)


def quantile_thresholds(expr: str, recorded: dict[str, str]) -> list[tuple[str, float]]:
    """(histogram family, threshold) for each histogram_quantile(...) compared with a number,
    recording rules expanded."""
    for name, body in recorded.items():
        expr = re.sub(rf"(?<![\w:]){re.escape(name)}(?![\w:])", f"({body})", expr)
    found = []
    for match in re.finditer(r"histogram_quantile\s*\(", expr):
        end = _call_end(expr, match.start())
        compared = re.match(r"\s*\)*\s*(?:>|<|>=|<=)\s*(?:bool\s+)?([0-9.]+(?:e-?[0-9]+)?)", expr[end:])
        if compared:
            (family,) = set(re.findall(r"\b(\w+)_bucket\b", expr[match.start() : end]))
            found.append((family, float(compared.group(1))))
    return found


@pytest.mark.parametrize("scenario", RULE_SCENARIOS)
def test_latency_thresholds_are_bucket_edges_of_the_histograms_they_read(rendered, exported, scenario):
    groups = rule_groups(rendered[scenario])
    recorded = {r["record"]: r["expr"] for g in groups for r in g["rules"] if "record" in r}
    checked, off_edge = [], []
    for alert, expr in alerts(rendered[scenario]).items():
        for family, threshold in quantile_thresholds(expr, recorded):
            assert exported.get(family, {}).get("type") == "histogram", f"{alert}: {family} is no exported histogram"
            buckets = exported[family]["buckets"]
            checked.append(alert)
            if not any(abs(threshold - edge) <= 1e-9 * max(1.0, edge) for edge in buckets):
                off_edge.append(f"{alert}: {threshold} is not an edge of {family} {buckets}")
    assert len(set(checked)) >= 5, checked
    assert not off_edge, "\n".join(off_edge)

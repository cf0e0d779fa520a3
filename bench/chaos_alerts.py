"""What the chart's alert rules would have said while the chaos suite ran.

No Prometheus runs here, so the suite scrapes every process's /metrics itself (with the
`job`, `namespace` and `pod` labels the chart's scrape configuration gives, and an `up`
series per target), and replays the samples through the chart's own rules with promtool
(`promtool test rules`, from `make tools`). The rules are rendered from the chart's
default values with their `for:` durations removed: a scenario lasts seconds, so the
report names each rule whose condition held, which would fire once it held for its `for`.
"""

from __future__ import annotations

import asyncio
import copy
import re
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "recfleet"
PROMTOOL = ROOT / ".venv-tools" / "bin" / "promtool"
NAMESPACE = "recfleet"
JOBS = {
    "gateway": "recfleet-gateway",
    "ranking": "recfleet-ranking",
    "feature-store": "recfleet-feature-store",
    "event-ingest": "recfleet-event-ingest",
    "event-sink": "recfleet-ingest-sink",
    "event-realtime": "recfleet-ingest-realtime",
}

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


def job_for(process: str) -> str:
    if process.startswith("candidate-gen-"):
        return f"recfleet-candidate-gen-s{process.rsplit('-', 1)[1]}"
    return JOBS[process]


class Scraper:
    """Every target's /metrics each `interval` seconds, kept as one list of samples per scrape."""

    def __init__(self, targets: dict[str, str], interval: float = 5.0):
        self.targets = targets  # process name -> metrics URL
        self.interval = interval
        self.scrapes: list[tuple[float, dict[SeriesKey, float]]] = []
        self._stop = asyncio.Event()

    async def run(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            due = start + len(self.scrapes) * self.interval
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            results = await asyncio.gather(*(asyncio.to_thread(self._scrape, n, u) for n, u in self.targets.items()))
            samples: dict[SeriesKey, float] = {}
            for result in results:
                samples.update(result)
            self.scrapes.append((due, samples))

    def stop(self) -> None:
        self._stop.set()

    @staticmethod
    def _scrape(process: str, url: str) -> dict[SeriesKey, float]:
        target = {"job": job_for(process), "namespace": NAMESPACE, "pod": process}
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                text = reply.read().decode()
        except OSError:
            return {("up", tuple(sorted(target.items()))): 0.0}
        samples = {("up", tuple(sorted(target.items()))): 1.0}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                labels = {**sample.labels, **target}
                samples[(sample.name, tuple(sorted(labels.items())))] = float(sample.value)
        return samples


def rendered_rules() -> list[dict]:
    """The rule groups of the chart's PrometheusRule (default values), without `for:`."""
    import helm_python as helm

    with helm.Chart.load(CHART) as chart:
        manifests = chart.render({}, name="recfleet", namespace=NAMESPACE)
    groups = []
    for path, text in manifests.items():
        if not path.endswith(".yaml"):
            continue  # NOTES.txt
        for doc in yaml.safe_load_all(text):
            if doc and doc.get("kind") == "PrometheusRule":
                groups.extend(copy.deepcopy(doc["spec"]["groups"]))
    for group in groups:
        for rule in group["rules"]:
            rule.pop("for", None)
            rule.pop("annotations", None)
    return groups


def _series_name(key: SeriesKey) -> str:
    name, labels = key
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return f"{name}{{{inner}}}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if value != value:  # NaN
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Inf" if value > 0 else "-Inf"
    return repr(value)


def _duration_seconds(text: str) -> float:
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text):
        total += float(amount) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    return total


def conditions_held(scraper: Scraper, groups: list[dict]) -> list[tuple[float, str]]:
    """(monotonic time, alert name) for every evaluation at which an alert's condition held."""
    if not scraper.scrapes:
        return []
    keys = sorted({key for _, samples in scraper.scrapes for key in samples})
    step = int(scraper.interval)
    series = []
    for key in keys:
        values = " ".join(_number(s[key]) if key in s else "_" for _, s in scraper.scrapes)
        series.append({"series": _series_name(key), "values": values})
    alerts = sorted({rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule})
    times = [index * step for index in range(len(scraper.scrapes))]
    tests = [
        {"eval_time": f"{t}s", "alertname": alert, "exp_alerts": []}
        for t in times[1:]  # rates need two samples
        for alert in alerts
    ]
    with tempfile.TemporaryDirectory(prefix="recfleet-chaos-alerts-") as work:
        folder = Path(work)
        (folder / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
        test = {
            "rule_files": ["rules.yaml"],
            "evaluation_interval": f"{step}s",
            "tests": [{"interval": f"{step}s", "input_series": series, "alert_rule_test": tests}],
        }
        (folder / "test.yaml").write_text(yaml.safe_dump(test, sort_keys=False, width=1 << 30))
        proc = subprocess.run(
            [str(PROMTOOL), "test", "rules", "test.yaml"], cwd=folder, capture_output=True, text=True, timeout=600
        )
    start = scraper.scrapes[0][0]
    held = []
    for alert, at in re.findall(r"alertname: (\w+), time: ([0-9hms.]+)", proc.stdout + proc.stderr):
        held.append((start + _duration_seconds(at), alert))
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and not held):
        raise RuntimeError(f"promtool test rules failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return held


def alerts_in(held: Iterable[tuple[float, str]], start: float, end: float, before: float) -> dict[str, list[str]]:
    """Alerts whose condition held within [start, end), split into those that did not hold in
    the `before` seconds ahead of the scenario (the fault's) and those that already did."""
    held = list(held)
    earlier = {alert for at, alert in held if start - before <= at < start}
    during = {alert for at, alert in held if start <= at < end}
    return {"new": sorted(during - earlier), "already": sorted(during & earlier)}

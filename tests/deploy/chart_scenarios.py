"""What the delivery tests share: the chart's value scenarios (the default values and each
`ci/*-values.yaml`) and each component's environment prefix."""

from __future__ import annotations

from pathlib import Path

import pytest

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "recfleet"
SCENARIOS = ["default", *sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml"))]
per_scenario = pytest.mark.parametrize("scenario", SCENARIOS)
# Component -> the prefix of the settings its entrypoint reads.
PREFIXES = {
    "gateway": "RECFLEET_GATEWAY_",
    "candidate-gen": "RECFLEET_CANDIDATES_",
    "ranking": "RECFLEET_RANKING_",
    "feature-store": "RECFLEET_FEATURES_",
    "event-ingest": "RECFLEET_INGEST_",
    "ingest-sink": "RECFLEET_INGEST_",
    "ingest-realtime": "RECFLEET_INGEST_",
}

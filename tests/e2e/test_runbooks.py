"""Runbooks are executable: every command block a runbook marks safe (```sh safe) runs
against the local fleet and must succeed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# The session fleet starts inside the first test's time budget (training included).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = sorted((ROOT / "docs" / "runbooks").glob("*.md"))
SAFE_BLOCK = re.compile(r"```sh safe\n(.*?)```", re.DOTALL)


def safe_blocks(path: Path) -> list[str]:
    return SAFE_BLOCK.findall(path.read_text())


def test_there_are_runbooks_with_safe_commands():
    assert RUNBOOKS, "docs/runbooks is empty"
    assert sum(len(safe_blocks(p)) for p in RUNBOOKS) >= len(RUNBOOKS) // 2


@pytest.mark.parametrize("runbook", RUNBOOKS, ids=[p.stem for p in RUNBOOKS])
def test_safe_commands_run(runbook, fleet):
    blocks = safe_blocks(runbook)
    if not blocks:
        pytest.skip("no command marked safe")
    env = dict(os.environ)
    env.update(
        RECFLEET_URL=fleet.gateway_url,
        RECFLEET_API_KEY=fleet.config.admin_key,
        RECFLEET_POSTGRES_DSN=fleet.config.postgres_dsn,
        RECFLEET_REDIS_URL=fleet.config.redis_url,
        KAFKA_BOOTSTRAP_SERVERS=fleet.kafka_bootstrap or "",
        RECFLEET_ARTIFACT_URL=fleet.artifact_url,
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        RECFLEET_GRPC_TARGETS=" ".join(
            f"127.0.0.1:{port}"
            for name, port in fleet.ports.items()
            if not name.endswith("-metrics") and "canary" not in name
        ),
        RECFLEET_INGEST_TARGET=f"127.0.0.1:{fleet.ports['event-ingest']}",
        **{
            f"RECFLEET_{key}_METRICS_URL": f"http://127.0.0.1:{fleet.ports[name]}"
            for key, name in (
                ("GATEWAY", "gateway-metrics"),
                ("FEATURES", "feature-store-metrics"),
                ("RANKING", "ranking-metrics"),
                ("INGEST", "event-ingest-metrics"),
                ("SINK", "event-sink-metrics"),
                ("REALTIME", "event-realtime-metrics"),
                ("SHARD0", "candidate-gen-0-metrics"),
            )
        },
    )
    for block in blocks:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"{runbook.name}: command failed\n{block}\n{result.stdout}\n{result.stderr}"

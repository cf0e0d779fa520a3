"""The chaos suite, reduced: three scenarios, short faults, low rates (docs/reliability.md).

It runs `bench/chaos.py` as a user would, with a fleet that owns its own Postgres
cluster, redis-server and broker, and reads the JSON it writes. What it checks is what a
user would notice: every recommendation request answered, the fault visible in how it
was answered, and every accepted event stored in Postgres exactly once.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(shutil.which(tool) for tool in ("initdb", "pg_ctl", "redis-server")),
        reason="needs PostgreSQL's initdb/pg_ctl and redis-server on PATH",
    ),
]


def test_quick_chaos_loses_no_answer_and_no_event(tmp_path):
    out = tmp_path / "chaos.json"
    command = [
        sys.executable,
        str(ROOT / "bench" / "chaos.py"),
        "--scenarios",
        "quick",
        "--fault-seconds",
        "4",
        "--recover-seconds",
        "6",
        "--warmup-seconds",
        "3",
        "--rate",
        "15",
        "--event-rate",
        "150",
        "--event-batch",
        "25",
        "--json",
        str(out),
    ]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = {r["scenario"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"stop:ranking", "kill:event-sink", "kill:candidate-gen-0"}
    for name, result in results.items():
        assert result["requests"] > 0, name
        assert result["ok_share"] == 1.0, (name, result["served_by"], result)
        assert result["events_accepted"] > 0, (name, result)
        assert result["events_lost"] == 0 and result["events_duplicated"] == 0, (name, result)
        assert result["events_stored_once"] == result["events_accepted"], (name, result)
    # Each fault shows in the answers: a lower rung, or the shard named as degraded.
    assert set(results["stop:ranking"]["served_by"]) - {"ranker"}, results["stop:ranking"]
    assert any("shard-0" in reason for reason in results["kill:candidate-gen-0"]["degraded"]), results[
        "kill:candidate-gen-0"
    ]

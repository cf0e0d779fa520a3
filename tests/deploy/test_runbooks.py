"""Runbooks: one per alert, each with the five sections, and `sh safe` blocks that only read."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

RUNBOOKS = Path(__file__).resolve().parents[2] / "docs" / "runbooks"
SECTIONS = ["## Symptoms", "## Checks", "## Actions", "## Verification", "## Escalation"]
# Commands that change something never go in a block marked safe.
MUTATING = re.compile(
    r"\b(kubectl|helm)\b|recfleetctl\s+(traffic\s+(set|rollback|ack|step|rollout|abort)|models\s+(promote|rollback)|jobs\s+run|keys\s+(create|revoke))"
    r"|\b(DELETE|UPDATE|INSERT|DROP|TRUNCATE)\b|redis-cli.*\b(FLUSH\w*|DEL|SET)\b",
    re.IGNORECASE,
)


def safe_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh safe\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def runbooks() -> list[Path]:
    return sorted(RUNBOOKS.glob("*.md"))


SCENARIOS = [
    "canary-rollout",
    "redis-down",
    "postgres-primary-down",
    "kafka-broker-down",
    "feature-staleness",
    "rate-limit-storm",
    "user-erasure-request",
]


def test_there_are_runbooks_for_the_alerts_and_the_on_call_scenarios():
    names = {p.stem for p in runbooks()}
    assert set(SCENARIOS) <= names
    assert len([n for n in names if n.startswith("recfleet-")]) >= 15


@pytest.mark.parametrize("path", runbooks(), ids=lambda p: p.name)
def test_runbook_has_every_section_in_order_and_a_safe_check(path):
    text = path.read_text()
    positions = [text.find(section) for section in SECTIONS]
    assert -1 not in positions, f"missing sections: {[s for s, p in zip(SECTIONS, positions, strict=False) if p == -1]}"
    assert positions == sorted(positions)
    assert safe_blocks(text), "no ```sh safe block to check the fleet with"
    assert re.search(r"`Recfleet[A-Za-z]+`", text), "name the alert(s) it answers or relates to"


@pytest.mark.parametrize("path", runbooks(), ids=lambda p: p.name)
def test_safe_blocks_only_read(path):
    for block in safe_blocks(path.read_text()):
        for line in block.splitlines():
            assert not MUTATING.search(line), f"{path.name}: '{line}' changes state but is marked safe"


@pytest.mark.parametrize("path", runbooks(), ids=lambda p: p.name)
def test_every_command_block_is_valid_shell(path):
    for block in re.findall(r"^```sh(?: safe)?\n(.*?)^```", path.read_text(), re.MULTILINE | re.DOTALL):
        result = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{path.name}:\n{block}\n{result.stderr}"


def test_safe_blocks_use_only_tools_a_local_fleet_has():
    tools = {"curl", "psql", "redis-cli", "awk", ".venv/bin/recfleetctl", ".venv/bin/python"}
    for path in runbooks():
        for block in safe_blocks(path.read_text()):
            for line in block.splitlines():
                unquoted = re.sub(r"'[^']*'|\"[^\"]*\"", "ARG", line)
                for command in re.split(r"&&|\|\||\||;", unquoted):
                    assert command.split()[0] in tools, f"{path.name}: {command.strip()}"

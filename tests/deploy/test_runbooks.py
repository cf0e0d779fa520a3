"""Runbooks: one per alert, each with the five sections, and `sh safe` blocks that only read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

RUNBOOKS = Path(__file__).resolve().parents[2] / "docs" / "runbooks"
SECTIONS = ["## Symptoms", "## Checks", "## Actions", "## Verification", "## Escalation"]
# Commands that change something never go in a block marked safe.
MUTATING = re.compile(
    r"\b(kubectl|helm)\b|recfleetctl\s+(traffic\s+(set|rollback|ack|step)|models\s+(promote|rollback)|jobs\s+run|keys\s+(create|revoke))"
    r"|\b(DELETE|UPDATE|INSERT|DROP|TRUNCATE)\b|redis-cli.*\b(FLUSH\w*|DEL|SET)\b",
    re.IGNORECASE,
)


def safe_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh safe\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def runbooks() -> list[Path]:
    return sorted(RUNBOOKS.glob("*.md"))


def test_there_are_runbooks():
    assert len(runbooks()) >= 15


@pytest.mark.parametrize("path", runbooks(), ids=lambda p: p.name)
def test_runbook_has_every_section_in_order_and_a_safe_check(path):
    text = path.read_text()
    positions = [text.find(section) for section in SECTIONS]
    assert -1 not in positions, f"missing sections: {[s for s, p in zip(SECTIONS, positions) if p == -1]}"
    assert positions == sorted(positions)
    assert safe_blocks(text), "no ```sh safe block to check the fleet with"
    assert re.search(r"`Recfleet[A-Za-z]+`", text), "name the alert(s) it answers"


@pytest.mark.parametrize("path", runbooks(), ids=lambda p: p.name)
def test_safe_blocks_only_read(path):
    for block in safe_blocks(path.read_text()):
        for line in block.splitlines():
            assert not MUTATING.search(line), f"{path.name}: '{line}' changes state but is marked safe"

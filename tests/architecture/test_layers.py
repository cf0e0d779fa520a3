"""The layering of docs/architecture.md holds, and the contract tool would notice if it
stopped holding: a deployable importing another, or a library importing a deployable."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
CONTRACT = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
SOURCE_DIRS = ["libs", *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "services").iterdir()) if p.is_dir())]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*(str(root / d) for d in SOURCE_DIRS), str(ROOT / "gen" / "python")])
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_the_code_keeps_its_layers():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-4000:]


@pytest.fixture
def copy_of_the_code(tmp_path: Path) -> Path:
    """The packages' Python files and the contract, in a tree a test may break."""
    for directory in SOURCE_DIRS:
        for package in (ROOT / directory).iterdir():
            if package.name in CONTRACT["root_packages"]:
                shutil.copytree(
                    package,
                    tmp_path / directory / package.name,
                    ignore=shutil.ignore_patterns("__pycache__", "*.yaml", "*.json"),
                )
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    return tmp_path


@pytest.mark.parametrize(
    ("module", "imported", "broken"),
    [
        ("services/candidate-gen/recfleet_candidates/__init__.py", "recfleet_ranking", "recfleet_candidates"),
        ("libs/recfleet_store/__init__.py", "recfleet_gateway", "recfleet_store"),
        ("libs/recfleet_runtime/__init__.py", "recfleet_models", "recfleet_runtime"),
    ],
    ids=["a service imports another", "a library imports a service", "the runtime imports a model"],
)
def test_the_contract_tool_refuses_a_broken_layer(copy_of_the_code, module, imported, broken):
    target = copy_of_the_code / module
    target.write_text(target.read_text() + f"\nimport {imported}  # a layer broken on purpose\n")
    result = lint_imports(copy_of_the_code)
    assert result.returncode != 0
    assert f"{broken} is not allowed to import {imported}" in result.stdout

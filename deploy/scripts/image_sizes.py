"""Estimate each image's size without Docker, and check that its code imports with what it installs.

For every image `make images` builds, this installs what deploy/docker/Dockerfile installs into
a throwaway virtual environment: the locked core dependencies plus the image's extra, the
project itself (not editable), bytecode compiled, and the protobuf code generated into
site-packages. It prints the size of that environment (what the image's /opt/venv layer
holds) and an estimate of the whole image: the environment, plus the python slim base image
(BASE_MB, an estimate of `python:3.11-slim-bookworm`, not measured here), libgomp1 where the
image installs it, and the jobs image's sample data. `docker image ls` after `make images`
gives the real figures.

With --check-imports it then imports every module of the image's service package in its
environment, as the Dockerfile's build does (this machine's system libraries, such as libgomp,
are all present, so a missing LIBGOMP=1 is not caught here).

Usage (from the repository root, after `make install`):
  .venv/bin/python deploy/scripts/image_sizes.py [--check-imports] [--keep DIR] [IMAGE ...]
"""

from __future__ import annotations

import argparse
import glob
import itertools
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASE_MB = 125  # python:3.11-slim-bookworm, uncompressed: an estimate, not a measurement
LIBGOMP_MB = 0.3  # Debian bookworm's libgomp1 (Installed-Size: 312 kB)
UV = os.environ.get("UV") or shutil.which("uv") or str(ROOT / ".venv-tools" / "bin" / "uv")
HEAVY = ("faiss-cpu", "lightgbm", "implicit", "fastapi", "scipy", "pyarrow", "numpy", "grpcio")
IMPORT_EVERY_MODULE = (
    "import importlib, pkgutil, sys; p = importlib.import_module(sys.argv[1]); "
    "[importlib.import_module(m.name) for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.')]"
)


def images() -> dict[str, dict[str, str]]:
    """`make images`: image -> its build args and target."""
    out = subprocess.run(["make", "-s", "-n", "images"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        if line.startswith("docker build "):
            words = shlex.split(line)
            args = dict(v.partition("=")[::2] for flag, v in itertools.pairwise(words) if flag == "--build-arg")
            args["target"] = words[words.index("--target") + 1]
            found[args["EXTRA"]] = args
    return found


def size_mb(path: Path) -> float:
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(directory, name)).st_size
    return total / 1e6


def install(extra: str | None, venv: Path) -> None:
    """The Dockerfile's build stage, into venv. extra None: every extra."""
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv), "UV_LINK_MODE": "copy", "UV_COMPILE_BYTECODE": "1"}
    selection = ["--all-extras"] if extra is None else ["--extra", extra]
    subprocess.run(
        [UV, "sync", "--frozen", "--no-dev", *selection, "--no-editable", "--python", "3.11", "--quiet"],
        cwd=ROOT,
        env=env,
        check=True,
    )
    site = next(venv.glob("lib/python3.*/site-packages"))
    protos = sorted(glob.glob("protos/recfleet/*/v1/*.proto", root_dir=ROOT))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Iprotos",
            f"--python_out={site}",
            f"--grpc_python_out={site}",
            *protos,
        ],
        cwd=ROOT,
        check=True,
    )


def distributions(venv: Path) -> list[str]:
    site = next(venv.glob("lib/python3.*/site-packages"))
    names = (p.name.split("-")[0].lower().replace("_", "-") for p in site.glob("*.dist-info"))
    return sorted(n for n in names if n != "recfleet")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", help="images to measure (default: all six)")
    parser.add_argument(
        "--check-imports", action="store_true", help="import every module of each service in its environment"
    )
    parser.add_argument(
        "--all-extras",
        action="store_true",
        help="also measure one environment with every extra (what every image held before)",
    )
    parser.add_argument("--keep", type=Path, help="build the environments under this directory and keep them")
    options = parser.parse_args()
    built = images()
    wanted = options.images or list(built)
    data_mb = size_mb(ROOT / "data" / "ml-latest-small")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    workdir = options.keep or Path(tempfile.mkdtemp(prefix="recfleet-image-sizes-"))
    rows, failed = [], 0
    try:
        for image in [*wanted, *([None] if options.all_extras else [])]:
            args = built[image] if image else {"EXTRA": None, "SERVICE": "", "LIBGOMP": "1", "target": "jobs"}
            venv = workdir / (image or "all-extras")
            shutil.rmtree(venv, ignore_errors=True)
            install(args["EXTRA"], venv)
            imports = ""
            if options.check_imports and image:
                python = venv / "bin" / "python"
                env = {"PATH": os.environ["PATH"], "HOME": str(workdir)}
                check = subprocess.run(
                    [str(python), "-c", IMPORT_EVERY_MODULE, args["SERVICE"]],
                    cwd=workdir,
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                imports = (
                    "ok" if check.returncode == 0 else "FAILED: " + (check.stderr.strip().splitlines() or ["?"])[-1]
                )
                failed += check.returncode != 0
            venv_mb = size_mb(venv)
            extra_mb = (LIBGOMP_MB if args["LIBGOMP"] == "1" else 0) + (data_mb if args["target"] == "jobs" else 0)
            dists = distributions(venv)
            rows.append(
                (
                    image or "(every extra)",
                    args["EXTRA"] or "all",
                    venv_mb,
                    extra_mb,
                    BASE_MB + venv_mb + extra_mb,
                    dists,
                    imports,
                )
            )
    finally:
        if options.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"recfleet {version}; base image ~{BASE_MB} MB (estimate); sizes uncompressed, MB = 10^6 bytes")
    print(
        "| image | extra | /opt/venv MB | + libgomp1 / data MB | image MB (est.) | distributions | of the large ones |"
    )
    print("|---|---|---:|---:|---:|---:|---|")
    for image, extra, venv_mb, extra_mb, total, dists, _ in rows:
        large = ", ".join(d for d in HEAVY if d in dists)
        print(f"| {image} | `{extra}` | {venv_mb:.0f} | {extra_mb:.1f} | ~{total:.0f} | {len(dists)} | {large} |")
    if options.check_imports:
        print()
        for image, *_, imports in rows:
            if imports:
                print(f"{image}: every module imports: {imports}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

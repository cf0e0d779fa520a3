"""Sampling profiles (py-spy) of every process on the recommendation path, under load.

For each service in turn it drives cache-miss recommendations at a fixed rate through the
gateway (the open-loop load of `e2e_latency.py`, from this process) and records that
service's process with py-spy for `--duration` seconds in the middle of the run: flame
graphs (`--format flamegraph`, SVG) or collapsed stacks (`--format raw`, gzipped,
summed by `profile_summary.py`). One service at a time, so that one sampler perturbs the fleet.

py-spy is not a project dependency: run it as a uv tool (the default) or point
`--py-spy` at a binary.

    make run                                                 # in one terminal
    .venv/bin/python bench/profile_fleet.py --format flamegraph --tag before
    .venv/bin/python bench/profile_fleet.py --format raw --tag before
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import re
import shlex
from pathlib import Path

from e2e_latency import RESULTS, run_rate
from loadgen import LeanClient

SERVICES = ("gateway", "candidate-gen-0", "candidate-gen-1", "ranking", "feature-store")
FILE_NAMES = {"candidate-gen-0": "shard0", "candidate-gen-1": "shard1"}


def output_path(service: str, fmt: str, tag: str, native: bool) -> Path:
    name = FILE_NAMES.get(service, service.replace("-", "_"))
    suffix = "_native" if native else ""
    if fmt == "flamegraph":
        return RESULTS / f"flame_{name}_{tag}{suffix}.svg"
    return RESULTS / "profiles" / f"{name}_{tag}{suffix}.collapsed"


ROOT = Path(__file__).resolve().parents[1]
# Where this machine keeps things (the checkout, the virtualenv, the Python build) says
# nothing about the profile: paths are cut to what follows site-packages/, the
# standard library's python3.x/, or the repository root.
_LOCAL_PREFIXES = (
    (re.compile(r"/[^\s;()\"'<>]*?/site-packages/"), "site-packages/"),
    (re.compile(r"/[^\s;()\"'<>]*?/lib/(python3\.\d+)/"), r"\1/"),
    (re.compile(r"/tmp/python-build\.[^/\s]+/"), ""),
    (re.compile(r"/[^\s;()\"'<>]*?/lib/(libpython[^\s;()\"'<>/]*)"), r"\1"),
    (re.compile(re.escape(str(ROOT)) + "/"), ""),
)


def without_local_paths(text: str) -> str:
    for pattern, replacement in _LOCAL_PREFIXES:
        text = pattern.sub(replacement, text)
    return text


def scrub(path: Path) -> None:
    """Rewrite a profile (SVG, or gzipped collapsed stacks) without local paths."""
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(without_local_paths(gzip.decompress(path.read_bytes()).decode()).encode()))
    else:
        path.write_text(without_local_paths(path.read_text()))


async def profile_one(args: argparse.Namespace, service: str, pid: int) -> dict:
    path = output_path(service, args.format, args.tag, args.native)
    path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        *shlex.split(args.py_spy),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(args.duration),
        "--rate",
        str(args.sample_rate),
        "--format",
        args.format,
        "-o",
        str(path.resolve().relative_to(ROOT)),
    ]
    if args.native:
        command.append("--native")
    if args.nonblocking:
        command.append("--nonblocking")
    if args.threads:
        command.append("--threads")
    if args.full_filenames:
        command.append("--full-filenames")
    client = LeanClient(args.url, {"Authorization": f"Bearer {args.key}"}, timeout=10)
    try:
        await run_rate(client, 20, 2, False)  # warm-up
        load = asyncio.create_task(run_rate(client, args.rate, args.seconds, False))
        await asyncio.sleep(max(0.0, (args.seconds - args.duration) / 2))
        sampler = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=ROOT
        )
        said, _ = await sampler.communicate()
        row = await load
    finally:
        await client.close()
    if args.format == "raw" and path.exists():
        # Native stacks with whole paths run to megabytes; gzip keeps them committable.
        packed = path.with_name(path.name + ".gz")
        packed.write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
        path = packed
    if path.exists():
        scrub(path)
    said_lines = [line for line in said.decode().splitlines() if "Samples" in line]
    print(f"{service} (pid {pid}) -> {path}: {said_lines[-1] if said_lines else said.decode().strip()}")
    print(
        f"  load: {row['achieved_rps']}/s achieved, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
        f"errors {row['errors']}",
        flush=True,
    )
    return {
        "service": service,
        "pid": pid,
        "output": str(path.resolve().relative_to(ROOT)),
        "command": without_local_paths(shlex.join(command)),
        **row,
    }


async def profile_all(args: argparse.Namespace, pids: dict[str, int]) -> list[dict]:
    rows = []
    for service in args.services.split(","):
        rows.append(await profile_one(args, service, pids[service]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--key", default="dev-admin-key")
    parser.add_argument("--record", type=Path, default=Path(".state/fleet.json"), help="the fleet record of make run")
    parser.add_argument("--services", default=",".join(SERVICES))
    parser.add_argument("--rate", type=float, default=60, help="offered cache-miss requests/s")
    parser.add_argument("--seconds", type=float, default=25, help="load per service")
    parser.add_argument("--duration", type=int, default=20, help="py-spy seconds per service")
    parser.add_argument("--sample-rate", type=int, default=200, help="py-spy samples/s")
    parser.add_argument("--format", choices=("flamegraph", "raw", "speedscope"), default="flamegraph")
    parser.add_argument("--native", action="store_true", help="also C/C++ frames (pauses the process longer)")
    parser.add_argument("--nonblocking", action="store_true")
    parser.add_argument("--threads", action="store_true", help="a root frame per thread")
    parser.add_argument("--full-filenames", action="store_true", help="whole paths (profile_summary.py wants them)")
    parser.add_argument("--tag", default="before")
    parser.add_argument("--py-spy", default=".venv-tools/bin/uv tool run py-spy")
    args = parser.parse_args()
    record = json.loads(args.record.read_text())
    pids = {name: entry["pid"] for name, entry in record["processes"].items()}
    rows = asyncio.run(profile_all(args, pids))
    log = RESULTS / "profiles" / f"runs_{args.format}_{args.tag}{'_native' if args.native else ''}.json"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

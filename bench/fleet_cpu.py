"""CPU per request of every process of a running fleet, from /proc, at a fixed request rate.

Reads the processes of the `make run` fleet from its record (`.state/fleet.json`) plus
their child processes and the Redis server, samples utime+stime of each from
/proc/<pid>/stat before and after an open-loop run of cache-miss recommendations (the
load of `e2e_latency.py`), and prints CPU milliseconds per served request per process and
summed over the request path. The load generator's own CPU is printed apart: it shares
the machine's cores. With `--plumbing` it starts the bare plumbing fleet instead.

    make run                                                # in one terminal
    .venv/bin/python bench/fleet_cpu.py --rate 60 --seconds 20
    .venv/bin/python bench/fleet_cpu.py --plumbing --rate 60 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from contextlib import suppress
from pathlib import Path

from e2e_latency import RESULTS, run_rate, start_plumbing
from loadgen import LeanClient

TICK = os.sysconf("SC_CLK_TCK")
# Processes that a recommendation does not reach: shown, but not summed.
OFF_PATH = ("broker", "event-ingest", "event-sink", "event-realtime")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def process_tree(pid: int) -> list[int]:
    tree = [pid]
    for child in children(pid):
        tree.extend(process_tree(child))
    return tree


def redis_pid() -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "redis-server":
                    return int(entry.name)
            except OSError:
                continue
    return None


def fleet_processes(record: Path) -> dict[str, list[int]]:
    data = json.loads(record.read_text())
    found = {name: process_tree(entry["pid"]) for name, entry in data["processes"].items()}
    redis = redis_pid()
    if redis is not None:
        found["redis"] = [redis]
    return found


def sample(processes: dict[str, list[int]]) -> dict[str, float]:
    totals = {}
    for name, pids in processes.items():
        total = 0.0
        for pid in pids:
            with suppress(OSError):  # a process that exited between the samples
                total += cpu_seconds(pid)
        totals[name] = total
    return totals


async def measure(url: str, key: str, rate: float, seconds: float, processes: dict[str, list[int]]) -> dict:
    client = LeanClient(url, {"Authorization": f"Bearer {key}"}, timeout=10)
    try:
        await run_rate(client, 20, 2, False)  # warm-up
        own_before = cpu_seconds(os.getpid())
        before = sample(processes)
        row = await run_rate(client, rate, seconds, False)
        after = sample(processes)
        own_after = cpu_seconds(os.getpid())
    finally:
        await client.close()
    served = max(1, row["ok"])
    per_request = {name: (after[name] - before[name]) * 1000 / served for name in processes}
    on_path = {name: value for name, value in per_request.items() if not name.startswith(OFF_PATH)}
    return {
        "rate": rate,
        "seconds": seconds,
        "ok": row["ok"],
        "errors": row["errors"],
        "p50_ms": row["p50_ms"],
        "cpu_ms_per_request": {name: round(value, 2) for name, value in per_request.items()},
        "cpu_ms_per_request_on_path": round(sum(on_path.values()), 2),
        "load_generator_cpu_ms_per_request": round((own_after - own_before) * 1000 / served, 2),
        "tick_ms": round(1000 / TICK, 1),
    }


def add_fleet_arguments(parser: argparse.ArgumentParser) -> None:
    """--url, --key and --record of the `make run` fleet a bench measures."""
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--key", default="dev-admin-key")
    parser.add_argument("--record", type=Path, default=Path(".state/fleet.json"), help="the fleet record of make run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fleet_arguments(parser)
    parser.add_argument("--rate", type=float, default=60)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--plumbing", action="store_true", help="start and measure the bare plumbing fleet")
    args = parser.parse_args()
    started: list = []
    url, key = args.url, args.key
    if args.plumbing:
        url, key, started = start_plumbing()
        names = ["feature-store", "ranking", "candidate-gen-0", "candidate-gen-1", "gateway"]
        processes = {name: [process.pid] for name, process in zip(names, started, strict=True)}
    else:
        processes = fleet_processes(args.record)
    try:
        result = asyncio.run(measure(url, key, args.rate, args.seconds, processes))
    finally:
        for process in started:
            process.terminate()
            process.wait()
    result["fleet"] = "plumbing" if args.plumbing else "make run"
    print(
        f"{result['fleet']}: {result['ok']} requests at {args.rate:.0f}/s, errors {result['errors']}, "
        f"p50 {result['p50_ms']} ms; CPU ms per request (clock tick {result['tick_ms']} ms):"
    )
    for name, value in sorted(result["cpu_ms_per_request"].items(), key=lambda kv: -kv[1]):
        note = "  (not on the request path)" if name.startswith(OFF_PATH) else ""
        print(f"  {name:<18} {value:6.2f}{note}")
    print(f"  {'sum on the path':<18} {result['cpu_ms_per_request_on_path']:6.2f}")
    print(f"  {'load generator':<18} {result['load_generator_cpu_ms_per_request']:6.2f}  (same cores, not summed)")
    RESULTS.mkdir(exist_ok=True)
    name = "fleet_cpu_plumbing.json" if args.plumbing else "fleet_cpu.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

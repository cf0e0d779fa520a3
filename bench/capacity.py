"""Issue 12's four figures side by side, from one command, with CPU per request from /proc.

Against the `make run` fleet (and the bare plumbing fleet it starts itself), on this
machine's shared cores, one run is:

1. ceiling: the plumbing fleet (`plumbing.py`: FastAPI + four no-work gRPC servers, no
   auth, limits or cache), closed loop over `--connections` keep-alive connections;
2. the real fleet, cache misses (random users, limits 5-60, a unique surface per request
   so the result cache never answers), closed loop over the same connections; CPU of every
   fleet process from /proc/<pid>/stat before and after, per served request;
3. the real fleet, cache misses, open loop at `--open-rate` requests/s over
   `--open-connections` keep-alive connections, each latency counted from the request's
   due time (so a queue shows up as latency, never as a slower sender);
4. the real fleet, cache hits (every user's list cached first, users drawn at random),
   closed loop.

`--runs 3` repeats the whole and reports medians. The load generator runs on the same
cores as the fleet: its own CPU per request is printed too.

    make run                                             # in one terminal
    .venv/bin/python bench/capacity.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import httptools
from e2e_latency import RESULTS, USERS, percentile, start_plumbing, warm_every_user
from fleet_cpu import OFF_PATH, add_fleet_arguments, cpu_seconds, fleet_processes, sample
from loadgen import ConnectionLost, LeanClient

ERRORS = (OSError, TimeoutError, ConnectionLost, httptools.HttpParserError)
Params = Callable[[int], dict]


def miss_params(seed: int) -> Params:
    rng = random.Random(seed)
    nonce = random.getrandbits(32)
    return lambda index: {
        "user_id": str(rng.randint(1, USERS)),
        "limit": rng.randint(5, 60),
        "surface": f"capacity-{nonce:x}-{index}",
    }


def hit_params(seed: int) -> Params:
    """Cached lists: every user's first page was requested before (`warm_every_user`).
    Users are drawn at random because one user alone would meet the per-user rate limit
    (`RECFLEET_GATEWAY_RATE_LIMIT_PER_USER`, 100/minute by default) within a second."""
    rng = random.Random(seed)
    return lambda index: {"user_id": str(rng.randint(1, USERS)), "limit": 20}


class Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.served_by: dict[str, int] = {}

    def error(self, name: str) -> None:
        self.errors[name] = self.errors.get(name, 0) + 1

    def summary(self, wall: float) -> dict:
        ms = [value * 1000 for value in self.latencies]
        return {
            "ok": len(ms),
            "rps": round(len(ms) / wall, 1),
            "p50_ms": round(percentile(ms, 50), 2),
            "p99_ms": round(percentile(ms, 99), 2),
            "errors": self.errors,
        }


async def closed_loop(client: LeanClient, params: Params, connections: int, seconds: float) -> dict:
    """`connections` workers, each sending its next request when the last one answered."""
    tally = Tally()
    counter = iter(range(10**9))
    began = time.perf_counter()
    end = began + seconds

    async def worker() -> None:
        while time.perf_counter() < end:
            started = time.perf_counter()
            try:
                status, _ = await client.get("/v1/recommendations", params(next(counter)))
            except ERRORS as error:
                tally.error(type(error).__name__)
                continue
            if status == 200:
                tally.latencies.append(time.perf_counter() - started)
            else:
                tally.error(str(status))

    await asyncio.gather(*(worker() for _ in range(connections)))
    return tally.summary(time.perf_counter() - began)


async def open_loop(client: LeanClient, params: Params, rate: float, seconds: float, connections: int) -> dict:
    """Requests due every 1/rate s, sent by `connections` workers over their keep-alive
    connections; latency counts from the due time."""
    tally = Tally()
    total = int(rate * seconds)
    counter = iter(range(total))
    began = time.perf_counter() + 0.05

    async def worker() -> None:
        for index in counter:
            due = began + index / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                status, _ = await client.get("/v1/recommendations", params(index))
            except ERRORS as error:
                tally.error(type(error).__name__)
                continue
            if status == 200:
                tally.latencies.append(time.perf_counter() - due)
            else:
                tally.error(str(status))

    await asyncio.gather(*(worker() for _ in range(connections)))
    row = tally.summary(time.perf_counter() - began)
    row["offered_rps"] = rate
    return row


async def ceiling(connections: int, seconds: float) -> dict:
    url, _, processes = start_plumbing()
    client = LeanClient(url, timeout=10)
    try:
        await closed_loop(client, miss_params(1), connections, 2)  # warm-up
        return await closed_loop(client, miss_params(2), connections, seconds)
    finally:
        await client.close()
        for process in processes:
            process.terminate()
            process.wait()


async def fleet_run(args: argparse.Namespace, run: int) -> dict:
    processes = fleet_processes(args.record)
    client = LeanClient(args.url, {"Authorization": f"Bearer {args.key}"}, timeout=10)
    try:
        await closed_loop(client, miss_params(100 + run), args.connections, 2)  # warm-up
        own_before, before = cpu_seconds(os.getpid()), sample(processes)
        misses = await closed_loop(client, miss_params(200 + run), args.connections, args.seconds)
        after, own_after = sample(processes), cpu_seconds(os.getpid())
        served = max(1, misses["ok"])
        per_process = {name: round((after[name] - before[name]) * 1000 / served, 2) for name in processes}
        misses["cpu_ms_per_request"] = per_process
        misses["cpu_ms_per_request_on_path"] = round(
            sum(value for name, value in per_process.items() if not name.startswith(OFF_PATH)), 2
        )
        misses["load_generator_cpu_ms_per_request"] = round((own_after - own_before) * 1000 / served, 2)
        await asyncio.sleep(2)  # let queues drain between phases
        opened = await open_loop(
            client, miss_params(300 + run), args.open_rate, args.open_seconds, args.open_connections
        )
        await asyncio.sleep(2)
        await warm_every_user(client)
        before = sample(processes)
        hits = await closed_loop(client, hit_params(400 + run), args.connections, args.seconds)
        after = sample(processes)
        served = max(1, hits["ok"])
        hits["cpu_ms_per_request"] = {
            name: round((after[name] - before[name]) * 1000 / served, 3) for name in ("gateway", "redis")
        }
    finally:
        await client.close()
    return {"misses_closed": misses, "misses_open": opened, "hits_closed": hits}


def median_of(rows: list[dict], *path: str) -> float:
    values = []
    for row in rows:
        value: object = row
        for key in path:
            value = value[key]  # type: ignore[index]
        values.append(float(value))  # type: ignore[arg-type]
    return round(statistics.median(values), 2)


def draw(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = ["plumbing ceiling", "fleet, misses", "fleet, cache hits"]
    values = [result["ceiling_rps"], result["misses_rps"], result["hits_rps"]]
    bars = throughput.bar(names, values, color=["#999999", "#1f77b4", "#2ca02c"])
    throughput.bar_label(bars, fmt="%.0f")
    throughput.set_ylabel("requests/s, closed loop")
    throughput.set_title(f"throughput ({result['connections']} connections)")
    cpu = result["cpu_ms_per_request"]
    latency.barh(list(cpu), list(cpu.values()), color="#1f77b4")
    latency.set_xlabel("CPU ms per cache-miss request (closed loop, from /proc)")
    latency.set_title(
        f"open loop {result['open_rate']:.0f}/s: p50 {result['open_p50_ms']} ms, p99 {result['open_p99_ms']} ms"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fleet_arguments(parser)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15, help="length of each closed-loop phase")
    parser.add_argument("--open-rate", type=float, default=300)
    parser.add_argument("--open-seconds", type=float, default=30)
    parser.add_argument("--open-connections", type=int, default=48)
    args = parser.parse_args()
    runs = []
    for run in range(args.runs):
        top = asyncio.run(ceiling(args.connections, args.seconds))
        row = asyncio.run(fleet_run(args, run))
        row["ceiling"] = top
        runs.append(row)
        m, o, h = row["misses_closed"], row["misses_open"], row["hits_closed"]
        print(
            f"run {run + 1}: ceiling {top['rps']}/s | misses {m['rps']}/s ({m['rps'] / top['rps']:.2f}x), "
            f"p50 {m['p50_ms']} ms, CPU {m['cpu_ms_per_request_on_path']} ms/request, errors {m['errors']} | "
            f"open {o['offered_rps']:.0f}/s: {o['rps']}/s p50 {o['p50_ms']} ms p99 {o['p99_ms']} ms "
            f"errors {o['errors']} | hits {h['rps']}/s p50 {h['p50_ms']} ms errors {h['errors']}",
            flush=True,
        )
    cpu_names = runs[0]["misses_closed"]["cpu_ms_per_request"]
    result = {
        "runs": runs,
        "connections": args.connections,
        "open_rate": args.open_rate,
        "ceiling_rps": median_of(runs, "ceiling", "rps"),
        "misses_rps": median_of(runs, "misses_closed", "rps"),
        "hits_rps": median_of(runs, "hits_closed", "rps"),
        "open_p50_ms": median_of(runs, "misses_open", "p50_ms"),
        "open_p99_ms": median_of(runs, "misses_open", "p99_ms"),
        "cpu_ms_per_request_on_path": median_of(runs, "misses_closed", "cpu_ms_per_request_on_path"),
        "cpu_ms_per_request": {
            name: median_of(runs, "misses_closed", "cpu_ms_per_request", name) for name in cpu_names
        },
        "load_generator_cpu_ms_per_request": median_of(runs, "misses_closed", "load_generator_cpu_ms_per_request"),
        "hit_cpu_ms_per_request": {
            name: median_of(runs, "hits_closed", "cpu_ms_per_request", name) for name in ("gateway", "redis")
        },
    }
    ratio = result["misses_rps"] / result["ceiling_rps"]
    print(f"\nmedians of {args.runs} run(s), load generator on the same cores:")
    print(f"  {'measure':<52} {'figure':>12}  goal")
    print(f"  {'plumbing ceiling, closed loop, req/s':<52} {result['ceiling_rps']:>12}")
    print(f"  {'fleet, cache misses, closed loop, req/s':<52} {result['misses_rps']:>12}  >= 0.8 x ceiling")
    print(f"  {'  ... as a share of the ceiling':<52} {ratio:>12.2f}")
    open_p99 = f"{result['open_p99_ms']} ms"
    print(f"  {f'fleet, cache misses, open loop {args.open_rate:.0f}/s, p99':<52} {open_p99:>12}  <= 25 ms, 0 errors")
    print(f"  {'fleet, cache hits, closed loop, req/s':<52} {result['hits_rps']:>12}  >= 2,000")
    cpu_sum = result["cpu_ms_per_request_on_path"]
    print(f"  {'CPU ms per cache-miss request, fleet sum (closed loop)':<52} {cpu_sum:>12}  <= 6")
    for name, value in sorted(result["cpu_ms_per_request"].items(), key=lambda kv: -kv[1]):
        note = "  (not on the request path)" if name.startswith(OFF_PATH) else ""
        print(f"    {name:<50} {value:>12}{note}")
    print(f"  {'load generator CPU ms per request (not summed)':<52} {result['load_generator_cpu_ms_per_request']:>12}")
    for name, value in result["hit_cpu_ms_per_request"].items():
        print(f"  {f'CPU ms per cache hit, {name}':<52} {value:>12}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "capacity.json").write_text(json.dumps(result, indent=2))
    draw(result, RESULTS / "capacity.png")
    print(f"wrote {RESULTS / 'capacity.png'}")


if __name__ == "__main__":
    main()

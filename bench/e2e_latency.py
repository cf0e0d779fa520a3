"""End-to-end recommendation latency through the gateway at fixed request rates.

Open-loop load (requests are sent on schedule whether or not earlier ones finished, so
queueing shows up in the figures), distinct MovieLens users, cache bypassed with a
unique `surface` per request unless --cache-hits. Prints p50/p95/p99 per rate and draws
them to bench/results/e2e_latency.png.

    make run                                   # in one terminal
    .venv/bin/python bench/e2e_latency.py --rates 50,100,200,300 --seconds 10
    .venv/bin/python bench/e2e_latency.py --start-fleet     # starts its own fleet
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path

import httptools
import httpx
import orjson
from loadgen import ConnectionLost, LeanClient

RESULTS = Path(__file__).parent / "results"
USERS = 610  # the MovieLens users of the bundled data


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def run_rate(client: LeanClient, rate: float, seconds: float, cache_hits: bool) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    served_by: dict[str, int] = {}
    total = int(rate * seconds)
    rng = random.Random(42)
    nonce = random.getrandbits(32)  # a fresh surface per run: earlier runs' cached lists never answer

    async def one(index: int) -> None:
        user = str(rng.randint(1, USERS))
        params = {"user_id": user, "limit": 20}
        if not cache_hits:
            params["surface"] = f"bench-{nonce:x}-{index}"
        started = time.perf_counter()
        try:
            status, body = await client.get("/v1/recommendations", params)
            elapsed = time.perf_counter() - started
            if status == 200:
                latencies.append(elapsed)
                rung = orjson.loads(body).get("served_by", "?")
                served_by[rung] = served_by.get(rung, 0) + 1
            else:
                errors[str(status)] = errors.get(str(status), 0) + 1
        except (OSError, TimeoutError, ConnectionLost, httptools.HttpParserError) as error:
            errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1

    began = time.perf_counter()
    tasks = []
    for index in range(total):
        delay = began + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index)))
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - began
    ms = [value * 1000 for value in latencies]
    return {
        "rate": rate,
        "sent": total,
        "ok": len(latencies),
        "achieved_rps": round(len(latencies) / wall, 1),
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "mean_ms": round(statistics.fmean(ms), 2) if ms else None,
        "errors": errors,
        "served_by": served_by,
    }


async def warm_every_user(client: LeanClient, concurrency: int = 8) -> None:
    """One request per bench user first, so that the measured requests all hit the cache."""
    users = iter(range(1, USERS + 1))

    async def worker() -> None:
        for user in users:
            await client.get("/v1/recommendations", {"user_id": str(user), "limit": 20})

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def bench(url: str, key: str, rates: list[float], seconds: float, cache_hits: bool) -> list[dict]:
    client = LeanClient(url, {"Authorization": f"Bearer {key}"}, timeout=10)
    try:
        await run_rate(client, 20, 2, cache_hits)  # warm-up: connections, caches, JIT-free paths
        if cache_hits:
            await warm_every_user(client)
        rows = []
        for rate in rates:
            row = await run_rate(client, rate, seconds, cache_hits)
            rows.append(row)
            print(
                f"rate {row['rate']:>6.0f}/s  ok {row['ok']:>6}  achieved {row['achieved_rps']:>7.1f}/s  "
                f"p50 {row['p50_ms']:>7.2f} ms  p95 {row['p95_ms']:>7.2f} ms  p99 {row['p99_ms']:>7.2f} ms  "
                f"errors {row['errors']}  served_by {row['served_by']}",
                flush=True,
            )
        return rows
    finally:
        await client.close()


def draw(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [row["rate"] for row in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        ax.plot(rates, [row[key] for row in rows], marker="o", label=key.replace("_ms", ""))
    ax.set_xlabel("offered requests/s")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def start_plumbing() -> tuple[str, str, list]:
    """The bare plumbing fleet (bench/plumbing.py) on free ports: (url, key, processes)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    import plumbing
    from recfleet_runtime.ports import free_port

    shard_count = 2
    ports = {name: free_port() for name in ("feature-store", "ranking")}
    ports.update({f"candidate-gen-{s}": free_port() for s in range(shard_count)})
    gateway_port = free_port()
    processes = plumbing.start_fleet(ports, shard_count, gateway_port)
    url = f"http://127.0.0.1:{gateway_port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz/ready", timeout=1).status_code == 200:
                return url, "unused", processes  # the bare gateway checks no key
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    for process in processes:
        process.terminate()
    raise TimeoutError("the plumbing fleet did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--key", default="dev-admin-key")
    parser.add_argument("--rates", default="50,100,200")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--cache-hits", action="store_true", help="repeat parameters so the result cache answers")
    parser.add_argument("--start-fleet", action="store_true", help="start a local fleet on free ports first")
    parser.add_argument(
        "--shadow",
        type=int,
        default=None,
        help="with --start-fleet: start a ranking canary and mirror this percent of calls to it",
    )
    parser.add_argument(
        "--plumbing",
        action="store_true",
        help="start the bare plumbing fleet instead (bench/plumbing.py: no auth, limits or cache; the ceiling)",
    )
    args = parser.parse_args()
    rates = [float(rate) for rate in args.rates.split(",")]
    fleet = None
    url, key = args.url, args.key
    if args.start_fleet:
        from recfleet_ctl.localfleet import FleetConfig, LocalFleet
        from recfleet_runtime.ports import free_port

        config = FleetConfig.from_env()
        config.gateway_port, config.free_ports = free_port(), True
        if args.shadow is not None:
            config.canaries = ("ranking",)
        fleet = LocalFleet(config)
        fleet.start()
        url, key = fleet.gateway_url, config.admin_key
        if args.shadow is not None:
            reply = httpx.put(
                f"{url}/admin/v1/traffic/ranking",
                json={"weight": 0, "shadow_percent": args.shadow},
                headers={"Authorization": f"Bearer {key}"},
            )
            reply.raise_for_status()
            time.sleep(2)
    plumbing: list = []
    if args.plumbing:
        url, key, plumbing = start_plumbing()
    try:
        rows = asyncio.run(bench(url, key, rates, args.seconds, args.cache_hits))
    finally:
        if fleet is not None:
            fleet.stop()
        for process in plumbing:
            process.terminate()
            process.wait()
    RESULTS.mkdir(exist_ok=True)
    name = "e2e_latency_cache_hits" if args.cache_hits else "e2e_latency"
    if args.plumbing:
        name = "plumbing_latency"
    if args.shadow is not None:
        name = f"e2e_latency_shadow_{args.shadow}"
    (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=2))
    draw(
        rows,
        RESULTS / f"{name}.png",
        "recommendations through the gateway" + (" (cache hits)" if args.cache_hits else ""),
    )
    print(f"wrote {RESULTS / (name + '.png')}")


if __name__ == "__main__":
    main()

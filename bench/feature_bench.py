"""Feature-store read latency over gRPC: one user plus 500 items, as a recommendation
request reads them, and 8 users read one by one or in one batched call.

    .venv/bin/python bench/feature_bench.py                    # 2,000 reads per series
    .venv/bin/python bench/feature_bench.py --reads 5000 --items 1000
    .venv/bin/python bench/feature_bench.py --series user,users8-unary,users8-batch

Starts `python -m recfleet_features` as its own process (against a scratch Postgres
database and the Redis database of `--redis-url`), seeds 8 users (profile, counters,
64-d vector, 200 seen items each) and `--items` item hashes with every catalog and popularity
field, then a client in this process issues reads one after another (closed loop, one in
flight) and records each call's latency from send to answer:

- user: GetUserFeatures (hash, vector of the named version, seen set; one Redis round trip);
- items-all: GetItemFeatures for every item, every item feature of the registry (15);
- items-ranking: GetItemFeatures for every item, the 8 features the ranker reads;
- items-columnar: the same with `columnar` set (one repeated field per feature), as
  ranking asks for them;
- user+items: the user read and the columnar item read, concurrently, as the gateway and
  ranking issue them;
- users8-unary: GetUserFeatures for 8 different users, the 8 calls concurrently (one
  Redis round trip each);
- users8-batch: GetUserFeaturesBatch with the same 8 requests in one call (one Redis
  round trip for all).

Prints p50/p90/p99/max per series, with the CPU milliseconds per read that the server
process and this client spent (a figure other load on the machine hardly moves; for the
users8 series a read is the 8 users, and the server's CPU per user is printed after),
and writes a CDF chart and the figures as JSON to
bench/results/. The seeded keys are deleted afterwards. Nothing passes or fails on time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
import uuid
from pathlib import Path

import grpc
import numpy as np
import psycopg
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from recfleet.features.v1 import features_pb2, features_pb2_grpc
from recfleet_runtime.ports import free_port
from recfleet_store import keys
from recfleet_store.postgres import migrate

RESULTS = Path(__file__).resolve().parent / "results"
VERSION = "als-bench"
RANKING_FEATURES = [
    "popularity",
    "popularity_7d",
    "published_at",
    "categories",
    "creator",
    "age_rating",
    "regions",
    "available",
]


BATCH_USERS = 8


def seed(client: redis.Redis, users: list[str], items: list[str]) -> None:
    rng = np.random.default_rng(7)
    pipe = client.pipeline(transaction=False)
    profile = {
        "interaction_count": 120,
        "last_seen_at": int(time.time()),
        "category_counts": {"Drama": 50, "Comedy": 40, "Action": 30},
        "preferred_categories": ["Drama"],
        "blocked_categories": ["Horror"],
        "liked_items": items[:3],
        "age": 30,
        "country": "DE",
    }
    for user in users:
        pipe.hset(keys.user(user), mapping={k: json.dumps(v) for k, v in profile.items()})
        pipe.hset(keys.user_vectors(user), VERSION, rng.standard_normal(64).astype("<f4").tobytes())
        pipe.sadd(keys.user_seen(user), *items[:200])
    for n, item in enumerate(items):
        fields = {
            "title": f"Item {n}",
            "categories": ["Drama", "Comedy"][: 1 + n % 2],
            "creator": f"creator-{n % 40}",
            "published_at": 1_600_000_000 + n,
            "tags": ["tag-a", "tag-b"],
            "age_rating": [0, 7, 13, 16, 18][n % 5],
            "regions": [] if n % 3 else ["DE", "FR"],
            "available": 1,
            "popularity": float(rng.random()),
            "popularity_7d": float(rng.random()),
            "interaction_count": n,
            "last_interaction_at": 1_700_000_000 + n,
        }
        pipe.hset(keys.item(item), mapping={k: json.dumps(v) for k, v in fields.items()})
    pipe.execute()


async def wait_serving(channel: grpc.aio.Channel, timeout: float = 60) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError("feature-store did not become SERVING")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    stub, users: list[str], items: list[str], reads: int, warmup: int, server_pid: int, only: set[str]
) -> tuple[dict[str, list[float]], dict[str, dict[str, float]]]:
    """Latency samples per series, and CPU milliseconds per read spent by the server and
    by this client (insensitive to other load on the machine, unlike the latencies)."""
    user_request = features_pb2.GetUserFeaturesRequest(user_id=users[0], model_version=VERSION)
    user_requests = [features_pb2.GetUserFeaturesRequest(user_id=user, model_version=VERSION) for user in users]
    batch_request = features_pb2.GetUserFeaturesBatchRequest(requests=user_requests)
    all_request = features_pb2.GetItemFeaturesRequest(item_ids=items)
    ranking_request = features_pb2.GetItemFeaturesRequest(item_ids=items, feature_names=RANKING_FEATURES)
    columnar_request = features_pb2.GetItemFeaturesRequest(
        item_ids=items, feature_names=RANKING_FEATURES, columnar=True
    )

    async def both():
        await asyncio.gather(
            stub.GetUserFeatures(user_request, timeout=1), stub.GetItemFeatures(columnar_request, timeout=1)
        )

    async def users_unary():
        await asyncio.gather(*(stub.GetUserFeatures(request, timeout=1) for request in user_requests))

    async def users_batch():
        reply = await stub.GetUserFeaturesBatch(batch_request, timeout=1)
        if any(result.status.code for result in reply.results):
            raise RuntimeError("a batch entry failed")

    series = {
        "user": lambda: stub.GetUserFeatures(user_request, timeout=1),
        "items-all": lambda: stub.GetItemFeatures(all_request, timeout=1),
        "items-ranking": lambda: stub.GetItemFeatures(ranking_request, timeout=1),
        "items-columnar": lambda: stub.GetItemFeatures(columnar_request, timeout=1),
        "user+items": both,
        "users8-unary": users_unary,
        "users8-batch": users_batch,
    }
    latencies: dict[str, list[float]] = {}
    cpu: dict[str, dict[str, float]] = {}
    for name, call in series.items():
        if only and name not in only:
            continue
        for _ in range(warmup):
            await call()
        samples = []
        server_before, client_before = process_cpu_seconds(server_pid), time.process_time()
        for _ in range(reads):
            started = time.perf_counter()
            await call()
            samples.append((time.perf_counter() - started) * 1000)
        cpu[name] = {
            "server_cpu_ms_per_read": round((process_cpu_seconds(server_pid) - server_before) * 1000 / reads, 3),
            "client_cpu_ms_per_read": round((time.process_time() - client_before) * 1000 / reads, 3),
        }
        latencies[name] = samples
    return latencies, cpu


def summary(samples: list[float]) -> dict[str, float]:
    values = np.asarray(samples)
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 3),
        "p90_ms": round(float(np.percentile(values, 90)), 3),
        "p99_ms": round(float(np.percentile(values, 99)), 3),
        "max_ms": round(float(values.max()), 3),
    }


def chart(latencies: dict[str, list[float]], items: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5))
    for name, samples in latencies.items():
        values = np.sort(samples)
        axis.plot(values, np.arange(1, len(values) + 1) / len(values), label=name)
    axis.axvline(3.0, color="grey", linestyle="--", linewidth=1, label="3 ms target (p99)")
    axis.set_xscale("log")
    axis.set_xlabel("latency per read (ms, log scale)")
    axis.set_ylabel("fraction of reads")
    axis.set_title(f"feature-store reads over gRPC: 1 user + {items} items")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


async def run(args) -> None:
    admin = args.postgres_admin_dsn
    name = f"recfleet_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = psycopg.conninfo.make_conninfo(admin, dbname=name)
    migrate(dsn)
    client = redis.Redis.from_url(args.redis_url)
    run_id = uuid.uuid4().hex[:6]
    users = [f"bench-{run_id}-user{n}" for n in range(BATCH_USERS)]
    items = [f"bench-{run_id}-{n}" for n in range(args.items)]
    seed(client, users, items)
    port = free_port()
    env = {
        **os.environ,
        "RECFLEET_POSTGRES_DSN": dsn,
        "RECFLEET_REDIS_URL": args.redis_url,
        "RECFLEET_FEATURES_GRPC_PORT": str(port),
        "RECFLEET_FEATURES_METRICS_PORT": "0",
        "RECFLEET_FEATURES_LOG_LEVEL": "WARNING",
    }
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "recfleet_features", env=env, stdout=asyncio.subprocess.DEVNULL
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await wait_serving(channel)
            stub = features_pb2_grpc.FeatureStoreStub(channel)
            load_before = os.getloadavg()[0]
            only = {name for name in args.series.split(",") if name}
            latencies, cpu = await measure(stub, users, items, args.reads, args.warmup, server.pid, only)
            load_after = os.getloadavg()[0]
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), timeout=30)
        pipe = client.pipeline(transaction=False)
        for user in users:
            pipe.delete(keys.user(user), keys.user_vectors(user), keys.user_seen(user))
        for item in items:
            pipe.delete(keys.item(item))
        pipe.execute()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    figures = {name: {**summary(samples), **cpu[name]} for name, samples in latencies.items()}
    print(f"feature-store reads, 1 user + {args.items} items, {args.reads} sequential reads per series")
    print(f"1-minute load average {load_before:.1f} before, {load_after:.1f} after (client and server share the cores)")
    print(f"{'series':<15}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}{'server cpu':>12}{'client cpu':>12}")
    for name, row in figures.items():
        print(
            f"{name:<15}{row['p50_ms']:>9.3f}{row['p90_ms']:>9.3f}{row['p99_ms']:>9.3f}{row['max_ms']:>9.3f}"
            f"{row['server_cpu_ms_per_read']:>12.3f}{row['client_cpu_ms_per_read']:>12.3f}"
        )
    for name in ("users8-unary", "users8-batch"):
        if name in figures:
            per_user = figures[name]["server_cpu_ms_per_read"] / BATCH_USERS
            figures[name]["server_cpu_ms_per_user"] = round(per_user, 3)
            print(f"{name}: server CPU {per_user:.3f} ms per user")
    if args.series:
        # A partial run prints its figures only: the chart and JSON hold every series.
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    png = RESULTS / "feature_read_latency.png"
    chart(latencies, args.items, png)
    report = {
        "items": args.items,
        "reads": args.reads,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average_1m": [round(load_before, 2), round(load_after, 2)],
        "series": figures,
    }
    (RESULTS / "feature_read_latency.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {png}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument(
        "--series", default="", help="comma-separated series to run (default: all); a partial run writes no files"
    )
    parser.add_argument("--redis-url", default=os.environ.get("RECFLEET_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12"))
    parser.add_argument(
        "--postgres-admin-dsn",
        default=os.environ.get("RECFLEET_TEST_POSTGRES_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
